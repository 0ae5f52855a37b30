"""Whole pipelines on a tiny random model: minisd's image vs diffusers' image, pixel for pixel.

Same weights (one diffusers folder), same initial latents, same noise draws: the two uint8
images must agree within 1 level of 255 everywhere.
"""

import numpy as np
import pytest
from PIL import Image

import minisd
import minisd.pipeline

PROMPT = "a red circle on a white background"


class SharedNoise:
    """One stream of Gaussian noise that both pipelines draw from, in the same order."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, shape):
        return self.rng.standard_normal(tuple(shape), dtype=np.float32)


def patch_noise(monkeypatch, seed):
    """Route minisd's and diffusers' noise draws to two identical SharedNoise streams."""
    import torch
    from diffusers.models.autoencoders import vae
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img
    from diffusers.schedulers import scheduling_ddim

    ours, theirs = SharedNoise(seed), SharedNoise(seed)
    monkeypatch.setattr(minisd.pipeline, "randn", lambda generator, shape: ours(shape))

    def torch_randn(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(theirs(shape))

    for module in (vae, img2img, scheduling_ddim):
        monkeypatch.setattr(module, "randn_tensor", torch_randn)


def max_pixel_difference(ours, theirs):
    return int(np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max())


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
@pytest.mark.parametrize("negative", ["", "blurry, low quality"], ids=["no-negative", "negative"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=["square", "non-square"])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_text_to_image(tiny, scheduler, negative, size, guidance):
    import torch
    from reference import reference_pipeline

    folder, _ = tiny
    height, width = size
    latents = np.random.default_rng(5).standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)
    options = dict(num_inference_steps=8, guidance_scale=guidance, height=height, width=width)
    theirs = reference_pipeline(folder, scheduler)(
        PROMPT, negative_prompt=negative or None, latents=torch.from_numpy(latents), **options
    ).images[0]
    ours = minisd.load(folder)(
        PROMPT, negative_prompt=negative, steps=8, guidance=guidance, height=height, width=width,
        scheduler=scheduler, latents=latents, progress=False,
    )  # fmt: skip
    assert ours.size == theirs.size == (width, height)
    assert max_pixel_difference(ours, theirs) <= 1


def test_ddim_eta(tiny, monkeypatch):
    """DDIM with eta > 0 draws fresh noise at every step; both sides draw the same arrays."""
    import torch
    from reference import reference_pipeline

    folder, _ = tiny
    patch_noise(monkeypatch, seed=6)
    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32)
    theirs = reference_pipeline(folder, "ddim")(
        PROMPT, num_inference_steps=6, eta=0.8, latents=torch.from_numpy(latents), height=64, width=64
    ).images[0]
    ours = minisd.load(folder)(PROMPT, steps=6, scheduler="ddim", eta=0.8, latents=latents, progress=False)
    assert max_pixel_difference(ours, theirs) <= 1


def init_image(width, height):
    """A smooth colourful test picture (gradients and a disc), not noise."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    disc = ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.08).astype(float)
    pixels = np.stack([x, y, 0.5 + 0.5 * disc - 0.3 * x], axis=-1)
    return Image.fromarray((pixels.clip(0, 1) * 255).astype(np.uint8))


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
@pytest.mark.parametrize("strength", [0.8, 0.35, 1.0])
@pytest.mark.parametrize("size", [(64, 64), (80, 56)], ids=["square", "non-square"])
def test_image_to_image(tiny, monkeypatch, scheduler, strength, size):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    folder, _ = tiny
    width, height = size
    image = init_image(width, height)
    patch_noise(monkeypatch, seed=7)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=image, strength=strength, num_inference_steps=10, negative_prompt="dark").images[0]
    ours = minisd.load(folder).img2img(
        PROMPT, image, strength=strength, steps=10, negative_prompt="dark", scheduler=scheduler, progress=False
    )
    assert ours.size == theirs.size == (width, height)
    assert max_pixel_difference(ours, theirs) <= 1
