"""The embedded model (weights/minisd-shapes/): generation with no weights, judged pictures,
and pixel parity with diffusers on the shipped folder (a real-layout parity fixture)."""

import sys
from pathlib import Path

import numpy as np
import pytest

import minisd
import minisd.weights
from minisd.cli import main
from minisd.weights import WeightsError, default_model_folder

sys.path.insert(0, str(Path(__file__).parent.parent / "weights" / "training"))
from evaluate import accuracy, evaluate  # noqa: E402

FOLDER = default_model_folder()


def test_generate_needs_no_weights():
    image = minisd.generate("a red circle on a white background", progress=False)
    assert image.size == (64, 64)


def test_pictures_show_what_the_prompt_says():
    """The model card's bars, one fresh-seed picture of each of the 54 combinations, judged
    from the pixels: background >= 90%, object colour >= 90%, shape >= 75%."""
    records, _ = evaluate(minisd.load(FOLDER), seeds=1, first_seed=30_000)
    scores = accuracy(records)
    assert scores["background"] >= 0.9 and scores["colour"] >= 0.9 and scores["shape"] >= 0.75, scores


def test_cli_uses_the_embedded_model_and_its_defaults(tmp_path):
    output = tmp_path / "out.png"
    assert main(["a yellow triangle on a black background", "-o", str(output)]) == 0
    from PIL import Image

    image = Image.open(output)
    defaults = minisd.weights.read_json(FOLDER / "minisd.json")["defaults"]
    assert image.text["model"] == "minisd-shapes"
    assert image.text["steps"] == str(defaults["steps"]) and image.text["guidance"] == str(float(defaults["guidance"]))
    assert image.size == (defaults["width"], defaults["height"])


def test_missing_embedded_model_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(minisd.weights, "shipped_folder", lambda package, folder: tmp_path)
    with pytest.raises(WeightsError, match="embedded model minisd-shapes is missing.*train.py"):
        minisd.generate("a red circle")


@pytest.mark.reference
@pytest.mark.parametrize("guidance, negative", [(3.0, ""), (1.0, ""), (5.0, "a blue square")])
def test_same_image_as_diffusers(guidance, negative):
    """diffusers' StableDiffusionPipeline on the shipped folder (DDIM, v-prediction, zero-SNR
    betas, trailing spacing), same injected latents: images within 1 level of 255."""
    import torch
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(
        FOLDER, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(8).standard_normal((1, 4, 8, 8), dtype=np.float32)
    prompt = "a purple square on a gray background"
    theirs = reference(
        prompt,
        negative_prompt=negative or None,
        num_inference_steps=20,
        guidance_scale=guidance,
        height=64,
        width=64,
        latents=torch.from_numpy(latents),
    ).images[0]
    ours = minisd.load(FOLDER)(
        prompt, negative_prompt=negative, steps=20, guidance=guidance, latents=latents, progress=False
    )
    assert np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max() <= 1
