"""Samplers in sigma space: Euler, Euler ancestral, DPM-Solver++(2M), LMS, Heun; every sampler by name.

Divide x_t = sqrt(a) x_0 + sqrt(1 - a) noise (a = alpha_bar_t) by sqrt(a): the latents become
x = x_0 + sigma noise, with one number per timestep, the noise level sigma_t = sqrt((1 - a) / a).
Removing the noise is then solving the probability-flow ODE of Karras et al. 2022 ("Elucidating
the Design Space of Diffusion-Based Generative Models", eq. 1 and 3 with sigma(t) = t):

    dx/dsigma = (x - D(x; sigma)) / sigma,

where the denoiser D(x; sigma) is the UNet's estimate of x_0. Euler, Heun and LMS are textbook
ODE solvers of that equation, Euler ancestral adds fresh noise at each step, and DPM-Solver++
(Lu et al. 2022) integrates its linear part exactly in log-SNR time.

Each sampler picks N timesteps (spaced as in schedulers.py, or at the noise levels of Karras's
eq. 5 with use_karras_sigmas) and steps from sigma_i to sigma_{i+1}; the last step reaches
sigma = 0, the clean latents. The UNet was trained on x_t, not x: it sees x / sqrt(sigma^2 + 1).
As in diffusers, timesteps may be fractional (float32) and the tables are float32, on the host;
each step touches the latents only with arithmetic operators and float32 scalars (NumPy or CuPy).
"""

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from numpy.polynomial import Polynomial

from .schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    ScheduleConfig,
    _Scheduler,
    clip_x0,
    require_noise,
    spaced_timesteps,
)

f32 = np.float32

# ---------------------------------------------------------------------------------------------
# Configs: each class reads the keys its diffusers namesake has, with that class's defaults.


@dataclass(frozen=True)
class SigmaConfig(ScheduleConfig):
    timestep_spacing: str = "linspace"


@dataclass(frozen=True)
class EulerAncestralConfig(SigmaConfig):
    rescale_betas_zero_snr: bool = False


@dataclass(frozen=True)
class LMSConfig(SigmaConfig):
    use_karras_sigmas: bool = False


@dataclass(frozen=True)
class EulerConfig(LMSConfig):  # and DPM-Solver's
    rescale_betas_zero_snr: bool = False


@dataclass(frozen=True)
class HeunConfig(LMSConfig):
    beta_start: float = 0.00085
    beta_end: float = 0.012
    clip_sample: bool = False
    clip_sample_range: float = 1.0


# the noise-level options of diffusers that minisd leaves out (Karras sigmas are in)
ONLY_KARRAS = {"use_exponential_sigmas": False, "use_beta_sigmas": False}


# ---------------------------------------------------------------------------------------------
# Noise levels.


def karras_sigmas(sigma_min, sigma_max, n, rho=7.0):
    """N noise levels from sigma_max down to sigma_min, eq. (5) of Karras et al. 2022:

        sigma_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

    rho = 7 spends more of the steps at low noise. (N,) float64.
    """
    ramp = np.linspace(0, 1, n)
    max_inv_rho, min_inv_rho = float(sigma_max) ** (1 / rho), float(sigma_min) ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigmas, log_train_sigmas):
    """The fractional timesteps at which the training schedule has these sigmas: (N,) float64.

    Linear interpolation in log sigma between the two training timesteps around each sigma.
    """
    log_sigmas = np.log(np.maximum(sigmas, 1e-10))  # (N,)
    last = len(log_train_sigmas) - 1
    low = np.clip(np.searchsorted(log_train_sigmas, log_sigmas, side="right") - 1, 0, last - 1)  # (N,)
    high = low + 1
    w = (log_train_sigmas[low] - log_sigmas) / (log_train_sigmas[low] - log_train_sigmas[high])
    w = np.clip(w, 0, 1)
    return (1 - w) * low + w * high


def ode_derivative(x, denoised, sigma):
    """dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, Algorithm 1, line 4)."""
    return (x - denoised) / sigma


# ---------------------------------------------------------------------------------------------
# Samplers.


class _SigmaScheduler(_Scheduler):
    """What the sigma samplers share: the sigma tables, the timesteps, the step counter.

    Unlike PNDM and DDIM, which read each step's noise level from the timestep, these samplers
    count their calls: the i-th call steps from sigmas[i] to sigmas[i + 1].
    """

    config_class = SigmaConfig
    unsupported: ClassVar[dict] = ONLY_KARRAS

    def __init__(self, config):
        super().__init__(config)
        if getattr(self.config, "rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = 2.0**-24  # as diffusers: sigma_T would be infinite
        self.train_sigmas = np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)  # (T,) ascending
        self.log_train_sigmas = np.log(self.train_sigmas)
        self.sigmas = None

    def set_timesteps(self, num_inference_steps):
        n = num_inference_steps
        self._check_steps(n)
        timesteps = self._timesteps(n)  # (N,)
        sigmas = np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)  # (N,)
        if getattr(self.config, "use_karras_sigmas", False):  # (Euler a has no such option)
            sigmas = karras_sigmas(*self._karras_range(sigmas), n)
            timesteps = self._timesteps_at(sigmas)
        self.timesteps = timesteps
        self.sigmas = np.append(sigmas, 0).astype(np.float32)  # (N+1,): the last step reaches sigma = 0
        self._index = 0  # where in `timesteps` the next call is

    def _timesteps(self, n):
        """The N timesteps as diffusers' Euler, LMS and Heun space them: float32, and "linspace"
        is not rounded (the UNet sees fractional timesteps)."""
        T = self.config.num_train_timesteps
        if self.config.timestep_spacing == "linspace":
            return np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
        return spaced_timesteps(n, self.config).astype(np.float32)

    def _karras_range(self, sigmas):
        """sigma_min and sigma_max of the Karras levels: the ends of the spaced sigmas."""
        return sigmas[-1], sigmas[0]

    def _timesteps_at(self, sigmas):
        return sigma_to_t(sigmas, self.log_train_sigmas).astype(np.float32)

    def set_begin_index(self, index):
        self._check_ready()
        self._index = index

    @property
    def init_noise_sigma(self):
        """The first latents' standard deviation: sigma_max, or sqrt(sigma_max^2 + 1) with
        "leading" spacing (diffusers' convention)."""
        self._check_ready()
        sigma_max = self.sigmas.max()
        if self.config.timestep_spacing == "leading":
            return np.sqrt(sigma_max * sigma_max + 1)
        return sigma_max

    def scale_model_input(self, sample, timestep):
        """The UNet input x / sqrt(sigma^2 + 1): the latents x_t at the level it was trained on."""
        self._check_ready()
        sigma = self.sigmas[self._index]
        return sample / np.sqrt(sigma * sigma + 1)

    def add_noise(self, original, noise, timestep):
        """Forward diffusion to the level where the loop starts (img2img): x = x_0 + sigma noise."""
        return original + noise * self._start_sigma(timestep)

    def _start_sigma(self, timestep):
        self._check_ready()
        start = self.timesteps[self._index]
        if timestep != start:
            raise ValueError(
                f"add_noise goes to the level where the loop starts, timestep {start} (index {self._index}), "
                f"not {timestep}: call set_begin_index(index of the first timestep) first"
            )
        return self.sigmas[self._index]

    def _advance(self, timestep, eta):
        """The index of this call in `timesteps` (checked against `timestep`); moves to the next."""
        self._check_no_eta(eta)
        self._check_ready()
        i = self._index
        if i >= len(self.timesteps):
            raise ValueError(f"all {len(self.timesteps)} steps are done: call set_timesteps to start again")
        if timestep != self.timesteps[i]:
            raise ValueError(
                f"step {i} is at timestep {self.timesteps[i]}, got {timestep}: call step() once for each "
                "entry of .timesteps, in order (img2img: set_begin_index first)"
            )
        self._index = i + 1
        return i

    def _denoised(self, model_output, sample, sigma):
        """D(x; sigma): the UNet's estimate of the clean latents x_0, from its output at x."""
        if self.config.prediction_type == "epsilon":
            return sample - sigma * model_output
        # v = sqrt(a) noise - sqrt(1-a) x_0 (Salimans & Ho 2022), sqrt(a) = 1 / sqrt(sigma^2 + 1)
        return model_output * (-sigma / np.sqrt(sigma * sigma + 1)) + sample / (sigma * sigma + 1)


class EulerDiscreteScheduler(_SigmaScheduler):
    """Euler's method on the ODE: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i, d_i = dx/dsigma.

    Karras et al. 2022, Algorithm 1 without its second-order correction (that is Heun).
    """

    config_class = EulerConfig
    unsupported: ClassVar[dict] = {
        **ONLY_KARRAS,
        "interpolation_type": "linear",
        "sigma_min": None,
        "sigma_max": None,
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
    }

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        i = self._advance(timestep, eta)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        d = ode_derivative(sample, self._denoised(model_output, sample, sigma), sigma)
        return sample + d * (sigma_next - sigma)


class EulerAncestralDiscreteScheduler(_SigmaScheduler):
    """Euler ancestral ("Euler a"): an Euler step down to sigma_down, then fresh noise back up to
    sigma_{i+1}.

    The variance sigma_{i+1}^2 splits into what the ODE step keeps and what new noise brings
    (k-diffusion's ancestral step, eta = 1):

        sigma_up^2 = sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2,
        sigma_down^2 = sigma_{i+1}^2 - sigma_up^2,
        x_{i+1} = x_i + (sigma_down - sigma_i) d_i + sigma_up z.
    """

    config_class = EulerAncestralConfig
    unsupported: ClassVar[dict] = {}  # diffusers' Euler a has no other noise levels to choose

    def needs_noise(self, timestep, eta=0.0):
        self._check_no_eta(eta)
        return True

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        """Needs `noise` at every step: a standard normal array shaped like `sample`."""
        i = self._advance(timestep, eta)
        require_noise(noise, "Euler a adds fresh noise every step")
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sigma_up = np.sqrt(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma))
        sigma_down = np.sqrt(sigma_next * sigma_next - sigma_up * sigma_up)
        d = ode_derivative(sample, self._denoised(model_output, sample, sigma), sigma)
        return sample + d * (sigma_down - sigma) + noise * sigma_up


class LMSDiscreteScheduler(_SigmaScheduler):
    """Linear multistep: integrate the polynomial through the last (up to 4) derivatives.

    With d_{i-j} the derivatives at sigma_{i-j}, newest first, and L_j their Lagrange basis:

        x_{i+1} = x_i + sum_j c_j d_{i-j},   c_j = integral of L_j(s) ds from sigma_i to sigma_{i+1},
        L_j(s) = prod_{k != j} (s - sigma_{i-k}) / (sigma_{i-j} - sigma_{i-k}).

    The order grows with the derivatives at hand (1, 2, 3, 4), also when img2img starts in the
    middle of the schedule (there diffusers takes the order from the step's index: a bug).
    """

    config_class = LMSConfig
    unsupported: ClassVar[dict] = {**ONLY_KARRAS, "rescale_betas_zero_snr": False}
    max_order = 4  # diffusers' step(order=4)

    def set_timesteps(self, num_inference_steps):
        super().set_timesteps(num_inference_steps)
        self._derivatives = []  # newest first

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        i = self._advance(timestep, eta)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        d = ode_derivative(sample, self._denoised(model_output, sample, sigma), sigma)
        self._derivatives = [d, *self._derivatives[: self.max_order - 1]]
        nodes = self.sigmas[i + 1 - len(self._derivatives) : i + 1][::-1]  # sigma_i, sigma_{i-1}, ...
        coefficients = lms_coefficients(nodes, sigma_next)
        return sample + sum(f32(c) * d_j for c, d_j in zip(coefficients, self._derivatives, strict=True))


def lms_coefficients(nodes, sigma_next):
    """c_j for nodes (sigma_i, sigma_{i-1}, ...): each L_j is a polynomial of degree len(nodes) - 1,
    integrated exactly (diffusers integrates numerically with scipy.integrate.quad).

    In the variable s - sigma_i the integral runs from 0 to sigma_{i+1} - sigma_i.
    """
    nodes = np.asarray(nodes, np.float64)
    shifted = nodes - nodes[0]
    coefficients = []
    for j, node in enumerate(shifted):
        basis = Polynomial([1.0])  # L_j(s - sigma_i)
        for other in np.delete(shifted, j):
            basis = basis * Polynomial([-other, 1.0]) / (node - other)
        coefficients.append(basis.integ()(float(sigma_next) - nodes[0]))
    return coefficients


class HeunDiscreteScheduler(_SigmaScheduler):
    """Heun's method (Karras et al. 2022, Algorithm 1): an Euler step to sigma_{i+1}, then a
    second UNet call there corrects it with the average of the two slopes:

        x' = x_i + (sigma_{i+1} - sigma_i) d_i,   d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1},
        x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d') / 2.

    So every timestep but the first appears twice in `timesteps` (2N - 1 UNet calls); the last
    step, to sigma = 0, stays a plain Euler step.
    """

    config_class = HeunConfig
    unsupported: ClassVar[dict] = {**ONLY_KARRAS, "rescale_betas_zero_snr": False}
    order = 2  # UNet calls per step

    def set_timesteps(self, num_inference_steps):
        super().set_timesteps(num_inference_steps)
        t, s = self.timesteps, self.sigmas
        self.timesteps = np.concatenate([t[:1], t[1:].repeat(2)])  # (2N-1,)
        self.sigmas = np.concatenate([s[:1], s[1:-1].repeat(2), s[-1:]])  # (2N,): call k goes to sigmas[k+1]
        self._euler_step = None  # (x_i, d_i, sigma_{i+1} - sigma_i) between the two calls

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        i = self._advance(timestep, eta)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        d = ode_derivative(sample, clip_x0(self._denoised(model_output, sample, sigma), self.config), sigma)
        if self._euler_step is None:  # first call: the Euler step
            self._euler_step = (sample, d, sigma_next - sigma)
            return sample + d * (sigma_next - sigma)
        x, d_first, dt = self._euler_step  # second call, at sigma_{i+1}
        self._euler_step = None
        return x + (d_first + d) / 2 * dt


class DPMSolverMultistepScheduler(_SigmaScheduler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), the SD defaults.

    It works on the latents x_t = alpha x_0 + s noise themselves, with alpha = 1 / sqrt(sigma^2 + 1)
    and s = sigma alpha, and in the half log-SNR lambda = log(alpha / s), where the linear part of
    the ODE integrates exactly. With h = lambda_{i+1} - lambda_i and x0_i the data prediction:

        x_{i+1} = (s_{i+1} / s_i) x_i - alpha_{i+1} (e^{-h} - 1) D,
        D = x0_i + (x0_i - x0_{i-1}) / (2 r),   r = (lambda_i - lambda_{i-1}) / h,

    a second-order multistep; the first step and the last (to sigma = 0, which lands on x0_i)
    use D = x0_i, i.e. DDIM.
    """

    config_class = EulerConfig
    unsupported: ClassVar[dict] = {
        **ONLY_KARRAS,
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "thresholding": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "use_dynamic_shifting": False,
    }
    init_noise_sigma = 1.0  # x_T is plain N(0, 1) noise

    def set_timesteps(self, num_inference_steps):
        super().set_timesteps(num_inference_steps)
        self._x0_previous = None

    def _timesteps(self, n):
        """N of N+1 spaced timesteps (int64): the (N+1)-th would be the clean end that the last
        step reaches. "trailing" spaces N, as diffusers does."""
        if self.config.timestep_spacing == "trailing":
            return spaced_timesteps(n, self.config)
        return spaced_timesteps(n + 1, self.config)[:-1]

    def _karras_range(self, sigmas):
        """sigma_min and sigma_max of the Karras levels: the ends of the whole training table."""
        return self.train_sigmas[0], self.train_sigmas[-1]

    def _timesteps_at(self, sigmas):
        """Rounded to whole timesteps, except (as diffusers) under the cosine schedule, where the
        cast to int64 truncates."""
        t = sigma_to_t(sigmas, self.log_train_sigmas)
        return (t if self.config.beta_schedule == "squaredcos_cap_v2" else t.round()).astype(np.int64)

    def scale_model_input(self, sample, timestep):
        """The UNet input: the latents themselves (DPM-Solver does not rescale them)."""
        return sample

    def add_noise(self, original, noise, timestep):
        """Forward diffusion to the level where the loop starts (img2img): alpha x_0 + s noise."""
        alpha, s = alpha_and_sigma(self._start_sigma(timestep))
        return alpha * original + s * noise

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        i = self._advance(timestep, eta)
        alpha_i, s_i = alpha_and_sigma(self.sigmas[i])
        if self.config.prediction_type == "epsilon":
            x0 = (sample - s_i * model_output) / alpha_i
        else:  # v_prediction: v = alpha noise - s x_0
            x0 = alpha_i * sample - s_i * model_output
        x0_previous, self._x0_previous = self._x0_previous, x0
        if self.sigmas[i + 1] == 0:  # lambda = infinity: the last step lands on x0
            return x0
        alpha_next, s_next = alpha_and_sigma(self.sigmas[i + 1])
        lambda_i = half_log_snr(alpha_i, s_i)
        h = half_log_snr(alpha_next, s_next) - lambda_i
        c = alpha_next * (f32(math.exp(-h)) - 1)
        x_next = s_next / s_i * sample - c * x0
        if x0_previous is None:  # the first step: DPM-Solver++ 1
            return x_next
        r = (lambda_i - half_log_snr(*alpha_and_sigma(self.sigmas[i - 1]))) / h
        return x_next - 0.5 * c * (1 / r * (x0 - x0_previous))


class DPMSolverKarrasScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(2M) on Karras sigmas ("DPM++ 2M Karras"), whatever use_karras_sigmas says."""

    def __init__(self, config):
        super().__init__(config)
        self.config = replace(self.config, use_karras_sigmas=True)


def alpha_and_sigma(sigma):
    """(alpha, s) with x_t = alpha x_0 + s noise at noise level sigma: 1 / sqrt(sigma^2 + 1), sigma alpha."""
    alpha = 1 / np.sqrt(sigma * sigma + 1)
    return alpha, sigma * alpha


def half_log_snr(alpha, s):
    """lambda = log(alpha / s) as log alpha - log s, in float32 as diffusers computes it."""
    return f32(math.log(alpha)) - f32(math.log(s))


# ---------------------------------------------------------------------------------------------
# Every sampler by name (the API's and the command line's `scheduler`).

SCHEDULERS = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,  # Karras sigmas if the config asks (use_karras_sigmas)
    "dpmpp_2m_karras": DPMSolverKarrasScheduler,
    "lms": LMSDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
}


def make_scheduler(name, config):
    """Build scheduler `name` (a key of SCHEDULERS) from a scheduler_config.json dict.

    name=None builds the class the config names in `_class_name`.
    """
    if name is None:
        by_class = {cls.__name__: key for key, cls in SCHEDULERS.items()}
        class_name = config.get("_class_name")
        if class_name not in by_class:
            raise ValueError(
                f"the scheduler config names {class_name!r}, which minisd does not implement: "
                f"choose a scheduler name, one of {', '.join(SCHEDULERS)}"
            )
        name = by_class[class_name]
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](config)
