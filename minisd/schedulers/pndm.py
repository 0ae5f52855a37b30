"""PNDM (PLMS): the SD 1.x default, a linear multistep on DDIM's move."""

import itertools
from dataclasses import dataclass

import numpy as np

from .schedule import ScheduleConfig, Scheduler


@dataclass(frozen=True)
class PNDMConfig(ScheduleConfig):
    set_alpha_to_one: bool = False
    skip_prk_steps: bool = False


class PNDMScheduler(Scheduler):
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
