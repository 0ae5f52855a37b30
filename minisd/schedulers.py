"""Schedulers: the noise schedule and the denoising step.

Stable Diffusion was trained on latents noised at T = 1000 levels. The *noise schedule* gives
each timestep t a beta_t; alpha_bar_t = prod_{s<=t} (1 - beta_s) says how much signal is left:

    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise.

At inference a scheduler picks N of those timesteps and, after each UNet call, makes one
*denoising step*: from the latents x_t and the predicted noise it computes the less noisy latents
of the previous timestep. Three samplers here, each matching diffusers to float32 rounding:

- PNDMScheduler (PLMS, the SD 1.x default) reuses past noise predictions (linear multistep).
- DDIMScheduler predicts x_0, then re-noises it to the previous level; eta > 0 adds fresh noise.
- DDPMScheduler samples the posterior q(x_prev | x_t, x_0): fresh noise at every step.

The samplers that work in sigma space (Euler, DPM-Solver++, LMS, Heun) are in samplers.py, with
the table of every sampler by name. All are built from a checkpoint's scheduler_config.json dict.
The schedule tables live on the host (NumPy, float32); the step touches the latents only with
arithmetic operators and float32 scalars, so latents may be NumPy or CuPy arrays.
"""

import itertools
import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

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
    def from_dict(cls, config):
        """Read the keys this class knows; absent keys keep its defaults, unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in explicit_keys(config).items() if k in known})


def explicit_keys(config):
    """The keys a scheduler_config.json dict sets itself.

    diffusers lists the keys a scheduler filled from its own defaults in `_use_default_values`
    and drops them when another class is built from that config.
    """
    if not isinstance(config, dict):
        raise TypeError(
            f"scheduler config must be a dict (json.load of scheduler_config.json), got {type(config).__name__}"
        )
    defaulted = set(config.get("_use_default_values", ()))
    return {k: v for k, v in config.items() if k not in defaulted}


@dataclass(frozen=True)
class PNDMConfig(ScheduleConfig):
    set_alpha_to_one: bool = False
    skip_prk_steps: bool = False


@dataclass(frozen=True)
class DDIMConfig(ScheduleConfig):
    set_alpha_to_one: bool = True
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False


@dataclass(frozen=True)
class DDPMConfig(ScheduleConfig):
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False


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


# ---------------------------------------------------------------------------------------------
# Samplers.


class _Scheduler:
    """What every sampler shares: the noise schedule, the checks, the hooks the pipeline calls."""

    config_class = ScheduleConfig
    prediction_types = ("epsilon", "v_prediction")
    # options diffusers offers that minisd does not implement: key -> the one value it supports
    unsupported: ClassVar[dict] = {}
    init_noise_sigma = 1.0  # the first latents are plain N(0, 1) noise
    order = 1  # one UNet call per entry of `timesteps`

    def __init__(self, config):
        self.config = self.config_class.from_dict(config)
        self._check_supported(explicit_keys(config))
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


class PNDMScheduler(_Scheduler):
    """Pseudo numerical methods for diffusion models (PNDM, Liu et al. 2022).

    Each denoising step is the DDIM move x_t -> x_{t-delta} (the paper's formula 9), driven by
    an Adams-Bashforth mix of the last four noise predictions: a 4th-order step for one UNet call.
    With skip_prk_steps (every SD checkpoint) the history starts with a 2nd-order step that calls
    the UNet twice at the second timestep, so N steps take N+1 calls; without it, three
    Runge-Kutta steps (12 calls) start the history.
    """

    config_class = PNDMConfig

    def set_timesteps(self, num_inference_steps):
        grid = self._spaced_timesteps(num_inference_steps)
        if self.config.skip_prk_steps:
            self.timesteps = np.concatenate([grid[:2], grid[1:]])  # second timestep twice
            self._runge_kutta_calls = 0
        else:
            if num_inference_steps < 4:
                raise ValueError(
                    f"the Runge-Kutta warm-up (skip_prk_steps=False) needs at least 4 steps, got {num_inference_steps}"
                )
            self.timesteps = np.concatenate([self._runge_kutta_timesteps(grid), grid[3:]])
            self._runge_kutta_calls = 12
        self._noise_history = []  # noise predictions that feed the multistep, oldest first
        self._calls = 0
        self._start_sample = None  # latents where the current two-call / RK step began
        self._rk_sum = 0

    def _runge_kutta_timesteps(self, grid):
        """Three RK4 steps t -> t_next, each called at t, the midpoint twice, then t_next."""
        half = self.step_ratio // 2
        steps = [[t, t_next + half, t_next + half, t_next] for t, t_next in itertools.pairwise(grid[:4])]
        return np.array(steps, dtype=np.int64).ravel()

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        """One denoising step: latents at `timestep` -> latents at the next entry of `timesteps`."""
        self._check_no_eta(eta)
        self._check_ready()
        t = int(timestep)
        if self._calls < self._runge_kutta_calls:
            prev_sample = self._runge_kutta_step(model_output, t, sample)
        else:
            prev_sample = self._multistep(model_output, t, sample)
        self._calls += 1
        return prev_sample

    def _multistep(self, noise_pred, t, sample):
        """Linear multistep (PLMS): move by T//N along the Adams-Bashforth noise estimate."""
        t_prev = t - self.step_ratio
        if self._calls == 1:  # (skip_prk_steps only) second call at the same timestep:
            # redo the first step from where it began with the average of both predictions.
            t, t_prev = t + self.step_ratio, t
            noise_pred = (noise_pred + self._noise_history[-1]) / 2
            sample = self._start_sample
        else:
            self._noise_history = self._noise_history[-3:] + [noise_pred]
            noise_pred = adams_bashforth(self._noise_history)
            if self._calls == 0:
                self._start_sample = sample
        return self._transfer(sample, t, t_prev, noise_pred)

    def _runge_kutta_step(self, noise_pred, t, sample):
        """One of the four calls of an RK4 step; each moves from the step's start latents."""
        stage = self._calls % 4
        t_start = int(self.timesteps[self._calls - stage])
        # stages 0 and 2 move half a step past the timestep they are called at
        t_end = t - self.step_ratio // 2 if stage % 2 == 0 else t
        if stage == 0:
            self._start_sample = sample
            self._noise_history.append(noise_pred)
        weight = (1 / 6, 1 / 3, 1 / 3, 1 / 6)[stage]
        if stage < 3:
            self._rk_sum = self._rk_sum + weight * noise_pred
        else:  # the RK4 average of the four slopes finishes the step
            noise_pred = self._rk_sum + weight * noise_pred
            self._rk_sum = 0
        return self._transfer(self._start_sample, t_start, t_end, noise_pred)

    def _transfer(self, sample, t, t_prev, noise_pred):
        """PNDM's formula (9): the DDIM move from x_t to x_{t_prev} for a given noise prediction."""
        a_t, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev)
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if self.config.prediction_type == "v_prediction":  # v = sqrt(a) noise - sqrt(1-a) x_0
            noise_pred = np.sqrt(a_t) * noise_pred + np.sqrt(b_t) * sample
        sample_coeff = np.sqrt(a_prev / a_t)
        noise_denom = a_t * np.sqrt(b_prev) + np.sqrt(a_t * b_t * a_prev)
        return sample_coeff * sample - (a_prev - a_t) * noise_pred / noise_denom


def adams_bashforth(history):
    """The noise estimate for the next step from the last 1-4 predictions (oldest first)."""
    e = history
    if len(e) == 1:
        return e[-1]
    if len(e) == 2:
        return (3 * e[-1] - e[-2]) / 2
    if len(e) == 3:
        return (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
    return (1 / 24) * (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4])


class DDIMScheduler(_Scheduler):
    """Denoising diffusion implicit models (DDIM, Song et al. 2021).

    Each denoising step predicts the clean latents x_0, then puts them back at the previous
    timestep's noise level along the predicted noise (formula 12 of the paper):

        x_prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev - sigma^2) noise_pred + sigma z.

    eta scales sigma: 0 is deterministic DDIM, 1 is DDPM-like ancestral sampling.
    """

    config_class = DDIMConfig
    prediction_types = ("epsilon", "v_prediction", "sample")
    unsupported: ClassVar[dict] = {"thresholding": False}  # dynamic thresholding is for pixel-space models

    def set_timesteps(self, num_inference_steps):
        self.timesteps = self._spaced_timesteps(num_inference_steps)

    def needs_noise(self, timestep, eta=0.0):
        return eta > 0

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        """One denoising step: latents at `timestep` -> latents T//N timesteps earlier.

        eta > 0 needs `noise`: a standard normal array shaped like `sample`, on its backend.
        """
        self._check_ready()
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if eta > 0:
            require_noise(noise, f"DDIM with eta={eta} adds fresh noise every step")
        t = int(timestep)
        a_t, a_prev = self._alpha_bar(t), self._alpha_bar(t - self.step_ratio)
        b_t = 1 - a_t
        x0, noise_pred = predict_x0_and_noise(self.config.prediction_type, model_output, sample, a_t)
        x0 = clip_x0(x0, self.config)
        variance = (1 - a_prev) / b_t * (1 - a_t / a_prev)  # formula (16)
        sigma = eta * np.sqrt(variance)
        direction = np.sqrt(1 - a_prev - sigma * sigma) * noise_pred
        prev_sample = np.sqrt(a_prev) * x0 + direction
        if eta > 0:
            prev_sample = prev_sample + sigma * noise
        return prev_sample


class DDPMScheduler(_Scheduler):
    """Denoising diffusion probabilistic models (DDPM, Ho et al. 2020).

    Each step predicts the clean latents x_0, then samples the forward process's posterior
    q(x_prev | x_t, x_0), formulas (6) and (7) of the paper, where x_prev is at the next entry
    t' of `timesteps` (or is the clean end after the last one), a = alpha_bar_t, a' = alpha_bar_t':

        x_prev = sqrt(a') beta / (1 - a) x_0 + sqrt(alpha) (1 - a') / (1 - a) x_t + sigma z,
        alpha = a / a',  beta = 1 - alpha,  sigma^2 = (1 - a') / (1 - a) beta  ("fixed_small").

    Fresh noise z at every step, except at t = 0.
    """

    config_class = DDPMConfig
    prediction_types = ("epsilon", "v_prediction", "sample")
    unsupported: ClassVar[dict] = {"variance_type": "fixed_small", "thresholding": False}

    def set_timesteps(self, num_inference_steps):
        self._check_steps(num_inference_steps)
        self.timesteps = spaced_timesteps(num_inference_steps, self.config)

    def needs_noise(self, timestep, eta=0.0):
        self._check_no_eta(eta)
        return timestep > 0

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        """One denoising step: latents at `timestep` -> latents at the next entry of `timesteps`.

        At every timestep but 0 it needs `noise`: a standard normal array shaped like `sample`.
        """
        self._check_no_eta(eta)
        self._check_ready()
        t = int(timestep)
        t_prev = self._previous_timestep(t)
        a_t = self._alpha_bar(t)
        a_prev = self._alpha_bar(t_prev) if t_prev >= 0 else np.float32(1.0)
        b_t, b_prev = 1 - a_t, 1 - a_prev
        alpha = a_t / a_prev
        beta = 1 - alpha
        x0, _ = predict_x0_and_noise(self.config.prediction_type, model_output, sample, a_t)
        x0 = clip_x0(x0, self.config)
        x0_coeff = np.sqrt(a_prev) * beta / b_t
        sample_coeff = np.sqrt(alpha) * b_prev / b_t
        mean = x0_coeff * x0 + sample_coeff * sample
        if t == 0:
            return mean
        require_noise(noise, f"DDPM adds fresh noise at timestep {t}")
        variance = np.maximum(b_prev / b_t * beta, np.float32(1e-20))
        return mean + np.sqrt(variance) * noise

    def _previous_timestep(self, t):
        """The entry after t in `timesteps`, or -1 after the last one."""
        (where,) = np.nonzero(self.timesteps == t)
        if len(where) == 0:
            raise ValueError(f"timestep {t} is not one of this scheduler's timesteps: step through .timesteps")
        i = where[0] + 1
        return int(self.timesteps[i]) if i < len(self.timesteps) else -1


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
