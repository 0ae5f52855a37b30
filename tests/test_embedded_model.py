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
from shapes import BACKGROUNDS, COLOURS, SHAPES, caption, judge  # noqa: E402

FOLDER = default_model_folder()
# every colour and shape, backgrounds in rotation: 18 prompts
PROMPTS = [(c, s, list(BACKGROUNDS)[(i + j) % 3]) for i, c in enumerate(COLOURS) for j, s in enumerate(SHAPES)]


def test_generate_needs_no_weights():
    image = minisd.generate("a red circle on a white background", progress=False)
    assert image.size == (64, 64)


def test_pictures_show_what_the_prompt_says():
    """The bars of the model card, on 18 prompts with fresh seeds, judged from the pixels."""
    pipe = minisd.load(FOLDER)
    judged = [judge(pipe(caption(*p), seed=500 + i, progress=False)) for i, p in enumerate(PROMPTS)]
    backgrounds = np.mean([seen[0] == p[2] for seen, p in zip(judged, PROMPTS)])
    colours = np.mean([seen[1] == p[0] for seen, p in zip(judged, PROMPTS)])
    shapes = np.mean([seen[2] == p[1] for seen, p in zip(judged, PROMPTS)])
    assert backgrounds >= 0.9 and colours >= 0.9 and shapes >= 0.75, (backgrounds, colours, shapes, judged)


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


@pytest.mark.parametrize("guidance, negative", [(3.0, ""), (1.0, ""), (5.0, "a blue square")])
def test_same_image_as_diffusers(guidance, negative):
    """diffusers' StableDiffusionPipeline on the shipped folder (DDIM, v-prediction, zero-SNR
    betas, trailing spacing), same injected latents: images within 1 level of 255."""
    from conftest import require_reference

    require_reference()
    import torch
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(FOLDER, torch_dtype=torch.float32, safety_checker=None,
                                                        requires_safety_checker=False)  # fmt: skip
    reference.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(8).standard_normal((1, 4, 8, 8), dtype=np.float32)
    prompt = "a purple square on a gray background"
    theirs = reference(prompt, negative_prompt=negative or None, num_inference_steps=20, guidance_scale=guidance,
                       height=64, width=64, latents=torch.from_numpy(latents)).images[0]  # fmt: skip
    ours = minisd.load(FOLDER)(prompt, negative_prompt=negative, steps=20, guidance=guidance, latents=latents,
                               progress=False)  # fmt: skip
    assert np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max() <= 1
