"""LMS: the linear multistep solver of the sigma-space ODE (sigmas.py)."""

from typing import ClassVar

import numpy as np
from numpy.polynomial import Polynomial

from .sigmas import ONLY_KARRAS, LMSConfig, SigmaScheduler, ode_derivative


class LMSDiscreteScheduler(SigmaScheduler):
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
        return sample + sum(np.float32(c) * d_j for c, d_j in zip(coefficients, self._derivatives, strict=True))


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
