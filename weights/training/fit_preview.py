"""Fit the embedded model's live-preview map (minisd/preview.py) from its own VAE.

    python weights/training/fit_preview.py [--weights weights/minisd-shapes] [--write]

Every step's latents of generations of every shape-colour-background combination (the seeds of
FIT_SEEDS), decoded by the model's VAE; least squares gives the 4×3 map and its bias. Then
held-out generations (other seeds) measure how close the map's picture comes to the real
decode averaged over each latent pixel's patch, in levels of 255 and PSNR. --write stores the
map in the folder's minisd.json ("preview"); the report is printed either way.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))
import minisd  # noqa: E402
from minisd.preview import fit, preview  # noqa: E402
from shapes import COMBINATIONS, caption  # noqa: E402

FIT_SEEDS, HELD_OUT_SEEDS = (20_000,), (30_000,)  # never used in training


def step_latents_and_decodes(pipe, seeds):
    """(latents, decodes): every step's latents (N, 4, h, w) and their VAE decodes (N, 3, H, W)."""
    latents = []
    for index, combination in enumerate(COMBINATIONS):
        for seed in seeds:
            steps = pipe.denoise(caption(*combination), seed=seed + index)
            latents += [pipe.backend.to_host(step.latents) for step in steps]
    latents = np.concatenate(latents)
    scaled = latents / pipe.vae.config.scaling_factor
    decodes = np.concatenate([pipe.vae.decode(scaled[i : i + 64]) for i in range(0, len(scaled), 64)])
    return latents, decodes


def report(latents, decodes, factors, bias):
    """The map's pictures against the real decodes averaged per patch: {levels, psnr_db}."""
    factor = decodes.shape[2] // latents.shape[2]
    n, _, h, w = latents.shape
    patches = decodes.reshape(n, 3, h, factor, w, factor).mean(axis=(3, 5))
    truth = np.stack([np.asarray(preview(p[None], np.eye(3), (0, 0, 0)), np.float64) for p in patches])
    ours = np.stack([np.asarray(preview(x[None], factors, bias), np.float64) for x in latents])
    mse = np.mean((ours - truth) ** 2)
    return {"mean_abs_levels": float(np.abs(ours - truth).mean()), "psnr_db": float(10 * np.log10(255**2 / mse))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(HERE.parent / "minisd-shapes"))
    parser.add_argument("--write", action="store_true", help="store the map in the folder's minisd.json")
    args = parser.parse_args()
    pipe = minisd.load(args.weights)
    factors, bias = fit(*step_latents_and_decodes(pipe, FIT_SEEDS))
    held_out = report(*step_latents_and_decodes(pipe, HELD_OUT_SEEDS), factors, bias)
    print(json.dumps({"factors": factors.round(5).tolist(), "bias": bias.round(5).tolist(), "held_out": held_out}))
    if args.write:
        path = Path(args.weights) / "minisd.json"
        settings = json.loads(path.read_text())
        settings["preview"] = {"factors": factors.round(5).tolist(), "bias": bias.round(5).tolist()}
        path.write_text(json.dumps(settings, indent=2) + "\n")


if __name__ == "__main__":
    main()
