"""Inpainting (minisd/inpaint.py): the mask's preprocessing against its closed form, errors, and,
with the reference extra, diffusers' StableDiffusionInpaintPipeline seed for seed: a random
9-channel inpainting model and an ordinary 4-channel one, within 1 level of 255."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

import minisd
from helpers import TINY_SD, init_image, max_pixel_difference
from minisd.cli import main
from minisd.inpaint import mask_pixels


def disc_mask(width, height):
    """White (paint) in a disc, black elsewhere, with grey anti-aliasing at its edge."""
    mask = Image.new("L", (width * 4, height * 4), 0)
    ImageDraw.Draw(mask).ellipse((width, height, width * 3, height * 3), fill=255)
    return mask.resize((width, height), Image.BILINEAR)


def test_the_mask_is_grey_resized_and_cut_at_one_half():
    mask = disc_mask(40, 24)
    grey = np.asarray(mask.resize((64, 48), Image.LANCZOS), np.float32) / 255
    np.testing.assert_array_equal(mask_pixels(mask.convert("RGB"), 64, 48)[0, 0], (grey >= 0.5).astype(np.float32))


def test_inpainting_keeps_the_known_part_and_needs_a_picture(tmp_path):
    pipe = minisd.load(TINY_SD)
    picture = init_image(64, 64)
    inpainted = pipe.inpaint("a red circle", picture, disc_mask(64, 64), steps=3, seed=1, progress=False)
    assert inpainted.size == picture.size
    with pytest.raises(ValueError, match="mask goes with image"):
        pipe("a red circle", mask=disc_mask(64, 64), steps=2, progress=False)
    picture.save(tmp_path / "in.png")
    disc_mask(64, 64).save(tmp_path / "mask.png")
    output = tmp_path / "out.png"
    arguments = ["a red circle", "--weights", str(TINY_SD), "--steps", "2", "-o", str(output)]
    assert main([*arguments, "--init-image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png")]) == 0
    text = Image.open(output).text
    assert text["mask"] == "mask.png" and text["strength"] == "1.0"  # inpainting's default strength


@pytest.fixture(scope="module")
def inpainting_model(tmp_path_factory):
    """A tiny random inpainting model (9-channel UNet) saved as a diffusers folder. Euler a draws
    fresh noise at every step, after the draws of the start: an order that differs shows."""
    from reference import TINY_TEXT, TINY_UNET, TINY_VAE, build_models, save_model_folder

    models = build_models(TINY_TEXT, {**TINY_UNET, "in_channels": 9}, TINY_VAE, seed=20)
    return save_model_folder(tmp_path_factory.mktemp("inpainting"), *models)


@pytest.mark.reference
@pytest.mark.parametrize("kind", ["9-channel", "4-channel"])
@pytest.mark.parametrize("scheduler, strength", [("pndm", 1.0), ("ddim", 0.6), ("euler", 1.0), ("euler_a", 0.8)])
def test_same_picture_as_diffusers(kind, scheduler, strength, inpainting_model, tiny):
    import torch
    from diffusers import (
        DDIMScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )

    from reference import torch_seed

    folder = inpainting_model if kind == "9-channel" else tiny[0]
    base = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs = StableDiffusionInpaintPipeline(**base.components, requires_safety_checker=False)
    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler}
    if scheduler in classes:
        theirs.scheduler = classes[scheduler].from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    picture, mask = init_image(64, 48), disc_mask(64, 48)
    options = dict(height=48, width=64, guidance_scale=5.0, negative_prompt="blurry")
    with torch.no_grad():
        expected = theirs(
            "a red circle", picture, mask, num_inference_steps=5, strength=strength, generator=torch_seed(7), **options
        ).images[0]
    ours = minisd.load(folder).inpaint(
        "a red circle",
        picture,
        mask,
        strength,
        steps=5,
        seed=7,
        guidance=5.0,
        negative_prompt="blurry",
        scheduler=scheduler,
        progress=False,
    )
    assert max_pixel_difference(ours, expected) <= 1
