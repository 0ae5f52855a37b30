"""SDXL and its few-step variants against diffusers' StableDiffusionXL(Img2Img)Pipeline.

A tiny SDXL-shaped model (two text encoders, the added conditioning, per-level transformer
depths, SDXL's VAE scaling) with random weights, saved as a diffusers folder: minisd's picture
must be diffusers' own within 1 level of 255, for the same seed.
"""

import numpy as np
import pytest

import minisd
from helpers import DIFFUSERS_SCHEDULERS, init_image, max_pixel_difference, require_reference

pytestmark = pytest.mark.reference
require_reference()  # skips the module, saying why, without torch/diffusers/transformers
from reference import (  # noqa: E402
    SDXL_SCHEDULER,
    build_sdxl_models,
    reference_sdxl,
    save_sdxl_folder,
    torch_seed,
)

PROMPT = "a red circle on a white background"
SIZE = dict(height=64, width=48)  # not square


@pytest.fixture(scope="module")
def models():
    return build_sdxl_models(seed=20)


@pytest.fixture(scope="module")
def sdxl(models, tmp_path_factory):
    return save_sdxl_folder(tmp_path_factory.mktemp("sdxl"), models)


def both(folder, steps=6, seed=3, img2img=False, scheduler=None, ours_options=None, **options):
    """(minisd's picture, diffusers') for the same prompt, seed and options (diffusers' names)."""
    theirs = reference_sdxl(folder, img2img, scheduler and DIFFUSERS_SCHEDULERS[scheduler])
    karras = {"use_karras_sigmas": True} if scheduler == "dpmpp_2m_karras" else {}
    if karras:
        theirs.scheduler = type(theirs.scheduler).from_config(theirs.scheduler.config, **karras)
    want = theirs(PROMPT, num_inference_steps=steps, generator=torch_seed(seed), **options).images[0]
    renames = {"guidance_scale": "guidance", "crops_coords_top_left": "crop_top_left"}
    mine = {renames.get(key, key): value for key, value in options.items()}
    pipe = minisd.load(folder)
    if img2img:
        got = pipe.img2img(PROMPT, steps=steps, seed=seed, scheduler=scheduler, progress=False, **mine)
    else:
        got = pipe(PROMPT, steps=steps, seed=seed, scheduler=scheduler, progress=False, **(ours_options or mine))
    return got, want


@pytest.mark.parametrize("negative", [None, "", "blurry"])
def test_text_to_image(sdxl, negative):
    got, want = both(sdxl, negative_prompt=negative, **SIZE)
    assert max_pixel_difference(got, want) <= 1


def test_no_negative_prompt_is_not_the_empty_one(sdxl):
    """force_zeros_for_empty_prompt: no negative prompt guides away from zeros, "" from its
    encoding; the two pictures differ (so the test above tells them apart)."""
    pipe = minisd.load(sdxl)
    none, empty = (np.asarray(pipe(PROMPT, negative_prompt=n, steps=4, progress=False), int) for n in (None, ""))
    assert np.abs(none - empty).max() > 10


def test_without_force_zeros_no_negative_is_empty(models, tmp_path):
    folder = save_sdxl_folder(tmp_path / "no-zeros", models, force_zeros=False)
    got, want = both(folder, steps=4, negative_prompt=None, **SIZE)
    assert max_pixel_difference(got, want) <= 1
    empty = minisd.load(folder)(PROMPT, negative_prompt="", steps=4, seed=3, progress=False, **SIZE)
    assert max_pixel_difference(got, empty) == 0


@pytest.mark.parametrize("scheduler", sorted(set(DIFFUSERS_SCHEDULERS) - {"euler"}))
def test_every_scheduler(sdxl, scheduler):
    """The folder's Euler above; every other scheduler built from the same config, as diffusers'
    from_config builds it."""
    got, want = both(sdxl, steps=5, scheduler=scheduler, negative_prompt="blurry", **SIZE)
    assert max_pixel_difference(got, want) <= 1


def test_size_conditioning(sdxl):
    """The six time ids: original size, crop corner, target size, as diffusers passes them."""
    sizes = dict(original_size=(512, 384), crops_coords_top_left=(32, 16), target_size=(64, 64))
    got, want = both(sdxl, steps=4, **sizes, **SIZE)
    assert max_pixel_difference(got, want) <= 1
    plain = minisd.load(sdxl)(PROMPT, steps=4, seed=3, progress=False, **SIZE)
    assert max_pixel_difference(got, plain) > 10  # the time ids are read


def test_clip_skip_and_a_batch(sdxl):
    theirs = reference_sdxl(sdxl)(
        PROMPT, num_inference_steps=4, generator=torch_seed(5), clip_skip=1, num_images_per_prompt=2, **SIZE
    ).images
    ours = minisd.load(sdxl)(PROMPT, steps=4, seed=5, clip_skip=1, num_images=2, progress=False, **SIZE)
    assert len(ours) == 2 and all(max_pixel_difference(a, b) <= 1 for a, b in zip(ours, theirs))


@pytest.mark.parametrize("negative, strength", [(None, 0.6), ("blurry", 0.3)])
def test_image_to_image(sdxl, negative, strength):
    got, want = both(
        sdxl, steps=10, img2img=True, image=init_image(48, 64), strength=strength, negative_prompt=negative
    )
    assert got.size == (48, 64) and max_pixel_difference(got, want) <= 1


TURBO = {
    # SDXL-Turbo's scheduler: Euler ancestral on trailing timesteps; run with guidance off
    "sdxl-turbo": {**SDXL_SCHEDULER, "_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"},
    # SD-Turbo's: Euler, trailing
    "euler-trailing": {**SDXL_SCHEDULER, "timestep_spacing": "trailing"},
}


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("turbo", sorted(TURBO))
def test_turbo(models, tmp_path, turbo, steps):
    """A Turbo folder's scheduler, guidance 0 (no negative pass), 1 and 4 steps."""
    folder = save_sdxl_folder(tmp_path / turbo, models, scheduler=TURBO[turbo])
    got, want = both(folder, steps=steps, guidance_scale=0.0, **SIZE)
    assert max_pixel_difference(got, want) <= 1


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_lcm_scheduler(sdxl, steps):
    """An ordinary SDXL UNet sampled by LCM (as lcm-sdxl or an LCM-LoRA is), with guidance."""
    got, want = both(sdxl, steps=steps, scheduler="lcm", guidance_scale=1.5, **SIZE)
    assert max_pixel_difference(got, want) <= 1


def test_defaults_and_errors(sdxl):
    pipe = minisd.load(sdxl)
    options = pipe.options()
    assert (options.guidance, options.scheduler, pipe.default_size) == (5.0, "euler", 64)  # diffusers': 5.0
    assert pipe.unet.config.addition_embed_type == "text_time"
    with pytest.raises(ValueError, match="prompt weights and long_prompt='chunk' are not implemented for SDXL"):
        pipe(PROMPT, prompt_weights=True, steps=1, progress=False)
    with pytest.warns(UserWarning, match="read literally"):
        pipe("a (red:1.3) circle", steps=1, progress=False)
    with pytest.raises(ValueError, match="original_size must be two integers >= 1"):
        pipe.options(original_size=(0, 64))
    sd = minisd.load(minisd.weights.default_model_folder())
    with pytest.raises(ValueError, match="original_size conditions SDXL's UNet; minisd-shapes is not an SDXL"):
        sd.options(original_size=(512, 512))


def test_command_line_records_the_sdxl_options(sdxl, tmp_path):
    from PIL import Image

    from minisd.cli import main

    output = tmp_path / "xl.png"
    args = ["a red circle", "--weights", str(sdxl), "--steps", "2", "--original-size", "96x128", "--crop", "8x4"]
    assert main([*args, "-o", str(output), "--weights-dtype", "float16"]) == 0
    text = Image.open(output).text
    assert (text["negative_prompt"], text["negative_prompt_given"]) == ("", "no")
    assert (text["original_size"], text["crop_top_left"], text["weights_dtype"]) == ("96x128", "8x4", "float16")
    assert text["scheduler"] == "euler" and text["guidance"] == "5.0"


def test_previews_use_sdxl_factors(sdxl):
    """SDXL's latent space has its own preview map (ComfyUI's published SDXL factors and bias):
    each preview pixel is latents · M + b, mapped from [-1, 1] to 0..255."""
    from minisd.preview import SDXL_BIAS, SDXL_FACTORS

    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 6), dtype=np.float32) * 0.5
    rgb = np.moveaxis(latents[0], 0, -1) @ np.array(SDXL_FACTORS) + np.array(SDXL_BIAS)  # (8, 6, 3)
    want = np.round(np.clip(rgb / 2 + 0.5, 0, 1) * 255)
    got = np.asarray(minisd.load(sdxl).preview(latents), float)
    assert got.shape == (8, 6, 3) and np.abs(got - want).max() <= 1


def sdxl_lora(path, seed=4):
    """A diffusers/PEFT-layout LoRA touching the UNet and both text encoders (rank 4, random)."""
    from safetensors.numpy import save_file

    rng, tensors = np.random.default_rng(seed), {}
    layers = [
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", (64, 64)),
        ("unet", "up_blocks.0.attentions.2.transformer_blocks.0.ff.net.2", (64, 256)),
        ("text_encoder", "text_model.encoder.layers.1.self_attn.q_proj", (32, 32)),
        ("text_encoder_2", "text_model.encoder.layers.2.self_attn.v_proj", (32, 32)),
    ]
    for component, key, (rows, columns) in layers:
        tensors[f"{component}.{key}.lora_A.weight"] = rng.standard_normal((4, columns), dtype=np.float32) * 0.3
        tensors[f"{component}.{key}.lora_B.weight"] = rng.standard_normal((rows, 4), dtype=np.float32) * 0.3
    save_file(tensors, str(path))
    return path


def test_lora_on_both_text_encoders_and_the_unet(sdxl, tmp_path):
    """diffusers' load_lora_weights on StableDiffusionXLPipeline against minisd's fused LoRA;
    unloading gives the picture without it back exactly."""
    path = sdxl_lora(tmp_path / "xl-lora.safetensors")
    theirs = reference_sdxl(sdxl)
    theirs.load_lora_weights(str(path), adapter_name="xl")
    want = theirs(PROMPT, num_inference_steps=4, generator=torch_seed(6), **SIZE).images[0]
    pipe = minisd.load(sdxl)
    plain = pipe(PROMPT, steps=4, seed=6, progress=False, **SIZE)
    pipe.load_lora(path)
    got = pipe(PROMPT, steps=4, seed=6, progress=False, **SIZE)
    assert max_pixel_difference(got, want) <= 1 and max_pixel_difference(got, plain) > 10
    pipe.unload_loras()
    assert max_pixel_difference(pipe(PROMPT, steps=4, seed=6, progress=False, **SIZE), plain) == 0
    with pytest.raises(ValueError, match="textual inversion is not implemented for SDXL"):
        pipe.load_embedding(path)
