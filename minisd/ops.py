"""Which code computes each operation: the plain equation, or a fast path that computes the same.

The layers (layers.py, blocks.py, the components) call the functions below. Each runs the
equation of the same name in nn.py, or, when fast paths are on, the fast path for the array's
device: cpu.py for NumPy arrays, cuda.py (our CUDA kernels) for CuPy arrays where a kernel covers
the inputs. This is the one place where that choice is made.

Fast paths are on by default. `fast_paths(False)` (or `minisd.load(path, fast=False)`, which
uses it around every call of the pipeline) runs everything on nn.py alone: slower, but every
line a debugger steps into is the textbook one.
"""

import contextlib
import contextvars

from . import cpu, cuda, nn
from .backend import on_gpu

_fast = contextvars.ContextVar("minisd_fast_paths", default=True)


@contextlib.contextmanager
def fast_paths(enabled=True):
    """Within the `with` block (in this thread), run the fast paths (True) or nn.py alone (False)."""
    token = _fast.set(bool(enabled))
    try:
        yield
    finally:
        _fast.reset(token)


def pick(x, plain, cpu_path=None, gpu_path=None):
    """The function that computes `plain`'s equation for input x: the fast path of x's device
    (None: there is none), or `plain` itself when fast paths are off."""
    if not _fast.get():
        return plain
    if on_gpu(x):
        return gpu_path or plain
    if cpu_path is None:
        return plain
    cpu.tune_process()  # once: the process settings the CPU fast paths want
    return cpu_path


def linear(x, weight, bias=None):
    return nn.linear(x, weight, bias)  # one matrix product: already as fast as it gets


def conv2d(x, weight, bias, stride=1, padding=0):
    gpu = cuda.conv2d if cuda.fused_supported(x) else None
    return pick(x, nn.conv2d, cpu.conv2d, gpu)(x, weight, bias, stride, padding)


def group_norm(x, num_groups, weight, bias, eps):
    gpu = cuda.group_norm if cuda.fused_supported(x) else None
    return pick(x, nn.group_norm, cpu.group_norm, gpu)(x, num_groups, weight, bias, eps)


def layer_norm(x, weight, bias, eps):
    gpu = cuda.layer_norm if cuda.fused_supported(x) else None
    return pick(x, nn.layer_norm, cpu.layer_norm, gpu)(x, weight, bias, eps)


def attention(q, k, v, heads, mask=None):
    gpu = cuda.attention if cuda.attention_supported(q, k, heads) else None
    return pick(q, nn.attention, cpu.attention, gpu)(q, k, v, heads, mask)


def silu(x, out=None):
    """nn.silu; out=x (a norm's fresh output, which nothing else reads) lets a fast path write over x."""
    gpu = cuda.silu if cuda.fused_supported(x) else None
    return pick(x, _plain_silu, cpu.silu, gpu)(x, out=out)


def quick_gelu(x):
    gpu = cuda.quick_gelu if cuda.fused_supported(x) else None
    return pick(x, nn.quick_gelu, cpu.quick_gelu, gpu)(x)


def gelu(x):
    return pick(x, nn.gelu, cpu.gelu)(x)  # on the GPU, inside GEGLU's kernel


def geglu(projected):
    gpu = cuda.geglu if cuda.fused_supported(projected) else None
    return pick(projected, nn.geglu, cpu.geglu, gpu)(projected)


def upsample_nearest(x, size):
    return pick(x, nn.upsample_nearest, cpu.upsample_nearest)(x, size)


def _plain_silu(x, out=None):
    """nn.silu, written into `out` when given."""
    if out is None:
        return nn.silu(x)
    out[...] = nn.silu(x)
    return out
