"""LCM: latent consistency models, a picture in 2 to 8 steps."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..module import Rules
from .schedule import ScheduleConfig, Scheduler, clip_x0, predict_x0_and_noise, require_noise


@dataclass(frozen=True)
class LCMConfig(ScheduleConfig):
    beta_start: float = 0.00085  # LCMScheduler's own defaults: SD's schedule
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50  # the distillation's schedule, which inference samples
    timestep_scaling: float = 10.0
    set_alpha_to_one: bool = True
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False

    def check(self, source):
        super().check(source)
        steps, must = self.original_inference_steps, Rules(source, self)
        must("original_inference_steps", 1 <= steps <= self.num_train_timesteps, "in 1..num_train_timesteps")
        must("timestep_scaling", self.timestep_scaling > 0, "> 0")


class LCMScheduler(Scheduler):
    """Latent consistency models (Luo et al. 2023): a UNet distilled to map any noisy latents
    straight to the clean ones, f(x_t, t) ≈ x_0, sampled by jumping to x_0 and noising back.

    At each step the consistency function, with boundary conditions that make f(x, 0) = x,

        x̂_0 = c_out(t) · x0(ε) + c_skip(t) · x_t,   c_skip = σ_d² / (τ² + σ_d²),
        c_out = τ / sqrt(τ² + σ_d²),   τ = 10 t,  σ_d = 0.5,

    then, except after the last step, fresh noise puts x̂_0 at the next timestep's level:
    x_prev = sqrt(a') x̂_0 + sqrt(1 - a') z. The timesteps are N of the distillation's
    `original_inference_steps` (50: 999, 979, ..., 19), evenly picked.
    """

    config_class = LCMConfig
    prediction_types = ("epsilon", "v_prediction", "sample")
    unsupported: ClassVar[dict] = {"thresholding": False}
    sigma_data = 0.5

    def set_timesteps(self, num_inference_steps):
        self._check_steps(num_inference_steps)
        original = self.config.original_inference_steps
        if num_inference_steps > original:
            raise ValueError(
                f"LCM takes at most original_inference_steps={original} steps (its distillation's schedule), "
                f"got {num_inference_steps}"
            )
        k = self.config.num_train_timesteps // original
        distilled = (np.arange(1, original + 1) * k - 1)[::-1]  # 999, 979, ..., 19 for 50
        picked = np.floor(np.linspace(0, len(distilled), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.timesteps = distilled[picked].astype(np.int64)

    def needs_noise(self, timestep, eta=0.0):
        self._check_no_eta(eta)
        self._check_ready()
        return timestep != self.timesteps[-1]

    def step(self, model_output, timestep, sample, eta=0.0, noise=None):
        """One step: latents at `timestep` -> x̂_0 noised to the next timestep (x̂_0 after the last).

        Needs `noise` except at the last step: a standard normal array shaped like `sample`."""
        self._check_no_eta(eta)
        self._check_ready()
        t = int(timestep)
        t_prev = self._previous_timestep(t)
        c_skip, c_out = self.boundary_scalings(t)
        x0, _ = predict_x0_and_noise(self.config.prediction_type, model_output, sample, self._alpha_bar(t))
        denoised = c_out * clip_x0(x0, self.config) + c_skip * sample
        if t_prev < 0:  # after the last step: x̂_0 itself
            return denoised
        require_noise(noise, "LCM noises x̂_0 back to the next timestep")
        a_prev = self._alpha_bar(t_prev)
        return np.sqrt(a_prev) * denoised + np.sqrt(1 - a_prev) * noise

    def boundary_scalings(self, t):
        """(c_skip, c_out) at timestep t, float32: c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x."""
        tau = np.float32(t * self.config.timestep_scaling)
        sigma_data = np.float32(self.sigma_data)
        c_skip = sigma_data * sigma_data / (tau * tau + sigma_data * sigma_data)
        c_out = tau / np.sqrt(tau * tau + sigma_data * sigma_data)
        return c_skip, c_out
