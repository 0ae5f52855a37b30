"""What every chapter shares: its options, the model, the pictures of shapes, saving figures.

Every chapter takes the same options:

    --weights PATH   a Stable Diffusion model folder or .safetensors file (default: the embedded model)
    --backend NAME   numpy (CPU, the default) or cupy (NVIDIA GPU)
    --out DIR        where figures go (default: chapters/out/, ignored by git)
    --quick          fewer steps, seeds and pictures (what the tests run)

Opened as a notebook (Jupyter through jupytext, VS Code), a chapter takes the defaults.
"""

import argparse
import io
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

import minisd

HERE = Path(__file__).resolve().parent
# The embedded model's world (one coloured shape on a plain background) is drawn by its training
# data generator: weights/training/shapes.py.
sys.path.insert(0, str(HERE.parent / "weights" / "training"))
import shapes  # noqa: E402

DPI = 100  # figure inches × DPI = PNG pixels


def options(description):
    """The chapter's command-line options (unknown ones, like a notebook kernel's, are ignored)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--weights", help="model folder or .safetensors file (default: the embedded model)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--out", type=Path, default=HERE / "out", help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="fewer steps and seeds (for the tests)")
    args, _ = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def load_model(args):
    """The pipeline the options name; prints what it is and its generation defaults."""
    pipe = minisd.load(args.weights or minisd.default_model_folder(), backend=args.backend)
    print(f"model {pipe.name} on {pipe.backend}; defaults {pipe.defaults}")
    return pipe


def host(pipe, array):
    """A backend array (NumPy or CuPy) as a NumPy float32 array, for printing and plotting."""
    return pipe.backend.to_host(array).astype(np.float32)


def picture(colour, shape, background, size, seed=0):
    """A PIL picture of one shape from the embedded model's training world, `size` pixels square."""
    return Image.fromarray(shapes.draw(colour, shape, background, np.random.default_rng(seed), size))


def pixels(image):
    """PIL image -> (H, W, 3) float array in [0, 1], what matplotlib shows."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of two pictures in [0, 1]: 10·log10(1 / mean squared error)."""
    return float(10 * np.log10(1 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


@contextmanager
def timed(label, times):
    """Measure the `with` block's wall time into times[label] (seconds)."""
    start = time.perf_counter()
    yield
    times[label] = time.perf_counter() - start


def save_figure(fig, args, name):
    """Write the figure as out/NAME.png, in full colour (a palette would band every colour scale),
    and return the path. Its size in pixels is figsize × DPI."""
    path = args.out / f"{name}.png"
    rendered = io.BytesIO()
    fig.savefig(rendered, dpi=DPI, format="png")
    Image.open(rendered).convert("RGB").save(path, optimize=True)
    print(f"wrote {path}")
    return path


def save_facts(args, name, facts):
    """Write the numbers a chapter computed as out/NAME.json (the tests check them)."""
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(facts, indent=2))
    return path


def channel_mosaic(latents):
    """(4, h, w) latents -> (2h, 2w): the four channels tiled 2 × 2, to show them as one picture."""
    _, h, w = latents.shape
    return latents.reshape(2, 2, h, w).transpose(0, 2, 1, 3).reshape(2 * h, 2 * w)
