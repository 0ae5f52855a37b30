"""Whole pipelines on a tiny random model: minisd's image vs diffusers' image, pixel for pixel.

Same weights (one diffusers folder) and the same seed: minisd's `seed=s` draws the noise that
diffusers draws from `torch.Generator("cpu").manual_seed(s)` (minisd.rng), so the two uint8
images must agree within 1 level of 255 everywhere, with nothing injected.
"""

import pytest

import minisd
from helpers import init_image, max_pixel_difference, require_reference

require_reference()  # skips the module, saying why, without torch/diffusers/transformers
from reference import torch_seed  # noqa: E402

pytestmark = pytest.mark.reference

PROMPT = "a red circle on a white background"


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
@pytest.mark.parametrize("negative", ["", "blurry, low quality"], ids=["no-negative", "negative"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=["square", "non-square"])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_text_to_image(tiny, scheduler, negative, size, guidance):
    from reference import reference_pipeline

    folder, _ = tiny
    height, width = size
    options = dict(num_inference_steps=8, guidance_scale=guidance, height=height, width=width)
    theirs = reference_pipeline(folder, scheduler)(
        PROMPT, negative_prompt=negative or None, generator=torch_seed(5), **options
    ).images[0]
    ours = minisd.load(folder)(
        PROMPT,
        negative_prompt=negative,
        steps=8,
        guidance=guidance,
        height=height,
        width=width,
        scheduler=scheduler,
        seed=5,
        progress=False,
    )
    assert ours.size == theirs.size == (width, height)
    assert max_pixel_difference(ours, theirs) <= 1


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_several_images_in_one_batch(tiny, guidance):
    """num_images=3: three latents denoised as one UNet batch, their noise drawn at once, as
    diffusers' num_images_per_prompt does; every image must match diffusers' image."""
    from reference import reference_pipeline

    folder, _ = tiny
    theirs = reference_pipeline(folder, "pndm")(
        PROMPT,
        negative_prompt="blurry",
        num_inference_steps=6,
        guidance_scale=guidance,
        height=64,
        width=48,
        num_images_per_prompt=3,
        generator=torch_seed(11),
    ).images
    ours = minisd.load(folder)(
        PROMPT,
        negative_prompt="blurry",
        steps=6,
        guidance=guidance,
        height=64,
        width=48,
        scheduler="pndm",
        seed=11,
        num_images=3,
        progress=False,
    )
    assert len(ours) == len(theirs) == 3
    assert max_pixel_difference(ours[1], ours[2]) > 10  # three different pictures, not one repeated
    for mine, reference in zip(ours, theirs):
        assert max_pixel_difference(mine, reference) <= 1


def test_ddim_eta(tiny):
    """DDIM with eta > 0 draws fresh noise at every step, from the same generator as the latents."""
    from reference import reference_pipeline

    folder, _ = tiny
    theirs = reference_pipeline(folder, "ddim")(
        PROMPT, num_inference_steps=6, eta=0.8, generator=torch_seed(6), height=64, width=64
    ).images[0]
    ours = minisd.load(folder)(PROMPT, steps=6, scheduler="ddim", eta=0.8, seed=6, progress=False)
    assert max_pixel_difference(ours, theirs) <= 1


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
@pytest.mark.parametrize("strength", [0.8, 0.35, 1.0])
@pytest.mark.parametrize("size", [(64, 64), (80, 56)], ids=["square", "non-square"])
def test_image_to_image(tiny, scheduler, strength, size):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    folder, _ = tiny
    width, height = size
    image = init_image(width, height)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPT, image=image, strength=strength, num_inference_steps=10, negative_prompt="dark", generator=torch_seed(7)
    ).images[0]
    ours = minisd.load(folder).img2img(
        PROMPT, image, strength=strength, steps=10, negative_prompt="dark", scheduler=scheduler, seed=7, progress=False
    )
    assert ours.size == theirs.size == (width, height)
    assert max_pixel_difference(ours, theirs) <= 1
