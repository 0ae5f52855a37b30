"""Our own CUDA kernels (kernels/*.cu), loaded through CuPy for the GPU backend.

Only hot spots that earn it get a kernel; each computes exactly what the NumPy function of the
same name in nn.py computes (that code stays the readable reference, and the tests compare
the two). The .cu sources ship inside the package as `minisd.kernels`.
"""

import functools
import math

import numpy

from .resources import shipped_folder

ATTENTION_HEAD_DIMS = (40, 64, 80, 160)
ATTENTION_WARPS = 4  # queries per thread block, as WARPS in kernels/attention.cu
FUSED_THREADS = 256  # threads per block, as THREADS in kernels/fused.cu
DTYPE_NAMES = {numpy.dtype("float32"): "f32", numpy.dtype("float16"): "f16"}


def kernel_source(name):
    """The text of kernels/<name>.cu, after the helpers all kernels share (kernels/common.cuh)."""
    folder = shipped_folder("minisd.kernels", "kernels")
    return (folder / "common.cuh").read_text() + (folder / f"{name}.cu").read_text()


@functools.cache
def _module(name):
    import cupy

    return cupy.RawModule(code=kernel_source(name), options=("-std=c++17",))


def attention_supported(q, k, heads):
    """Whether kernels/attention.cu covers these inputs (else nn.attention runs plain CuPy)."""
    head_dim = q.shape[-1] // heads
    return head_dim in ATTENTION_HEAD_DIMS and q.dtype in DTYPE_NAMES and k.dtype == q.dtype


def attention(q, k, v, heads, mask=None, out=None):
    """softmax(Q Kᵀ / √d + mask) V for q (B, Tq, heads·d), k and v (B, Tk, heads·d), fused.

    `out` (optional, like q) receives the result; the kernel writes every element of it.
    """
    import cupy

    batch, q_len, width = q.shape
    head_dim = width // heads
    q, k, v = (cupy.ascontiguousarray(x) for x in (q, k, v))
    out = cupy.empty_like(q) if out is None else out  # (B, Tq, heads·d)
    has_mask = mask is not None
    if has_mask:
        mask = cupy.ascontiguousarray(cupy.broadcast_to(mask, (q_len, k.shape[1])), dtype=cupy.float32)
    else:
        mask = cupy.zeros(1, dtype=cupy.float32)  # not read
    kernel = _module("attention").get_function(f"attention_{DTYPE_NAMES[q.dtype]}_d{head_dim}")
    grid = ((q_len + ATTENTION_WARPS - 1) // ATTENTION_WARPS, batch * heads)
    kernel(grid, (ATTENTION_WARPS * 32,),
           (q, k, v, mask, numpy.int32(has_mask), out, numpy.int32(heads), numpy.int32(q_len),
            numpy.int32(k.shape[1]), numpy.float32(1 / math.sqrt(head_dim))))  # fmt: skip
    return out


def fused_supported(x):
    """Whether kernels/fused.cu covers x (a CuPy array of float32 or float16)."""
    return x.dtype in DTYPE_NAMES


def group_norm(x, num_groups, weight, bias, eps, out=None):
    """nn.group_norm for x (B, C, ...), in one kernel; `out` (optional, like x) receives it."""
    import cupy

    batch, channels = x.shape[:2]
    x = cupy.ascontiguousarray(x)
    out = cupy.empty_like(x) if out is None else out
    kernel = _module("fused").get_function(f"group_norm_{DTYPE_NAMES[x.dtype]}")
    gamma, beta = (cupy.ascontiguousarray(p, dtype=cupy.float32) for p in (weight, bias))
    kernel((batch * num_groups,), (FUSED_THREADS,),
           (x, gamma, beta, out, numpy.int32(channels), numpy.int32(num_groups), numpy.int32(x[0, 0].size),
            numpy.float32(eps)))  # fmt: skip
    return out


def geglu(projected, out=None):
    """hidden · GELU(gate) for the two halves of projected's last axis: (..., 2·inner) -> (..., inner),
    into `out` if given."""
    import cupy

    projected = cupy.ascontiguousarray(projected)
    inner = projected.shape[-1] // 2
    out = cupy.empty((*projected.shape[:-1], inner), projected.dtype) if out is None else out
    kernel = _module("fused").get_function(f"geglu_{DTYPE_NAMES[projected.dtype]}")
    blocks = (out.size + FUSED_THREADS - 1) // FUSED_THREADS
    kernel((blocks,), (FUSED_THREADS,), (projected, out, numpy.int64(out.size), numpy.int32(inner)))
    return out
