"""DDPM: sample the forward process's posterior, fresh noise at every step."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .schedule import ScheduleConfig, Scheduler, clip_x0, predict_x0_and_noise, require_noise, spaced_timesteps


@dataclass(frozen=True)
class DDPMConfig(ScheduleConfig):
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False


class DDPMScheduler(Scheduler):
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
