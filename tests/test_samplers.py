"""The sigma-space samplers of minisd/schedulers/ and DDPM against diffusers: timesteps, sigmas, steps, pictures.

Fast tier: closed forms (Adams-Bashforth weights, Karras's end points, the sigma table's own
timesteps), steps that touch the latents only with operators (what CuPy needs), the errors.
Live tier (reference extra; LMS also needs scipy, which diffusers' LMS integrates with): each
diffusers scheduler built from the same config dict, then:

- timesteps exactly equal (dtype too) and sigma tables equal to float32 rounding. Not bit for
  bit: diffusers takes the table's square roots with torch's float32 sqrt, which on the CPU is
  one ulp off the correctly rounded root (NumPy's) for about a fifth of the entries.
- every step equal to float32 rounding (assert_close, relative 1e-6), each step from the same
  input: diffusers' previous output, the same random model output and the same noise, on
  diffusers' own sigma table. Some steps amplify a one-ulp change of sigma past 1e-6 (Euler a's
  first step: x + (sigma_down - sigma) d cancels about 15-fold), so the table is compared on its
  own (above) and the steps are compared on one table.
- whole pictures, each side with its own tables and noise from the same seed, within 1 level of 255.

Noise for Euler a and DDPM: diffusers draws it inside step() with randn_tensor(shape, generator);
the step tests replace randn_tensor in the scheduler's module by a function that returns the
array minisd gets as noise= (and check that diffusers draws exactly when minisd asks for noise);
the pipeline tests need no patch, since minisd's seed repeats torch's generator (minisd.rng).
"""

import operator
import sys

import numpy as np
import pytest

import minisd
from helpers import DIFFUSERS_SCHEDULERS, assert_close, require_reference
from helpers import SD15_SCHEDULER as SD15
from minisd.cli import parse_args
from minisd.schedulers import (
    SCHEDULERS,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    make_scheduler,
)
from minisd.schedulers.lms import lms_coefficients
from minisd.schedulers.sigmas import karras_sigmas, sigma_to_t

SHAPE = (1, 4, 8, 8)
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction")
KARRAS = {"use_karras_sigmas": True}
# the samplers this file compares (PNDM and DDIM: test_schedulers.py; LCM: test_lcm.py)
DIFFUSERS_CLASS = {name: cls for name, cls in DIFFUSERS_SCHEDULERS.items() if name not in ("pndm", "ddim", "lcm")}
SAMPLERS = list(DIFFUSERS_CLASS)
# every sampler, and the Karras variants that a config switches on
CASES = [(name, {}) for name in SAMPLERS] + [(name, KARRAS) for name in ("euler", "lms", "heun")]
CASE_IDS = [name + ("-karras" if overrides else "") for name, overrides in CASES]


# --- fast tier: closed forms ------------------------------------------------------------------


def test_lms_coefficients_sum_to_the_step():
    # the Lagrange basis sums to 1, so a consistent step's weights sum to sigma_{i+1} - sigma_i
    nodes = [2.1, 3.4, 5.0, 7.7]
    for order in range(1, 5):
        assert sum(lms_coefficients(nodes[:order], 1.2)) == pytest.approx(1.2 - 2.1, rel=1e-12)


def test_lms_coefficients_are_adams_bashforth():
    # equally spaced nodes 3, 4, 5, 6 and a step down to 2: the classic 4-step Adams-Bashforth
    # weights (55, -59, 37, -9) / 24 times the step, -1
    np.testing.assert_allclose(lms_coefficients([3, 4, 5, 6], 2), np.array([-55, 59, -37, 9]) / 24, rtol=1e-13)
    np.testing.assert_allclose(lms_coefficients([3, 4], 2.5), [-0.5 * 1.25, 0.5 * 0.25], rtol=1e-13)
    assert lms_coefficients([0.7], 0.2) == pytest.approx([-0.5])  # one node: Euler


def test_karras_sigmas_end_points():
    sigmas = karras_sigmas(0.03, 14.6, 10)
    assert sigmas[0] == pytest.approx(14.6, rel=1e-14) and sigmas[-1] == pytest.approx(0.03, rel=1e-14)
    assert np.all(np.diff(sigmas) < 0)
    np.testing.assert_allclose(karras_sigmas(1.0, 5.0, 5, rho=1.0), [5, 4, 3, 2, 1], rtol=1e-14)


def test_sigma_to_t_inverts_the_training_table():
    euler = EulerDiscreteScheduler(SD15)
    t = sigma_to_t(euler.train_sigmas.astype(np.float64), euler.log_train_sigmas)
    # the log table is float32 (as diffusers'), so each t lands within a float32 rounding of log sigma
    np.testing.assert_allclose(t, np.arange(1000), rtol=0, atol=1e-4)
    assert np.all(np.diff(t) > 0.99)


def test_every_name_and_class_name():
    for name, cls in SCHEDULERS.items():
        assert type(make_scheduler(name, SD15)) is cls
    for name in SAMPLERS:
        built = make_scheduler(None, {**SD15, "_class_name": DIFFUSERS_CLASS[name]})
        assert type(built).__name__ == DIFFUSERS_CLASS[name]
    assert parse_args(["a prompt", "--scheduler", "dpmpp_2m_karras"]).scheduler == "dpmpp_2m_karras"


def test_karras_name_and_config_flag():
    plain, karras = make_scheduler("dpmpp_2m", SD15), make_scheduler("dpmpp_2m_karras", SD15)
    from_config = make_scheduler("dpmpp_2m", {**SD15, **KARRAS})
    assert not plain.config.use_karras_sigmas and karras.config.use_karras_sigmas
    assert isinstance(karras, DPMSolverMultistepScheduler) and from_config.config.use_karras_sigmas
    for scheduler in (plain, karras, from_config):
        scheduler.set_timesteps(10)
    np.testing.assert_array_equal(karras.timesteps, from_config.timesteps)
    assert not np.array_equal(plain.timesteps, karras.timesteps)


def test_heun_calls_the_unet_twice_per_step():
    heun = HeunDiscreteScheduler(SD15)
    heun.set_timesteps(5)
    assert heun.order == 2 and len(heun.timesteps) == 9 and len(heun.sigmas) == 10
    assert heun.timesteps[1] == heun.timesteps[2] and heun.sigmas[-1] == 0


def _on_array(op, swap=False):
    """A Latents method: `op` on the wrapped arrays, wrapped again."""

    def method(self, other):
        other = other.array if isinstance(other, Latents) else other
        return Latents(op(other, self.array) if swap else op(self.array, other))

    return method


class Latents:
    """Latents that allow arithmetic operators and .clip only, like CuPy arrays meeting NumPy
    scalars: a NumPy function applied to them fails (__array_ufunc__ = None)."""

    __array_ufunc__ = None

    def __init__(self, array):
        self.array = array

    __add__, __radd__ = _on_array(operator.add), _on_array(operator.add, swap=True)
    __sub__, __rsub__ = _on_array(operator.sub), _on_array(operator.sub, swap=True)
    __mul__, __rmul__ = _on_array(operator.mul), _on_array(operator.mul, swap=True)
    __truediv__, __rtruediv__ = _on_array(operator.truediv), _on_array(operator.truediv, swap=True)

    def clip(self, low, high):
        return Latents(self.array.clip(low, high))


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_steps_touch_latents_only_with_arithmetic(name, prediction_type):
    """What lets the steps run on CuPy latents: operators and float32 scalars only, float32 kept."""
    config = {**SD15, "clip_sample": True, "prediction_type": prediction_type}
    scheduler, plain = _ready(name, config, steps=6), _ready(name, config, steps=6)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    for t in scheduler.timesteps:
        model_output, noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
        noise = noise if scheduler.needs_noise(t) else None
        assert isinstance(scheduler.scale_model_input(Latents(x), t), Latents)
        got = scheduler.step(Latents(model_output), t, Latents(x), noise=None if noise is None else Latents(noise))
        want = plain.step(model_output, t, x, noise=noise)
        assert got.array.dtype == np.float32
        np.testing.assert_array_equal(got.array, want)
        x = want


def _ready(name, config=SD15, steps=5):
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(steps)
    return scheduler


X = np.zeros(SHAPE, np.float32)


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda: make_scheduler("dpm++", SD15), "unknown scheduler 'dpm\\+\\+': choose one of .*dpmpp_2m_karras"),
        (lambda: make_scheduler(None, {"_class_name": "UniPCMultistepScheduler"}), "does not implement"),
        (lambda: make_scheduler("dpmpp_2m", {**SD15, "algorithm_type": "sde-dpmsolver++"}), "algorithm_type"),
        (lambda: make_scheduler("dpmpp_2m", {**SD15, "solver_order": 3}), "set solver_order to 2"),
        (lambda: make_scheduler("dpmpp_2m_karras", {**SD15, "thresholding": True}), "thresholding"),
        (lambda: make_scheduler("dpmpp_2m", {**SD15, "final_sigmas_type": "sigma_min"}), "final_sigmas_type"),
        (lambda: make_scheduler("euler", {**SD15, "use_exponential_sigmas": True}), "use_exponential_sigmas"),
        (lambda: make_scheduler("euler", {**SD15, "interpolation_type": "log_linear"}), "interpolation_type"),
        (lambda: make_scheduler("lms", {**SD15, "rescale_betas_zero_snr": True}), "choose another scheduler"),
        (lambda: make_scheduler("heun", {**SD15, "rescale_betas_zero_snr": True}), "rescale_betas_zero_snr"),
        (lambda: make_scheduler("ddpm", {**SD15, "variance_type": "learned_range"}), "variance_type"),
        (lambda: make_scheduler("euler", {**SD15, "prediction_type": "sample"}), "prediction_type"),
        (lambda: make_scheduler("heun", {**SD15, "timestep_spacing": "random"}), "timestep_spacing"),
        (lambda: _ready("euler").needs_noise(999, eta=0.3), "eta=0.3 needs scheduler 'ddim'"),
        (lambda: _ready("euler_a").needs_noise(999, eta=0.3), "EulerAncestralDiscreteScheduler takes no eta"),
        (lambda: _ready("ddpm").step(X, 801, X, eta=1.0), "needs scheduler 'ddim'"),
        (lambda: _ready("euler_a").step(X, 999, X), "Euler a adds fresh noise every step: pass noise="),
        (lambda: _ready("ddpm").step(X, 801, X), "DDPM adds fresh noise at timestep 801: pass noise="),
        (lambda: _ready("ddpm").step(X, 800, X, noise=X), "timestep 800 is not one of"),
        (lambda: make_scheduler("heun", SD15).step(X, 999, X), "call set_timesteps"),
        (lambda: _ready("lms").step(X, 500, X), "step 0 is at timestep 999.0, got 500"),
        (lambda: _ready("dpmpp_2m").add_noise(X, X, 500), "call set_begin_index"),
        (lambda: _ready("euler", steps=1001), "between 1 and num_train_timesteps=1000"),
    ],
)
def test_bad_inputs_raise_helpful_errors(action, message):
    with pytest.raises(ValueError, match=message):
        action()


def test_steps_after_the_last_are_refused():
    euler = _ready("euler", steps=1)
    euler.step(X, euler.timesteps[0], X)
    with pytest.raises(ValueError, match="all 1 steps are done"):
        euler.step(X, euler.timesteps[0], X)


def test_pipeline_refuses_eta_before_the_first_unet_call(monkeypatch):
    from helpers import TINY_SD

    pipe = minisd.load(TINY_SD)
    monkeypatch.setattr(pipe, "predict_noise", lambda *args: pytest.fail("the UNet ran"))
    with pytest.raises(ValueError, match="eta=0.5 needs scheduler 'ddim'"):
        pipe("a red circle", steps=2, eta=0.5, scheduler="euler_a", progress=False)


# --- live tier: diffusers side by side --------------------------------------------------------


def reference(name, config):
    """diffusers' scheduler built from a config (dict or diffusers config), as `name` means it."""
    require_reference()
    if name == "lms":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler integrates with scipy: pip install scipy")
    import diffusers

    karras = KARRAS if name == "dpmpp_2m_karras" else {}
    return getattr(diffusers, DIFFUSERS_CLASS[name]).from_config(config, **karras)


def both(name, config, steps):
    ours, theirs = make_scheduler(name, config), reference(name, config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    return ours, theirs


def assert_same_timesteps(ours, theirs):
    """diffusers' timesteps exactly, dtype too; Euler's, LMS's and Heun's fractional timesteps on
    Karras sigmas are read off the log of the sigma table, so they agree to float32 rounding."""
    want = theirs.timesteps.numpy()
    assert ours.timesteps.dtype == want.dtype
    if getattr(ours.config, "use_karras_sigmas", False) and want.dtype == np.float32:
        assert_close(ours.timesteps, want)
    else:
        np.testing.assert_array_equal(ours.timesteps, want)


@pytest.mark.reference
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 20, 25, 50, 999, 1000])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name, overrides", CASES, ids=CASE_IDS)
def test_live_timesteps_and_sigmas(name, overrides, spacing, steps):
    ours, theirs = both(name, {**SD15, **overrides, "timestep_spacing": spacing}, steps)
    assert_same_timesteps(ours, theirs)
    if name != "ddpm":
        assert_close(ours.sigmas, theirs.sigmas.numpy())
    assert_close(ours.init_noise_sigma, float(theirs.init_noise_sigma))


def compare_steps(monkeypatch, name, config, steps, seed=0):
    """Every step of minisd and diffusers from the same input, model output, noise and sigma table."""
    import torch

    ours, theirs = both(name, config, steps)
    if name != "ddpm":
        ours.sigmas = theirs.sigmas.numpy()  # the tables are compared on their own
        # Without a begin index diffusers finds its place by looking the first timestep up, and
        # takes the second of two equal ones: DPM-Solver on Karras sigmas under the cosine schedule
        # starts with timesteps 998, 998, 998 (truncated) and would skip its first sigma.
        theirs.set_begin_index(0)
    drawn = []  # the noise diffusers' step draws: what minisd gets as noise=
    module = sys.modules[type(theirs).__module__]
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(drawn.pop()), raising=False)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(theirs.init_noise_sigma)
    for t, t_theirs in zip(ours.timesteps, theirs.timesteps, strict=True):
        model_output, noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
        want_input = theirs.scale_model_input(torch.from_numpy(x), t_theirs).numpy()
        assert_close(ours.scale_model_input(x, t), want_input)
        if ours.needs_noise(t):
            drawn.append(noise)
        want = theirs.step(torch.from_numpy(model_output), t_theirs, torch.from_numpy(x)).prev_sample.numpy()
        assert not drawn, "diffusers drew no noise where minisd asks for it"
        assert_close(ours.step(model_output, t, x, noise=noise if ours.needs_noise(t) else None), want)
        x = want


@pytest.mark.reference
@pytest.mark.parametrize("steps", [1, 2, 7, 20, 50])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name, overrides", CASES, ids=CASE_IDS)
def test_live_steps(monkeypatch, name, overrides, spacing, prediction_type, steps):
    config = {**SD15, **overrides, "timestep_spacing": spacing, "prediction_type": prediction_type}
    compare_steps(monkeypatch, name, config, steps)


ZERO_SNR = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
OPTIONS = {
    "zero_snr": (["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddpm"], ZERO_SNR),
    "cosine": (SAMPLERS, {"beta_schedule": "squaredcos_cap_v2"}),
    "linear": (SAMPLERS, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}),
    "trained_betas": (SAMPLERS, {"trained_betas": np.linspace(0.0001, 0.03, 1000).tolist()}),
    "clip": (["heun", "ddpm"], {"clip_sample": True, "clip_sample_range": 0.5}),
    "sample_prediction": (["ddpm"], {"prediction_type": "sample", "clip_sample": True}),
    "karras_cosine": (["euler", "lms", "heun", "dpmpp_2m_karras"], {**KARRAS, "beta_schedule": "squaredcos_cap_v2"}),
}


@pytest.mark.reference
@pytest.mark.parametrize("name, option", [(n, o) for o, (names, _) in OPTIONS.items() for n in names])
def test_live_options(monkeypatch, name, option):
    config = {**SD15, **OPTIONS[option][1]}
    assert_same_timesteps(*both(name, config, 10))
    compare_steps(monkeypatch, name, config, 10)


@pytest.mark.reference
@pytest.mark.parametrize("name", SAMPLERS)
def test_live_class_defaults(monkeypatch, name):
    """An empty config: every key takes the class's own default (Heun's and DDPM's differ)."""
    ours, theirs = make_scheduler(name, {}), reference(name, {})
    for key, value in vars(ours.config).items():
        assert value == theirs.config[key], key
    assert make_scheduler(name, dict(theirs.config)).config == ours.config  # a file diffusers saves: every key
    compare_steps(monkeypatch, name, {}, 10)


@pytest.mark.reference
def test_live_switching_from_the_checkpoint_scheduler():
    """A diffusers config object carries _use_default_values: PNDM's default "leading" spacing
    does not carry over to Euler, whose own default is "linspace"."""
    import diffusers

    pndm = diffusers.PNDMScheduler.from_config(SD15)
    ours = make_scheduler("euler", dict(pndm.config))
    theirs = diffusers.EulerDiscreteScheduler.from_config(pndm.config)
    assert ours.config.timestep_spacing == theirs.config.timestep_spacing == "linspace"


@pytest.mark.reference
def test_live_lms_coefficients_match_scipy_quad():
    """diffusers integrates the Lagrange basis with scipy.integrate.quad on float32 values; the
    exact polynomial integral agrees to float32 rounding."""
    theirs = reference("lms", SD15)
    for steps in (4, 20, 50):
        theirs.set_timesteps(steps)
        sigmas = theirs.sigmas.numpy()
        for i in range(steps):
            order = min(i + 1, 4)
            want = [theirs.get_lms_coefficient(order, i, j) for j in range(order)]
            got = lms_coefficients(sigmas[i + 1 - order : i + 1][::-1], sigmas[i + 1])
            np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["euler", "euler_a", "dpmpp_2m", "heun"])
def test_live_add_noise(name):
    import torch

    ours, theirs = both(name, SD15, 10)
    begin = 2 * ours.order
    ours.set_begin_index(begin)
    theirs.set_begin_index(begin)
    x, noise = np.random.default_rng(4).standard_normal((2, *SHAPE), dtype=np.float32)
    want = theirs.add_noise(torch.from_numpy(x), torch.from_numpy(noise), theirs.timesteps[begin : begin + 1])
    assert_close(ours.add_noise(x, noise, ours.timesteps[begin]), want.numpy())


# --- live tier: whole pipelines ---------------------------------------------------------------

PROMPT = "a red circle on a white background"


def reference_with(folder, name, img2img=False):
    """diffusers' pipeline on the folder, switched to the sampler as a user does: from_config."""
    import diffusers

    from reference import reference_pipeline

    pipe = reference_pipeline(folder)
    if img2img:
        pipe = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    pipe.scheduler = reference(name, pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def tiny_v(tiny, tmp_path_factory):
    """The tiny model with a v-prediction, trailing-spacing scheduler config (as SD 2.x)."""
    from reference import save_model_folder

    _, models = tiny
    config = {**SD15, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
    return save_model_folder(tmp_path_factory.mktemp("tiny-v"), *models, scheduler=config)


@pytest.mark.reference
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_live_text_to_image(request, name, prediction):
    from helpers import max_pixel_difference
    from reference import torch_seed

    folder = request.getfixturevalue("tiny")[0] if prediction == "epsilon" else request.getfixturevalue("tiny_v")
    options = {"negative_prompt": "blurry", "height": 64, "width": 48}
    theirs = reference_with(folder, name)(PROMPT, num_inference_steps=8, generator=torch_seed(3), **options)
    ours = minisd.load(folder)(PROMPT, steps=8, scheduler=name, seed=3, progress=False, **options)
    assert max_pixel_difference(ours, theirs.images[0]) <= 1


@pytest.mark.reference
@pytest.mark.parametrize(
    "name, strength",
    [("euler", 0.6), ("euler_a", 0.8), ("dpmpp_2m_karras", 0.5), ("heun", 0.7), ("ddpm", 0.6), ("lms", 1.0)],
)
def test_live_image_to_image(tiny, name, strength):
    """(LMS only at strength 1: below, minisd starts its multistep at order 1 where diffusers does
    not; see the README's "Behaviour worth knowing".)"""
    from helpers import init_image, max_pixel_difference
    from reference import torch_seed

    folder, _ = tiny
    image = init_image(64, 56)
    theirs = reference_with(folder, name, img2img=True)(
        PROMPT, image=image, strength=strength, num_inference_steps=10, generator=torch_seed(7)
    ).images[0]
    ours = minisd.load(folder).img2img(
        PROMPT, image, strength=strength, steps=10, scheduler=name, seed=7, progress=False
    )
    assert max_pixel_difference(ours, theirs) <= 1


@pytest.mark.reference
@pytest.mark.parametrize("name", ["euler_a", "dpmpp_2m"])
def test_live_embedded_model(name):
    """The shipped model's zero-SNR, v-prediction, trailing schedule through the sigma samplers."""
    import diffusers
    import torch

    from helpers import max_pixel_difference
    from minisd.weights import default_model_folder
    from reference import torch_seed

    folder = default_model_folder()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = reference(name, pipe.scheduler.config)
    prompt = "a purple square on a gray background"
    theirs = pipe(prompt, num_inference_steps=10, guidance_scale=3.0, height=64, width=64, generator=torch_seed(9))
    ours = minisd.load(folder)(prompt, steps=10, guidance=3.0, scheduler=name, seed=9, progress=False)
    assert max_pixel_difference(ours, theirs.images[0]) <= 1
