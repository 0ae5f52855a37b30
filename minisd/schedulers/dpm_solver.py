"""DPM-Solver++(2M): a second-order multistep solver in log-SNR time, and its Karras variant."""

import math
from dataclasses import replace
from typing import ClassVar

import numpy as np

from .schedule import spaced_timesteps
from .sigmas import ONLY_KARRAS, EulerConfig, SigmaScheduler, sigma_to_t


class DPMSolverMultistepScheduler(SigmaScheduler):
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
        c = alpha_next * (np.float32(math.exp(-h)) - 1)
        x_next = s_next / s_i * sample - c * x0
        if x0_previous is None:  # the first step: DPM-Solver++ 1
            return x_next
        r = (lambda_i - half_log_snr(*alpha_and_sigma(self.sigmas[i - 1]))) / h
        return x_next - 0.5 * c * (1 / r * (x0 - x0_previous))


class DPMSolverKarrasScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(2M) on Karras sigmas ("DPM++ 2M Karras"), whatever use_karras_sigmas says."""

    def __init__(self, config, source="scheduler config"):
        super().__init__(config, source)
        self.config = replace(self.config, use_karras_sigmas=True)


def alpha_and_sigma(sigma):
    """(alpha, s) with x_t = alpha x_0 + s noise at noise level sigma: 1 / sqrt(sigma^2 + 1), sigma alpha."""
    alpha = 1 / np.sqrt(sigma * sigma + 1)
    return alpha, sigma * alpha


def half_log_snr(alpha, s):
    """lambda = log(alpha / s) as log alpha - log s, in float32 as diffusers computes it."""
    return np.float32(math.log(alpha)) - np.float32(math.log(s))
