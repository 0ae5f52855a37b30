"""Checks of our CUDA kernels, run through minisd.cuda's own launch code on either kind of array:
CuPy arrays on a GPU (tests/test_gpu.py) or NumPy arrays in the CPU emulator
(tests/test_kernels_emulated.py). References are computed independently: attention in float64,
GroupNorm and GEGLU by nn.py's NumPy code in float32. Outputs are poisoned with NaN first, so
an element the kernel does not write fails the check.
"""

import functools

import numpy as np

from helpers import relative_error
from minisd import cuda, nn


def reference_attention(q, k, v, heads, mask):
    """softmax(Q Kᵀ/√d + mask) V in float64 on the CPU."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, q_len, width = q.shape
    d = width // heads

    def split(x):
        return x.reshape(batch, x.shape[1], heads, d).transpose(0, 2, 1, 3)

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    if mask is not None:
        scores = scores + mask
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    out = (scores / scores.sum(-1, keepdims=True)) @ split(v)
    return out.transpose(0, 2, 1, 3).reshape(batch, q_len, width)


def random_mask(rng, q_len, k_len):
    """Additive mask: -inf at random places, but every query keeps at least its first key."""
    mask = np.where(rng.random((q_len, k_len)) < 0.3, -np.inf, 0).astype(np.float32)
    mask[:, 0] = 0
    return mask


def to_host(xp, x):
    return xp.asnumpy(x) if hasattr(xp, "asnumpy") else x


@functools.cache
def attention_case(dtype, head_dim, lengths, masked, heads, batch):
    """Fresh random (q, k, v, mask) of (batch, tokens, heads·head_dim) and their float64 result,
    made once per case (the 4096-token reference is slow) and shared by the kernels tested on it."""
    q_len, k_len = lengths
    rng = np.random.default_rng(head_dim * 7 + q_len)
    q = rng.standard_normal((batch, q_len, heads * head_dim)).astype(dtype)
    k, v = (rng.standard_normal((batch, k_len, heads * head_dim)).astype(dtype) for _ in range(2))
    mask = random_mask(rng, q_len, k_len) if masked else None
    return q, k, v, mask, reference_attention(q, k, v, heads, mask)


def check_attention(xp, dtype, tolerance, head_dim, lengths, masked, tensor_cores=None, heads=2, batch=2):
    """cuda.attention (the kernel `tensor_cores` picks) against float64."""
    q, k, v, mask, reference = attention_case(dtype, head_dim, lengths, masked, heads, batch)
    out = xp.full(q.shape, np.nan, dtype=dtype)
    xq, xk, xv = (xp.asarray(x) for x in (q, k, v))
    assert cuda.attention_supported(xq, xk, heads)
    cuda.attention(xq, xk, xv, heads, None if mask is None else xp.asarray(mask), out=out, tensor_cores=tensor_cores)
    result = to_host(xp, out).astype(np.float64)
    assert np.isfinite(result).all()
    assert relative_error(result, reference) <= tolerance
    np.testing.assert_allclose(result, reference, atol=20 * tolerance)


def check_fused(xp, dtype, tolerance, channels, pixels, tokens):
    """kernels/fused.cu's GroupNorm on (2, channels, pixels, pixels) in 32 groups, and LayerNorm,
    GEGLU, SiLU and quick GELU on (2, tokens, 2·channels), against nn.py's NumPy code in float32."""
    rng = np.random.default_rng(11)
    x = 3 * rng.standard_normal((2, channels, pixels, pixels), dtype=np.float32) + 1
    weight = 1 + 0.1 * rng.standard_normal(channels, dtype=np.float32)
    bias = rng.standard_normal(channels, dtype=np.float32)
    out = xp.full(x.shape, np.nan, dtype=dtype)
    cuda.group_norm(xp.asarray(x, dtype), 32, xp.asarray(weight), xp.asarray(bias), 1e-5, out=out)
    check_close(xp, out, nn.group_norm(x, 32, weight, bias, 1e-5), tolerance)
    tokens = 3 * rng.standard_normal((2, tokens, 2 * channels), dtype=np.float32) + 1
    weight = 1 + 0.1 * rng.standard_normal(2 * channels, dtype=np.float32)
    bias = rng.standard_normal(2 * channels, dtype=np.float32)
    result = cuda.layer_norm(xp.asarray(tokens, dtype), xp.asarray(weight), xp.asarray(bias), 1e-5)
    check_close(xp, result, nn.layer_norm(tokens, weight, bias, 1e-5), tolerance)
    out = xp.full((*tokens.shape[:-1], channels), np.nan, dtype=dtype)
    cuda.geglu(xp.asarray(tokens, dtype), out=out)
    check_close(xp, out, nn.geglu(tokens), tolerance)
    for alpha, reference in [(1.0, nn.silu(tokens)), (nn.QUICK_GELU_ALPHA, nn.quick_gelu(tokens))]:
        out = xp.full(tokens.shape, np.nan, dtype=dtype)
        cuda.silu(xp.asarray(tokens, dtype), alpha, out=out)
        check_close(xp, out, reference, tolerance)
        in_place = xp.array(tokens, dtype)  # a copy, also on NumPy
        assert cuda.silu(in_place, alpha, out=in_place) is in_place
        check_close(xp, in_place, reference, tolerance)


def check_close(xp, result, reference, tolerance):
    """Every element written and finite, within `tolerance` relative L2 of the reference."""
    result = to_host(xp, result)
    assert np.isfinite(result).all()
    assert relative_error(result, reference) <= tolerance


def check_im2col(xp, dtype, shape, kernel_size, stride, padding):
    """kernels/im2col.cu against nn.py's NumPy im2col of the zero-padded input (exact: a copy)."""
    x = np.random.default_rng(12).standard_normal(shape).astype(dtype)
    out_h, out_w = ((n + 2 * padding - kernel_size) // stride + 1 for n in shape[2:])
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    columns = nn.im2col(padded, kernel_size, kernel_size, stride, out_h, out_w)  # (B, C·kh·kw, H'·W')
    reference = columns.transpose(1, 0, 2).reshape(columns.shape[1], -1)  # the kernel's (C·kh·kw, B·H'·W')
    result = to_host(xp, cuda.im2col(xp.asarray(x), kernel_size, kernel_size, stride, padding, out_h, out_w))
    np.testing.assert_array_equal(result, reference)
