"""What several test modules share and that needs no reference library (tests/reference.py has
the torch-side helpers): the reference extra's check, SD 1.5's own scheduler config, and the
comparisons every parity test makes."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
TINY_SD = FIXTURES / "tiny-sd"  # the committed tiny random model (fixtures/make_models.py)
REFERENCE_MISSING = "live parity needs the reference extra: pip install -e '.[reference]'"

# SD 1.5's own scheduler/scheduler_config.json, as the model folder ships it
SD15_SCHEDULER = json.loads((FIXTURES / "sd15_scheduler_config.json").read_text())

# minisd's scheduler names -> the diffusers class each stands for (dpmpp_2m_karras: with Karras sigmas)
DIFFUSERS_SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lcm": "LCMScheduler",
}


def require_reference():
    """Import torch, diffusers and transformers, or skip the test saying how to install them."""
    for name in ("torch", "diffusers", "transformers"):
        pytest.importorskip(name, reason=REFERENCE_MISSING)


def relative_error(actual, expected):
    """‖actual − expected‖ / ‖expected‖ (relative L2), in float64."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def assert_close(got, want):
    """Equal to float32 rounding: relative L2 and elementwise relative error <= 1e-6.

    Not bit for bit: torch's float32 sqrt on the CPU is one ulp off in about a fifth of cases.
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def max_pixel_difference(ours, theirs):
    """The largest difference of two pictures, in levels of 255."""
    return int(np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max())


def init_image(width, height):
    """A smooth colourful test picture (gradients and a disc), not noise."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    disc = ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.08).astype(float)
    pixels = np.stack([x, y, 0.5 + 0.5 * disc - 0.3 * x], axis=-1)
    return Image.fromarray((pixels.clip(0, 1) * 255).astype(np.uint8))
