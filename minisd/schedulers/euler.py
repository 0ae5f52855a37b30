"""Euler, Euler ancestral and Heun: one-step solvers of the sigma-space ODE (sigmas.py)."""

from typing import ClassVar

import numpy as np

from .schedule import clip_x0, require_noise
from .sigmas import ONLY_KARRAS, EulerAncestralConfig, EulerConfig, HeunConfig, SigmaScheduler, ode_derivative


class EulerDiscreteScheduler(SigmaScheduler):
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


class EulerAncestralDiscreteScheduler(SigmaScheduler):
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


class HeunDiscreteScheduler(SigmaScheduler):
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
