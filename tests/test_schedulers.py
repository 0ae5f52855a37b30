"""Schedulers against diffusers: timesteps exactly, every denoising step to float32 rounding.

Fast tier: the committed fixture (tests/fixtures/make_schedulers.py) and closed forms.
Live tier: diffusers' PNDMScheduler and DDIMScheduler run side by side (reference extra).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from helpers import SD15_SCHEDULER as SD15
from helpers import assert_close
from minisd.schedulers import DDIMScheduler, PNDMScheduler, make_scheduler

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "schedulers.npz")
CASES = json.loads(str(FIXTURE["cases"]))
SAMPLE = FIXTURE["inputs/sample"]
MODEL_OUTPUTS = FIXTURE["inputs/model_outputs"]
NOISES = FIXTURE["inputs/noises"]

SPACINGS = ("leading", "trailing", "linspace")


def denoise(scheduler, eta=0.0, model_outputs=MODEL_OUTPUTS, noises=NOISES):
    """Run every step from the fixture's sample; return the latents after each one."""
    x = SAMPLE
    samples = []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model_outputs[i], t, x, eta=eta, noise=noises[i] if eta > 0 else None)
        samples.append(x)
    return np.stack(samples)


# --- fast tier: committed fixture and closed forms --------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_fixture(case):
    scheduler = make_scheduler(case["scheduler"], case["config"])
    scheduler.set_timesteps(case["steps"])
    np.testing.assert_array_equal(scheduler.timesteps, FIXTURE[f"{case['name']}/timesteps"])
    assert scheduler.timesteps.dtype == np.int64
    assert_close(denoise(scheduler, case["eta"]), FIXTURE[f"{case['name']}/samples"])


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_closed_form(schedule):
    config = {**SD15, "beta_schedule": schedule}
    T = 1000
    if schedule == "scaled_linear":
        want = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, T) ** 2)
    elif schedule == "linear":
        want = np.cumprod(1 - np.linspace(0.00085, 0.012, T))
    else:  # telescoping product: alpha_bar_t = f((t+1)/T) / f(0); the last beta is capped

        def f(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        want = np.array([f((t + 1) / T) / f(0) for t in range(T - 1)])
    for scheduler in (PNDMScheduler(config), DDIMScheduler(config)):
        got = scheduler.alphas_cumprod
        assert got.dtype == np.float32 and got.shape == (T,)
        np.testing.assert_allclose(got[: len(want)], want, rtol=1e-6)


def test_zero_terminal_snr():
    scheduler = DDIMScheduler({**SD15, "rescale_betas_zero_snr": True})
    plain = DDIMScheduler(SD15)
    assert scheduler.alphas_cumprod[-1] == 0
    np.testing.assert_allclose(scheduler.alphas_cumprod[0], plain.alphas_cumprod[0], rtol=1e-6)


def test_absent_keys_take_the_class_defaults():
    # SD 1.5's file has no timestep_spacing and no prediction_type; DDIM ignores skip_prk_steps
    pndm, ddim = make_scheduler(None, SD15), make_scheduler("ddim", SD15)
    assert isinstance(pndm, PNDMScheduler)
    assert pndm.config.timestep_spacing == ddim.config.timestep_spacing == "leading"
    assert (ddim.config.clip_sample, ddim.config.set_alpha_to_one) == (False, False)
    assert DDIMScheduler({}).config.set_alpha_to_one and not PNDMScheduler({}).config.set_alpha_to_one
    # keys a diffusers config filled from another class's defaults do not carry over
    defaulted = {"set_alpha_to_one": False, "_use_default_values": ["set_alpha_to_one"]}
    assert DDIMScheduler(defaulted).config.set_alpha_to_one


def test_pndm_calls_the_unet_once_more():
    scheduler = PNDMScheduler(SD15)
    scheduler.set_timesteps(50)
    assert len(scheduler.timesteps) == 51 and scheduler.timesteps[1] == scheduler.timesteps[2] == 961


def test_trailing_spacing_keeps_n_steps():
    # np.arange overshoots for N=61 (diffusers then appends timestep -1); minisd keeps 61 steps
    scheduler = DDIMScheduler({**SD15, "timestep_spacing": "trailing"})
    scheduler.set_timesteps(61)
    assert len(scheduler.timesteps) == 61 and scheduler.timesteps[0] == 999
    assert scheduler.timesteps[-1] >= 0


def test_add_noise():
    scheduler = DDIMScheduler(SD15)
    alpha_bar = float(np.prod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000)[:501] ** 2))
    want = math.sqrt(alpha_bar) * SAMPLE + math.sqrt(1 - alpha_bar) * NOISES[0]
    np.testing.assert_allclose(scheduler.add_noise(SAMPLE, NOISES[0], 500), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda: make_scheduler("pndm", SD15).set_timesteps(0), "between 1 and"),
        (lambda: make_scheduler("ddim", SD15).set_timesteps(1001), "between 1 and"),
        (lambda: make_scheduler("unipc", SD15), "unknown scheduler 'unipc': choose one of pndm, ddim, ddpm, euler"),
        (lambda: make_scheduler(None, {**SD15, "_class_name": "UniPCMultistepScheduler"}), "pndm, ddim"),
        (lambda: _ready("pndm").step(MODEL_OUTPUTS[0], 981, SAMPLE, eta=0.5), "needs scheduler 'ddim'"),
        (lambda: _ready("ddim").step(MODEL_OUTPUTS[0], 981, SAMPLE, eta=0.5), "pass noise="),
        (lambda: make_scheduler("ddim", SD15).step(MODEL_OUTPUTS[0], 981, SAMPLE), "set_timesteps"),
        (lambda: make_scheduler("ddim", {**SD15, "thresholding": True}), "thresholding"),
        (lambda: make_scheduler("ddim", {**SD15, "prediction_type": "flow"}), "prediction_type"),
        (lambda: make_scheduler("pndm", {**SD15, "prediction_type": "sample"}), "prediction_type"),
        (lambda: make_scheduler("ddim", {**SD15, "beta_schedule": "cubic"}), "beta_schedule"),
        (lambda: make_scheduler("ddim", {**SD15, "timestep_spacing": "random"}), "timestep_spacing"),
        (lambda: PNDMScheduler({**SD15, "skip_prk_steps": False}).set_timesteps(3), "at least 4"),
    ],
)
def test_bad_inputs_raise_helpful_errors(action, message):
    with pytest.raises(ValueError, match=message):
        action()


def _ready(name):
    scheduler = make_scheduler(name, SD15)
    scheduler.set_timesteps(20)
    return scheduler


# --- live tier: diffusers side by side --------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip(
        "diffusers", reason="live parity needs the reference extra: pip install -e '.[reference]'"
    )


def reference(diffusers, name, config):
    """diffusers' scheduler as a user builds it: from the file, then switched with from_config."""
    pndm = diffusers.PNDMScheduler.from_config(config)
    return pndm if name == "pndm" else diffusers.DDIMScheduler.from_config(pndm.config)


def reference_denoise(scheduler, eta, model_outputs, noises):
    import torch

    x = torch.from_numpy(SAMPLE)
    samples = []
    for i, t in enumerate(scheduler.timesteps):
        kwargs = {}
        if "DDIM" in type(scheduler).__name__:
            noise = torch.from_numpy(noises[i]) if eta > 0 else None
            kwargs = {"eta": eta, "variance_noise": noise}
        x = scheduler.step(torch.from_numpy(model_outputs[i]), t, x, **kwargs).prev_sample
        samples.append(x.numpy().copy())
    return np.stack(samples)


def long_inputs(n):
    """Seeded model outputs and noises for runs longer than the fixture's 26 calls."""
    rng = np.random.default_rng(n)
    shape = (n, *SAMPLE.shape)
    return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)


def compare_runs(diffusers, name, config, steps, eta=0.0):
    ours, theirs = make_scheduler(name, config), reference(diffusers, name, config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    calls = len(ours.timesteps)
    inputs = (MODEL_OUTPUTS, NOISES) if calls <= len(MODEL_OUTPUTS) else long_inputs(calls)
    assert_close(denoise(ours, eta, *inputs), reference_denoise(theirs, eta, *inputs))


@pytest.mark.reference
@pytest.mark.parametrize("name", ["pndm", "ddim"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 25, 50, 999, 1000])
def test_live_timesteps(diffusers, name, spacing, steps):
    config = {**SD15, "timestep_spacing": spacing}
    ours, theirs = make_scheduler(name, config), reference(diffusers, name, config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())


@pytest.mark.reference
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 10, 25, 50])
@pytest.mark.parametrize("name, eta", [("pndm", 0.0), ("ddim", 0.0), ("ddim", 0.7)])
def test_live_steps(diffusers, name, eta, steps, spacing, prediction_type):
    config = {**SD15, "timestep_spacing": spacing, "prediction_type": prediction_type}
    compare_runs(diffusers, name, config, steps, eta)


@pytest.mark.reference
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [4, 10, 25])
def test_live_pndm_runge_kutta(diffusers, steps, spacing):
    config = {**SD15, "skip_prk_steps": False, "timestep_spacing": spacing}
    compare_runs(diffusers, "pndm", config, steps)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["pndm", "ddim"])
def test_live_defaults_from_class(diffusers, name):
    # no timestep_spacing, steps_offset, set_alpha_to_one, clip_sample: each class's own defaults
    absent = ("steps_offset", "set_alpha_to_one", "clip_sample")
    config = {k: v for k, v in SD15.items() if k not in absent}
    ours, theirs = make_scheduler(name, config), reference(diffusers, name, config)
    for key, value in vars(ours.config).items():
        assert value == theirs.config[key], key
    compare_runs(diffusers, name, config, 10)


@pytest.mark.reference
def test_live_config_from_diffusers_object(diffusers):
    # a diffusers config dict carries _use_default_values; from_config drops those keys
    without_alpha_to_one = {k: v for k, v in SD15.items() if k != "set_alpha_to_one"}
    pndm = diffusers.PNDMScheduler.from_config(without_alpha_to_one)
    ours = DDIMScheduler(dict(pndm.config))
    theirs = diffusers.DDIMScheduler.from_config(pndm.config)
    for key, value in vars(ours.config).items():
        assert value == theirs.config[key], key
    assert ours.config.set_alpha_to_one  # DDIM's default, not PNDM's


@pytest.mark.reference
@pytest.mark.parametrize(
    "overrides",
    [
        {"clip_sample": True},
        {"clip_sample": True, "clip_sample_range": 0.5, "set_alpha_to_one": True},
        {"prediction_type": "sample", "clip_sample": True},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {
            "rescale_betas_zero_snr": True,
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
        },
        {"trained_betas": np.linspace(0.0001, 0.03, 1000).tolist()},
    ],
    ids=["clip", "clip_range_alpha_one", "sample_prediction", "linear", "cosine", "zero_snr", "trained_betas"],
)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_live_ddim_options(diffusers, overrides, eta):
    config = {**SD15, **overrides}
    ours, theirs = DDIMScheduler(config), reference(diffusers, "ddim", config)
    assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.numpy())
    compare_runs(diffusers, "ddim", config, 10, eta)


@pytest.mark.reference
@pytest.mark.parametrize("timestep", [1, 500, 999])
def test_live_add_noise(diffusers, timestep):
    import torch

    theirs = reference(diffusers, "ddim", SD15).add_noise(
        torch.from_numpy(SAMPLE), torch.from_numpy(NOISES[0]), torch.tensor([timestep])
    )
    assert_close(DDIMScheduler(SD15).add_noise(SAMPLE, NOISES[0], timestep), theirs.numpy())


@pytest.mark.reference
def test_live_trailing_overshoot(diffusers):
    # the one deliberate difference: diffusers' 62nd timestep -1 for N=61 is dropped
    config = {**SD15, "timestep_spacing": "trailing"}
    ours, theirs = DDIMScheduler(config), reference(diffusers, "ddim", config)
    ours.set_timesteps(61)
    theirs.set_timesteps(61)
    assert theirs.timesteps[-1] == -1
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy()[:61])
