"""The noise schedule, and what every scheduler shares (the base class `Scheduler`).

Stable Diffusion was trained on latents noised at T = 1000 levels. The *noise schedule* gives
each timestep t a beta_t; alpha_bar_t = prod_{s<=t} (1 - beta_s) says how much signal is left:

    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise.

At inference a scheduler picks N of those timesteps and, after each UNet call, makes one
*denoising step*: from the latents x_t and the predicted noise it computes the less noisy latents
of the previous timestep. Every scheduler is built from a checkpoint's scheduler_config.json
dict; a key absent from it takes the default of the class being built, as in diffusers. The
schedule tables live on the host (NumPy, float32); a step touches the latents only with
arithmetic operators and float32 scalars, so latents may be NumPy or CuPy arrays.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import ConfigError
from ..module import Rules, fits, known_fields, positive_integers

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


# ---------------------------------------------------------------------------------------------
# Configs: a key absent from scheduler_config.json takes the default of the class being built.


@dataclass(frozen=True)
class ScheduleConfig:
    """Fields of scheduler_config.json shared by every sampler, with diffusers' defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: list | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    @classmethod
    def from_dict(cls, config, source="scheduler config"):
        """Read the keys this class knows, each checked against its type; absent keys keep its
        defaults, unknown keys are ignored. `source` (the file) is named in every error."""
        result = cls(**known_fields(cls, explicit_keys(config, source), source))
        result.check(source)
        return result

    def check(self, source):
        """Ranges: a ConfigError naming the key, the value and what is allowed."""
        must, T, betas = Rules(source, self), self.num_train_timesteps, self.trained_betas
        must("num_train_timesteps", positive_integers([T]), "an integer >= 1")
        for key in ("beta_start", "beta_end"):
            must(key, 0 < getattr(self, key) < 1, "in (0, 1)")
        must("beta_schedule", self.beta_schedule in BETA_SCHEDULES, f"one of {', '.join(BETA_SCHEDULES)}")
        in_range = betas is None or (len(betas) == T and all(fits(b, float) and 0 < b < 1 for b in betas))
        must("trained_betas", in_range, f"num_train_timesteps = {T} betas in (0, 1)")
        must("timestep_spacing", self.timestep_spacing in TIMESTEP_SPACINGS, f"one of {', '.join(TIMESTEP_SPACINGS)}")
        must("steps_offset", self.steps_offset >= 0, ">= 0")


def explicit_keys(config, source="scheduler config"):
    """The keys a scheduler_config.json dict sets itself.

    diffusers lists the keys a scheduler filled from its own defaults in `_use_default_values`
    and drops them when another class is built from that config.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{source} must hold a JSON object of settings, not a {type(config).__name__}")
    defaulted = config.get("_use_default_values", [])
    if not isinstance(defaulted, (list, tuple)):
        raise ConfigError(f"{source}: _use_default_values is {defaulted!r:.80}, but it must be a list of keys")
    defaulted = {key for key in defaulted if isinstance(key, str)}
    return {k: v for k, v in config.items() if k not in defaulted}


# ---------------------------------------------------------------------------------------------
# The noise schedule.


def make_betas(config):
    """beta_1..beta_T (float32, shape (T,)): how much noise each training timestep adds."""
    T = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
    elif config.beta_schedule == "linear":
        betas = _linspace_float32(config.beta_start, config.beta_end, T)
    elif config.beta_schedule == "scaled_linear":  # Stable Diffusion: linear in sqrt(beta)
        betas = _linspace_float32(config.beta_start**0.5, config.beta_end**0.5, T) ** 2
    elif config.beta_schedule == "squaredcos_cap_v2":
        betas = _cosine_betas(T)
    else:
        raise ValueError(
            f"unknown beta_schedule {config.beta_schedule!r}: choose one of "
            f"{', '.join(BETA_SCHEDULES)}, or give trained_betas"
        )
    if getattr(config, "rescale_betas_zero_snr", False):  # DDIM, DDPM, Euler (a), DPM-Solver
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod(betas):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float32; accumulated in float64 as torch does."""
    alphas = 1 - betas  # float32
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas):
    """Shift and scale sqrt(alpha_bar) so the last timestep is pure noise (zero SNR).

    Algorithm 1 of "Common Diffusion Noise Schedules and Sample Steps are Flawed" (Lin et al. 2023).
    """
    root = np.sqrt(alphas_cumprod(betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def _linspace_float32(start, end, n):
    """torch.linspace in float32, bit for bit on CPUs with FMA: steps from both ends.

    The front half is start + step*i, the back half end - step*(n-1-i). A float32 product is exact
    in float64, so one float64 sum rounded to float32 reproduces the fused multiply-add.
    """
    start, end = np.float32(start), np.float32(end)
    step = np.float64((end - start) / np.float32(max(n - 1, 1)))
    i = np.arange(n)
    front = np.float64(start) + step * i
    back = np.float64(end) - step * (n - 1 - i)
    return np.where(i < n // 2, front, back).astype(np.float32)


def _cosine_betas(T, max_beta=0.999):
    """The "squaredcos_cap_v2" schedule (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2 of a ramp."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return np.array(betas, dtype=np.float32)


def spaced_timesteps(num_inference_steps, config):
    """N of the T training timesteps, descending (int64), spaced as Table 2 of Lin et al. 2023."""
    T, N = config.num_train_timesteps, num_inference_steps
    if config.timestep_spacing == "leading":  # 0, T//N, 2T//N, ... then shifted by steps_offset
        timesteps = (np.arange(N) * (T // N) + config.steps_offset)[::-1]
    elif config.timestep_spacing == "trailing":  # T-1, T-1-T/N, ... starts at the noisiest level
        # Float rounding can make arange yield N+1 values; diffusers then ends on timestep -1
        # (e.g. N=61), a broken last step. Keeping the first N is our one deliberate difference.
        timesteps = np.round(np.arange(T, 0, -T / N)[:N]) - 1
    else:  # "linspace": evenly from 0 to T-1, rounded
        timesteps = np.round(np.linspace(0, T - 1, N))[::-1]
    return timesteps.astype(np.int64)


class Scheduler:
    """What every scheduler shares: the noise schedule, the checks, and what the pipeline calls.

    A scheduler is built from a scheduler_config.json dict. `set_timesteps(N)` picks the N
    timesteps (`timesteps`); then, for each, the pipeline calls `scale_model_input` (what the
    UNet sees), the UNet, and `step` (the latents one step less noisy). `add_noise` noises
    clean latents to a timestep (image to image), `needs_noise` says when `step` wants fresh
    noise. Subclasses set `config_class` (the keys they read, with their defaults) and write
    `set_timesteps` and `step`.
    """

    config_class = ScheduleConfig
    prediction_types = ("epsilon", "v_prediction")
    # options diffusers offers that minisd does not implement: key -> the one value it supports
    unsupported: ClassVar[dict] = {}
    init_noise_sigma = 1.0  # the first latents are plain N(0, 1) noise
    order = 1  # one UNet call per entry of `timesteps`

    def __init__(self, config, source="scheduler config"):
        self.config = self.config_class.from_dict(config, source)
        self._check_supported(explicit_keys(config, source))
        _check_choice("prediction_type", self.config.prediction_type, self.prediction_types)
        _check_choice("timestep_spacing", self.config.timestep_spacing, TIMESTEP_SPACINGS)
        self.betas = make_betas(self.config)
        self.alphas_cumprod = alphas_cumprod(self.betas)
        self.num_inference_steps = None
        self.timesteps = None

    def _check_supported(self, config):
        for key, supported in self.unsupported.items():
            value = config.get(key, supported)
            if value != supported:
                raise ValueError(
                    f"{type(self).__name__} in minisd does not support {key}={value!r}, only "
                    f"{supported!r}: choose another scheduler, or set {key} to {supported!r} in the "
                    "scheduler config"
                )

    def _check_steps(self, num_inference_steps):
        T = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(
                f"num_inference_steps must be between 1 and num_train_timesteps={T}, got {num_inference_steps}"
            )
        self.num_inference_steps = num_inference_steps

    def _spaced_timesteps(self, num_inference_steps):
        """Check N, remember the jump T // N that every step makes, return the N timesteps."""
        self._check_steps(num_inference_steps)
        # PNDM and DDIM step from t to t - T//N whatever the spacing, as diffusers does.
        self.step_ratio = self.config.num_train_timesteps // num_inference_steps
        return spaced_timesteps(num_inference_steps, self.config)

    def _alpha_bar(self, t):
        """alpha_bar_t as a float32 scalar; t < 0 means "after the last step"."""
        if t < 0:  # 1 (clean latents), or alpha_bar_0 with set_alpha_to_one=False
            return np.float32(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        if t >= len(self.alphas_cumprod):
            raise ValueError(
                f"timestep {t} is past the noise schedule (0..{len(self.alphas_cumprod) - 1}): "
                f"with timestep_spacing='leading' and steps_offset={self.config.steps_offset}, "
                f"use fewer inference steps"
            )
        return self.alphas_cumprod[t]

    def _previous_timestep(self, t):
        """The entry after t in `timesteps` (DDPM's and LCM's next noise level), or -1 after the last one."""
        (where,) = np.nonzero(self.timesteps == t)
        if len(where) == 0:
            raise ValueError(f"timestep {t} is not one of this scheduler's timesteps: step through .timesteps")
        i = where[0] + 1
        return int(self.timesteps[i]) if i < len(self.timesteps) else -1

    def _check_ready(self):
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")

    def needs_noise(self, timestep, eta=0.0):
        """Whether step() at `timestep` adds fresh noise; the caller then passes `noise=`, a
        standard normal array shaped like the latents (the pipeline draws it from the seed)."""
        self._check_no_eta(eta)
        return False

    def _check_no_eta(self, eta):
        if eta != 0:
            raise ValueError(
                f"eta={eta} needs scheduler 'ddim' (eta is DDIM's noise level); "
                f"{type(self).__name__} takes no eta: leave it at 0"
            )

    def set_begin_index(self, index):
        """img2img starts the loop at timesteps[index]. PNDM, DDIM and DDPM need not know (they
        read the timestep; PNDM counts its calls from 0, as diffusers does); the sigma samplers,
        which count their steps, override this."""

    def scale_model_input(self, sample, timestep):
        """The UNet input at this timestep: the latents themselves for PNDM, DDIM and DDPM."""
        return sample

    def add_noise(self, original, noise, timestep):
        """Forward diffusion: noise clean latents to level t (img2img starts here)."""
        alpha_bar = self.alphas_cumprod[int(timestep)]
        return np.sqrt(alpha_bar) * original + np.sqrt(1 - alpha_bar) * noise


def predict_x0_and_noise(prediction_type, model_output, sample, a_t):
    """The clean latents x_0 and the noise in x_t = sqrt(a_t) x_0 + sqrt(1-a_t) noise."""
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        return (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t), model_output
    if prediction_type == "sample":
        return model_output, (sample - np.sqrt(a_t) * model_output) / np.sqrt(b_t)
    # v_prediction: v = sqrt(a_t) noise - sqrt(1-a_t) x_0
    x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
    return x0, np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample


def clip_x0(x0, config):
    """The predicted clean latents clipped to [-r, r] when the config asks (clip_sample)."""
    if not config.clip_sample:
        return x0
    return x0.clip(-config.clip_sample_range, config.clip_sample_range)


def require_noise(noise, reason):
    if noise is None:
        raise ValueError(f"{reason}: pass noise=, a standard normal array shaped like sample")


def _check_choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"unsupported {key} {value!r}: choose one of {', '.join(choices)}")
