"""LCM: the scheduler against diffusers' LCMScheduler, and LCM pipelines against diffusers'.

Two kinds of LCM checkpoints run: a UNet distilled with the guidance scale as an input
(`time_cond_proj_dim`, e.g. LCM Dreamshaper: no classifier-free guidance, the scale embedded),
and an ordinary UNet (an LCM-LoRA fused, or lcm-sdxl) sampled by the LCM scheduler.
"""

import sys

import numpy as np
import pytest

import minisd
from helpers import SD15_SCHEDULER, assert_close, max_pixel_difference, require_reference
from minisd.schedulers import make_scheduler
from minisd.unet import guidance_embedding

SHAPE = (1, 4, 8, 8)
X = np.zeros(SHAPE, np.float32)


def test_timesteps_closed_form():
    """N of the 50 distilled timesteps 999, 979, ..., 19 (k = 1000 // 50 = 20), evenly picked."""
    scheduler = make_scheduler("lcm", SD15_SCHEDULER)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == list(range(999, 0, -20))


def test_boundary_conditions():
    """f(x, 0) = x: c_skip(0) = 1, c_out(0) = 0; far from 0 the prediction x_0 takes over."""
    scheduler = make_scheduler("lcm", {})
    assert scheduler.boundary_scalings(0) == (1.0, 0.0)
    c_skip, c_out = scheduler.boundary_scalings(999)
    assert c_skip < 1e-8 and abs(c_out - 1) < 1e-8


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda: make_scheduler("lcm", {}).set_timesteps(51), "at most original_inference_steps=50"),
        (lambda: make_scheduler("lcm", {"original_inference_steps": 0}), "original_inference_steps"),
        (lambda: make_scheduler("lcm", {"thresholding": True}), "thresholding"),
        (lambda: _ready(4).step(X, 999, X), "LCM noises x̂_0 back to the next timestep: pass noise="),
        (lambda: _ready(4).step(X, 998, X, noise=X), "timestep 998 is not one of"),
        (lambda: _ready(4).needs_noise(999, eta=0.5), "eta=0.5 needs scheduler 'ddim'"),
    ],
)
def test_bad_inputs_raise_helpful_errors(action, message):
    with pytest.raises(ValueError, match=message):
        action()


def _ready(steps, config=SD15_SCHEDULER):
    scheduler = make_scheduler("lcm", config)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.reference
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 25, 50])
@pytest.mark.parametrize(
    "config",
    [SD15_SCHEDULER, {}, {"prediction_type": "v_prediction"}, {"original_inference_steps": 25, "clip_sample": True}],
    ids=["sd15", "defaults", "v", "25-clipped"],
)
def test_live_steps(monkeypatch, config, steps):
    """Timesteps exactly, every step to float32 rounding, from the same inputs and noise."""
    require_reference()
    import diffusers
    import torch

    if steps > config.get("original_inference_steps", 50):
        pytest.raises(ValueError, _ready, steps, config)
        return
    ours, theirs = _ready(steps, config), diffusers.LCMScheduler.from_config(config)
    theirs.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    drawn = []  # the noise diffusers' step draws: what minisd gets as noise=
    module = sys.modules[type(theirs).__module__]
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(drawn.pop()))
    rng = np.random.default_rng(steps)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    for t in ours.timesteps:
        model_output, noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
        if ours.needs_noise(t):
            drawn.append(noise)
        want = theirs.step(torch.from_numpy(model_output), torch.tensor(t), torch.from_numpy(x)).prev_sample.numpy()
        assert not drawn, "diffusers drew no noise where minisd asks for it"
        assert_close(ours.step(model_output, t, x, noise=noise if ours.needs_noise(t) else None), want)
        x = want


@pytest.mark.reference
def test_live_guidance_embedding():
    """diffusers' get_guidance_scale_embedding, to the rounding of float32 angles: 1000·w reaches
    7000 radians, where one float32 step is 5e-4 (and torch's exp may differ from NumPy's by one
    ulp); both agree with the float64 formula within two such steps."""
    require_reference()
    import torch
    from diffusers import StableDiffusionPipeline

    w = np.array([0.0, 1.5, 7.0], np.float32)
    for dim in (32, 256, 7):
        half = dim // 2
        angles = 1000 * w.astype(np.float64)[:, None] * np.exp(-np.arange(half) * np.log(10000) / (half - 1))
        exact = np.pad(np.concatenate([np.sin(angles), np.cos(angles)], axis=1), ((0, 0), (0, dim % 2)))
        tolerance = 2 * np.spacing(np.float32(angles.max()))
        theirs = StableDiffusionPipeline.get_guidance_scale_embedding(None, torch.from_numpy(w), dim).numpy()
        for got in (guidance_embedding(w, dim), theirs):
            np.testing.assert_allclose(got, exact, rtol=0, atol=tolerance)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A tiny SD-shaped LCM UNet: the guidance scale enters as an input (time_cond_proj_dim)."""
    require_reference()
    from reference import TINY_TEXT, TINY_UNET, TINY_VAE, build_models, save_model_folder

    models = build_models(TINY_TEXT, {**TINY_UNET, "time_cond_proj_dim": 32}, TINY_VAE, seed=11)
    config = {**SD15_SCHEDULER, "_class_name": "LCMScheduler", "original_inference_steps": 50}
    return save_model_folder(tmp_path_factory.mktemp("lcm"), *models, scheduler=config)


@pytest.mark.reference
@pytest.mark.parametrize("steps, guidance", [(2, 8.0), (4, 8.0), (4, 1.0)])
def test_live_distilled_unet(distilled, steps, guidance):
    """diffusers' StableDiffusionPipeline runs no classifier-free guidance on such a UNet and
    embeds the scale; the folder's own scheduler is LCM's."""
    from diffusers import LCMScheduler

    from reference import reference_pipeline, torch_seed

    reference = reference_pipeline(distilled)
    reference.scheduler = LCMScheduler.from_config(reference.scheduler.config)
    theirs = reference(
        "a red circle", num_inference_steps=steps, guidance_scale=guidance, generator=torch_seed(2), height=64, width=48
    ).images[0]
    pipe = minisd.load(distilled)
    ours = pipe("a red circle", steps=steps, guidance=guidance, seed=2, height=64, width=48, progress=False)
    assert max_pixel_difference(ours, theirs) <= 1
    assert pipe.options().scheduler == "lcm" and not pipe.guided(guidance)


@pytest.mark.reference
def test_live_guidance_scale_changes_a_distilled_picture(distilled):
    """The embedded scale is read: another scale, another picture (not a silently ignored option)."""
    pipe = minisd.load(distilled)
    pictures = [np.asarray(pipe("a red circle", steps=2, guidance=g, seed=2, progress=False), int) for g in (2, 8)]
    assert np.abs(pictures[0] - pictures[1]).max() > 10
