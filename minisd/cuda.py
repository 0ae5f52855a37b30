"""Our own CUDA kernels (kernels/*.cu), loaded through CuPy for the GPU backend.

The GPU floor, beside cpu.py: only hot spots that earn it get a kernel, and each function here
computes exactly what the function of the same name in nn.py computes (that code stays the
readable reference, and the tests compare the two); ops.py decides when it runs. The .cu
sources ship inside the package as `minisd.kernels`. The launch code below takes its array
functions from the arrays it is given, so the tests can also run it, and the kernels, on NumPy
arrays in a CPU emulator of CUDA (tests/cuda_emulator.py).
"""

import functools
import math

import numpy

from .backend import array_module
from .nn import QUICK_GELU_ALPHA
from .resources import shipped_folder

ATTENTION_HEAD_DIMS = (40, 64, 80, 160)
ATTENTION_THREADS = 128  # both attention kernels run blocks of 4 warps
ATTENTION_QUERIES = 4  # queries per block in kernels/attention.cu (one per warp)
TC_QUERIES = 64  # queries per block in kernels/attention_tc.cu (16 per warp: TC_WARPS · ROWS)
FUSED_THREADS = 256  # threads per block, as THREADS in kernels/fused.cu and kernels/im2col.cu
DTYPE_NAMES = {numpy.dtype("float32"): "f32", numpy.dtype("float16"): "f16"}


def kernel_source(name):
    """The text of kernels/<name>.cu, after the helpers all kernels share (kernels/common.cuh)."""
    folder = shipped_folder("minisd.kernels", "kernels")
    return (folder / "common.cuh").read_text() + (folder / f"{name}.cu").read_text()


@functools.cache
def _module(name):
    import cupy

    return cupy.RawModule(code=kernel_source(name), options=("-std=c++17",))


def blocks_for(count, per_block):
    """How many thread blocks cover `count` items, `per_block` to a block (the last one partly)."""
    return (count + per_block - 1) // per_block


@functools.cache
def has_tensor_cores():
    """Whether this GPU runs kernels/attention_tc.cu's fp16 mma.m16n8k16: Ampere (8.0) or later."""
    import cupy

    return int(cupy.cuda.Device().compute_capability) >= 80


def attention_supported(q, k, heads):
    """Whether the attention kernels cover these inputs (else nn.attention runs plain CuPy)."""
    head_dim = q.shape[-1] // heads
    return head_dim in ATTENTION_HEAD_DIMS and q.dtype in DTYPE_NAMES and k.dtype == q.dtype


def attention(q, k, v, heads, mask=None, out=None, tensor_cores=None):
    """softmax(Q Kᵀ / √d + mask) V for q (B, Tq, heads·d), k and v (B, Tk, heads·d), fused.

    float16 runs on tensor cores (kernels/attention_tc.cu) where the GPU has them, float32 and
    older GPUs on kernels/attention.cu; `tensor_cores` (True or False) overrides the choice.
    `out` (optional, like q) receives the result; the kernel writes every element of it.
    """
    xp = array_module(q)
    batch, q_len, width = q.shape
    head_dim = width // heads
    q, k, v = (xp.ascontiguousarray(x) for x in (q, k, v))
    out = xp.empty_like(q) if out is None else out  # (B, Tq, heads·d)
    has_mask = mask is not None
    if has_mask:
        mask = xp.ascontiguousarray(xp.broadcast_to(mask, (q_len, k.shape[1])), dtype=xp.float32)
    else:
        mask = xp.zeros(1, dtype=xp.float32)  # not read
    if tensor_cores is None:
        tensor_cores = q.dtype == numpy.float16 and has_tensor_cores()
    if tensor_cores and q.dtype != numpy.float16:
        raise ValueError(f"kernels/attention_tc.cu takes float16 only, not {q.dtype}")
    if tensor_cores:
        module, name, queries_per_block = "attention_tc", f"tc_d{head_dim}", TC_QUERIES
    else:
        module, name, queries_per_block = "attention", f"{DTYPE_NAMES[q.dtype]}_d{head_dim}", ATTENTION_QUERIES
    kernel = _module(module).get_function(f"attention_{name}")
    grid = (blocks_for(q_len, queries_per_block), batch * heads)
    kernel(
        grid,
        (ATTENTION_THREADS,),
        (
            q,
            k,
            v,
            mask,
            numpy.int32(has_mask),
            out,
            numpy.int32(heads),
            numpy.int32(q_len),
            numpy.int32(k.shape[1]),
            numpy.float32(1 / math.sqrt(head_dim)),
        ),
    )
    return out


def fused_supported(x):
    """Whether kernels/fused.cu and kernels/im2col.cu cover x: float32 or float16, any shape."""
    return x.dtype in DTYPE_NAMES


def group_norm(x, num_groups, weight, bias, eps, out=None):
    """nn.group_norm for x (B, C, ...), in one kernel; `out` (optional, like x) receives it."""
    xp = array_module(x)
    batch, channels = x.shape[:2]
    x = xp.ascontiguousarray(x)
    out = xp.empty_like(x) if out is None else out
    kernel = _module("fused").get_function(f"group_norm_{DTYPE_NAMES[x.dtype]}")
    gamma, beta = (xp.ascontiguousarray(p, dtype=x.dtype) for p in (weight, bias))  # stored so: no copy
    kernel(
        (batch * num_groups,),
        (FUSED_THREADS,),
        (
            x,
            gamma,
            beta,
            out,
            numpy.int32(channels),
            numpy.int32(num_groups),
            numpy.int32(x[0, 0].size),
            numpy.float32(eps),
        ),
    )
    return out


def geglu(projected, out=None):
    """hidden · GELU(gate) for the two halves of projected's last axis: (..., 2·inner) -> (..., inner),
    into `out` if given."""
    xp = array_module(projected)
    projected = xp.ascontiguousarray(projected)
    inner = projected.shape[-1] // 2
    out = xp.empty((*projected.shape[:-1], inner), projected.dtype) if out is None else out
    kernel = _module("fused").get_function(f"geglu_{DTYPE_NAMES[projected.dtype]}")
    blocks = blocks_for(out.size, FUSED_THREADS)
    kernel((blocks,), (FUSED_THREADS,), (projected, out, numpy.int64(out.size), numpy.int32(inner)))
    return out


def layer_norm(x, weight, bias, eps):
    """nn.layer_norm for x (..., D) over its last axis, in one kernel."""
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    out = xp.empty_like(x)
    rows, features = x.size // x.shape[-1], x.shape[-1]
    kernel = _module("fused").get_function(f"layer_norm_{DTYPE_NAMES[x.dtype]}")
    gamma, beta = (xp.ascontiguousarray(p, dtype=x.dtype) for p in (weight, bias))  # stored so: no copy
    rows_per_block = FUSED_THREADS // 32  # a warp per row
    kernel(
        (blocks_for(rows, rows_per_block),),
        (FUSED_THREADS,),
        (x, gamma, beta, out, numpy.int64(rows), numpy.int32(features), numpy.float32(eps)),
    )
    return out


def silu(x, alpha=1.0, out=None):
    """x·σ(alpha·x) (nn.silu for alpha 1, nn.quick_gelu for 1.702) in one kernel, into `out`
    (contiguous, like x; it may be x itself) if given."""
    xp = array_module(x)
    if out is not None and not out.flags.c_contiguous:
        raise ValueError("cuda.silu writes a contiguous `out` only")
    x = xp.ascontiguousarray(x)
    out = xp.empty_like(x) if out is None else out
    kernel = _module("fused").get_function(f"silu_{DTYPE_NAMES[x.dtype]}")
    blocks = blocks_for(x.size, FUSED_THREADS)
    kernel((blocks,), (FUSED_THREADS,), (x, out, numpy.int64(x.size), numpy.float32(alpha)))
    return out


def conv2d(x, weight, bias, stride=1, padding=0):
    """nn.conv2d: the columns of every image gathered by one kernel (`im2col`), then one cuBLAS
    product; a 1×1 kernel is one product over the channels."""
    xp = array_module(x)
    batch, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    if kh == kw == 1 and stride == 1 and padding == 0:
        y = weight.reshape(out_channels, in_channels) @ x.reshape(batch, in_channels, -1)  # (B, C_out, H·W)
        y += bias[:, None]
        return y.reshape(batch, out_channels, height, width)
    out_h, out_w = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    columns = im2col(x, kh, kw, stride, padding, out_h, out_w)  # (C·kh·kw, B·H'·W')
    y = (weight.reshape(out_channels, -1) @ columns).reshape(out_channels, batch, out_h, out_w)
    y += bias[:, None, None, None]
    return xp.ascontiguousarray(y.transpose(1, 0, 2, 3))  # (B, C_out, H', W')


def quick_gelu(x):
    """nn.quick_gelu, x·σ(1.702x), in silu's kernel."""
    return silu(x, QUICK_GELU_ALPHA)


def im2col(x, kh, kw, stride, padding, out_h, out_w):
    """nn.im2col of x (B, C, H, W) zero-padded by `padding`, every image at once, in one kernel,
    channels first: (C·kh·kw, B·out_h·out_w)."""
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    batch, channels, height, width = x.shape
    columns = xp.empty((channels * kh * kw, batch * out_h * out_w), x.dtype)
    kernel = _module("im2col").get_function(f"im2col_{DTYPE_NAMES[x.dtype]}")
    sizes = (batch, channels, height, width, kh, kw, stride, padding, out_h, out_w)
    blocks = blocks_for(columns.size, FUSED_THREADS)
    kernel((blocks,), (FUSED_THREADS,), (x, columns, *(numpy.int32(n) for n in sizes)))
    return columns
