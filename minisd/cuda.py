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
DTYPE_NAMES = {numpy.dtype("float32"): "f32", numpy.dtype("float16"): "f16"}


def kernel_source(name):
    """The text of kernels/<name>.cu."""
    return (shipped_folder("minisd.kernels", "kernels") / f"{name}.cu").read_text()


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
