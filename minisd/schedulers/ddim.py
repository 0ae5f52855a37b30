"""DDIM: predict the clean latents, then put them back one step less noisy."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .schedule import ScheduleConfig, Scheduler, clip_x0, predict_x0_and_noise, require_noise


@dataclass(frozen=True)
class DDIMConfig(ScheduleConfig):
    set_alpha_to_one: bool = True
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False


class DDIMScheduler(Scheduler):
    """Denoising diffusion implicit models (DDIM, Song et al. 2021).

    Each denoising step predicts the clean latents x_0, then puts them back at the previous
    timestep's noise level along the predicted noise (formula 12 of the paper):

        x_prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev - std^2) noise_pred + std z.

    std is the paper's sigma_t, the spread of the fresh noise z (not the noise level sigma of the
    sigma-space samplers): eta scales it, 0 is deterministic DDIM, 1 is DDPM-like ancestral sampling.
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
        std = eta * np.sqrt(variance)  # the paper's sigma_t: how much fresh noise this step adds
        direction = np.sqrt(1 - a_prev - std * std) * noise_pred
        prev_sample = np.sqrt(a_prev) * x0 + direction
        if eta > 0:
            prev_sample = prev_sample + std * noise
        return prev_sample
