"""minisd.rng against PyTorch's CPU generator: the same bits, so seed s means diffusers' seed s.

Fast tier: the Mersenne Twister against the value the C++ standard publishes. Live tier
(reference extra): torch.randn with torch.Generator("cpu").manual_seed(s), every bit of every
value, for both of torch's paths (16 or more values, fewer), tails that are not a multiple of
16, and successive draws from one generator.
"""

import numpy as np
import pytest

from minisd.rng import TorchGenerator, cephes_log, cephes_sincos, fma


def test_mersenne_twister_matches_the_standard():
    """C++11 [rand.predef]: the 10000th output of mt19937 seeded with 5489 is 4123659995."""
    assert TorchGenerator(5489).bits.random_raw(10_000)[-1] == 4123659995


@pytest.mark.reference
@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 + 7, 2**32 + 5, 2**64 - 1])
def test_randn_bit_identical_to_torch(seed):
    import torch

    theirs, ours = torch.Generator("cpu").manual_seed(seed), TorchGenerator(seed)
    # SD latents at 512x512 and 64x64, odd sizes (tails redrawn), and the small path (< 16 values)
    for shape in [
        (1, 4, 64, 64),
        (2, 4, 96, 96),
        (1, 4, 8, 8),
        (2, 4, 6, 10),
        (17,),
        (33, 3),
        (5,),
        (1,),
        (16,),
        (3, 1),
    ]:
        expected = torch.randn(shape, generator=theirs).numpy()
        drawn = ours.standard_normal(shape)
        assert drawn.shape == expected.shape and drawn.dtype == np.float32
        np.testing.assert_array_equal(drawn.view(np.int32), expected.view(np.int32), err_msg=f"{seed} {shape}")


def test_cephes_functions_are_accurate():
    """The float32 log, sin and cos that repeat torch's kernel stay within 2 ulp of float64 math."""
    x = np.random.default_rng(0).uniform(2.0**-24, 1, 100_000).astype(np.float32)
    theta = (np.float32(2 * np.pi) * x).astype(np.float32)
    sin, cos = cephes_sincos(theta)
    for ours, exact in [
        (cephes_log(x), np.log(x.astype(np.float64))),
        (sin, np.sin(theta.astype(np.float64))),
        (cos, np.cos(theta.astype(np.float64))),
    ]:
        assert np.all(np.abs(ours - exact) <= 2 * np.spacing(np.abs(exact).astype(np.float32)) + 1e-12)


def test_fma_rounds_once():
    """fma(a, b, c) is a*b + c rounded once: (1 + 2^-12)^2 - 1 keeps its 2^-24 term."""
    one_plus = np.float32(1 + 2.0**-12)
    exact = 2.0**-11 + 2.0**-24  # (1 + 2^-12)^2 - 1, which float32 holds exactly
    assert fma(one_plus, one_plus, np.float32(-1)) == np.float32(exact)
    assert one_plus * one_plus - np.float32(1) != np.float32(exact)  # two roundings lose it


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "7"])
def test_bad_seed_is_refused(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        TorchGenerator(seed)
