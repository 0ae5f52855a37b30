"""What several test modules share and that needs no reference library (tests/reference.py has
the torch-side helpers): the reference extra's check, SD 1.5's own scheduler config, and the
comparisons every parity test makes."""

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_MISSING = "live parity needs the reference extra: pip install -e '.[reference]'"

# SD 1.5's own scheduler/scheduler_config.json, as the model folder ships it
SD15_SCHEDULER = json.loads((FIXTURES / "sd15_scheduler_config.json").read_text())


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
