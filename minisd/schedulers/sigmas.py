"""Samplers in sigma space (Euler, Euler a, Heun, LMS, DPM-Solver++): the noise levels they share.

Divide x_t = sqrt(a) x_0 + sqrt(1 - a) noise (a = alpha_bar_t) by sqrt(a): the latents become
x = x_0 + sigma noise, with one number per timestep, the noise level sigma_t = sqrt((1 - a) / a).
Removing the noise is then solving the probability-flow ODE of Karras et al. 2022 ("Elucidating
the Design Space of Diffusion-Based Generative Models", eq. 1 and 3 with sigma(t) = t):

    dx/dsigma = (x - D(x; sigma)) / sigma,

where the denoiser D(x; sigma) is the UNet's estimate of x_0. Euler, Heun and LMS are textbook
ODE solvers of that equation, Euler ancestral adds fresh noise at each step, and DPM-Solver++
(Lu et al. 2022) integrates its linear part exactly in log-SNR time.

Each sampler picks N timesteps (spaced as in schedule.py, or at the noise levels of Karras's
eq. 5 with use_karras_sigmas) and steps from sigma_i to sigma_{i+1}; the last step reaches
sigma = 0, the clean latents. The UNet was trained on x_t, not x: it sees x / sqrt(sigma^2 + 1).
As in diffusers, timesteps may be fractional (float32) and the tables are float32, on the host;
each step touches the latents only with arithmetic operators and float32 scalars (NumPy or CuPy).
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .schedule import ScheduleConfig, Scheduler, spaced_timesteps


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


class SigmaScheduler(Scheduler):
    """What the sigma samplers share: the sigma tables, the timesteps, the step counter.

    Unlike PNDM and DDIM, which read each step's noise level from the timestep, these samplers
    count their calls: the i-th call steps from sigmas[i] to sigmas[i + 1].
    """

    config_class = SigmaConfig
    unsupported: ClassVar[dict] = ONLY_KARRAS

    def __init__(self, config, source="scheduler config"):
        super().__init__(config, source)
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
