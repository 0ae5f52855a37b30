"""The CPU floor: the equations of nn.py, computed faster with NumPy on every core.

Each function here computes what the function of the same name in nn.py computes (the tests
compare every one with its plain twin, and with PyTorch); ops.py decides when it runs. What
makes them faster:

- work cut into cache-sized blocks handed to every core (parallel.py): attention a few heads
  and query rows at a time, norms a few groups or tokens at a time, activations in blocks;
- attention's softmax in powers of two, its max pass skipped when a bound proves it useless,
  and its sums taken by the weighted-sum product itself;
- 3×3 convolutions over large maps by Winograd's algorithm (winograd.py), the others by im2col
  on strips of rows so the columns stay in the cache;
- the process tuned once, as the first fast path runs (`tune_process`): glibc's malloc keeps
  freed memory, OpenBLAS's idle threads sleep at once.
"""

import ctypes
import functools
import math
import os

from threadpoolctl import ThreadpoolController

from . import nn, winograd
from .backend import array_module
from .parallel import elementwise, in_blocks

# ---------------------------------------------------------------- convolutions


def conv2d(x, weight, bias, stride=1, padding=0):
    """nn.conv2d. 1×1 kernels are one product over the channels; 3×3 kernels over large maps take
    Winograd's algorithm; the others gather im2col columns of every image at once when they are
    small, else of a strip of output rows at a time, under CONV_COLUMN_ELEMENTS (all of them
    would be kh·kw = 9 times the input: 1.2 GB for a 512×512 VAE layer)."""
    batch, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    if kh == kw == 1 and stride == 1 and padding == 0:  # a linear layer over the channels
        y = weight.reshape(out_channels, in_channels) @ x.reshape(batch, in_channels, -1)  # (B, C_out, H·W)
        y += bias[:, None]
        return y.reshape(batch, out_channels, height, width)
    algorithm = winograd_algorithm(x) if ((kh, kw), stride, padding) == ((3, 3), 1, 1) else None
    if algorithm:
        kernels = winograd.transform_kernels(weight.astype(x.dtype, copy=False), algorithm)  # (patch², C_out, C)
        return winograd.conv3x3(x, kernels, bias, algorithm)
    out_h, out_w = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    kernel = weight.reshape(out_channels, -1)  # (C_out, C·kh·kw)
    if batch * kernel.shape[1] * out_h * out_w <= CONV_COLUMN_ELEMENTS:
        return conv_all_at_once(x, kernel, bias, (kh, kw, stride, padding), (out_h, out_w))
    return conv_in_strips(x, kernel, bias, (kh, kw, stride, padding), (out_h, out_w))


# Columns of one strip: 4 Mi floats = 16 MB in float32, which the L3 cache mostly holds.
CONV_COLUMN_ELEMENTS = 4 * 2**20


def winograd_algorithm(x):
    """The Winograd algorithm that beats im2col for input x, or None, as measured on SD's layers.

    It needs enough input channels for its products to run near BLAS peak (64 and more).
    F(4×4, 3×3) runs on maps of 32×32 pixels and more; on smaller ones transforming its kernels
    would cost about what its products save, and F(2×2, 3×3) (fewer savings, but its kernels
    transform in less than half the time) runs where the batch holds 512 pixels (a 16×16 map
    with guidance's batch of 2). Kernels are transformed on every call: keeping them would take
    4 or 1.8 times the weights' memory.
    """
    batch, channels, height, width = x.shape
    if channels < 64:
        return None
    if height * width >= 32 * 32:
        return winograd.F4
    return winograd.F2 if batch * height * width >= 2 * 16 * 16 else None


def conv_all_at_once(x, kernel, bias, window, out_size):
    """Small maps: the columns of every image side by side, one product (wider products run faster)."""
    xp = array_module(x)
    kh, kw, stride, padding = window
    (out_h, out_w), batch, out_channels = out_size, x.shape[0], kernel.shape[0]
    padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))).transpose(1, 0, 2, 3)  # (C, B, H, W)
    y = (kernel @ im2col(padded, kh, kw, stride, out_h, out_w)).reshape(out_channels, batch, out_h, out_w)
    y += bias[:, None, None, None]
    return xp.ascontiguousarray(y.transpose(1, 0, 2, 3))  # (B, C_out, H', W')


def conv_in_strips(x, kernel, bias, window, out_size):
    """Large maps: the columns of a strip of output rows at a time, written into a view of y."""
    xp = array_module(x)
    kh, kw, stride, padding = window
    (out_h, out_w), batch, out_channels = out_size, x.shape[0], kernel.shape[0]
    y = xp.empty((batch, out_channels, out_h, out_w), x.dtype)
    strip = max(1, CONV_COLUMN_ELEMENTS // (kernel.shape[1] * out_w))  # output rows per strip
    for b in range(batch):
        for top in range(0, out_h, strip):
            rows = min(strip, out_h - top)
            window_rows = padded_rows(x[b], top * stride, (top + rows - 1) * stride + kh, padding)  # what it sees
            out = y[b, :, top : top + rows].reshape(out_channels, rows * out_w)  # a view into y
            xp.matmul(kernel, im2col(window_rows, kh, kw, stride, rows, out_w), out=out)
    y += bias[:, None, None]
    return y


def padded_rows(x, start, stop, padding):
    """Rows start..stop (counted with the padding) of x (C, H, W) zero-padded by `padding` on
    every side: one strip is padded at a time, never a copy of the whole input."""
    height = x.shape[1]
    inner = x[:, max(start - padding, 0) : min(stop - padding, height)]
    above, below = max(padding - start, 0), max(stop - padding - height, 0)
    return array_module(x).pad(inner, ((0, 0), (above, below), (padding, padding)))


def im2col(x, kh, kw, stride, out_h, out_w):
    """nn.im2col with channels first: (C, [B,] H, W) padded -> (C·kh·kw, [B·]out_h·out_w), the
    layout whose product with the kernel comes out channels first, with no transpose."""
    xp = array_module(x)
    taps = [
        x[..., i : i + stride * out_h : stride, j : j + stride * out_w : stride] for i in range(kh) for j in range(kw)
    ]
    return xp.stack(taps, axis=1).reshape(x.shape[0] * kh * kw, -1)  # (C, kh·kw, [B,] H', W') flattened


# ---------------------------------------------------------------- norms


def group_norm(x, num_groups, weight, bias, eps):
    """nn.group_norm, a few groups at a time on every core, one multiply per channel."""
    xp = array_module(x)
    batch, channels = x.shape[:2]
    group_size = channels // num_groups
    groups = x.reshape(batch * num_groups, group_size, -1)  # (B·G, C/G, H·W)
    out = xp.empty_like(groups)
    weight, bias = weight.reshape(num_groups, group_size, 1), bias.reshape(num_groups, group_size, 1)

    def normalize(items):
        g = groups[items].astype("float32", copy=False)
        centered = g - g.mean(axis=(1, 2), keepdims=True)
        var = xp.square(centered).mean(axis=(1, 2), keepdims=True)
        which = xp.arange(items.start, items.stop) % num_groups  # the group each item is
        scale = weight[which] / (var + eps) ** 0.5  # (items, C/G, 1): γ/σ, one multiply per channel
        xp.multiply(centered, scale, out=out[items])
        out[items] += bias[which]

    in_blocks(normalize, batch * num_groups, groups[0].size)
    return out.reshape(x.shape)


def layer_norm(x, weight, bias, eps):
    """nn.layer_norm, a block of tokens at a time on every core."""
    xp = array_module(x)
    tokens = x.reshape(-1, x.shape[-1])  # (N, D)
    out = xp.empty_like(tokens)

    def normalize(items):
        t = tokens[items].astype("float32", copy=False)
        centered = t - t.mean(axis=-1, keepdims=True)
        var = xp.square(centered).mean(axis=-1, keepdims=True)
        centered /= (var + eps) ** 0.5
        xp.multiply(centered, weight, out=out[items])
        out[items] += bias

    in_blocks(normalize, tokens.shape[0], tokens.shape[1])
    return out.reshape(x.shape)


# ---------------------------------------------------------------- attention

# Scores of (keys x query rows) for the heads one block of work handles are kept under this
# many elements: 512 Ki floats = 2 MB in float32, so the softmax passes stay in the cache
# (128 query rows of 4096 keys; measured 2–7 % faster on SD's layers than 4 MB blocks).
ATTENTION_SCORES = 2**19
# The softmax is taken in powers of two: e^s = 2^(s·log₂e), and NumPy's float32 exp2 runs twice
# as fast as its exp. softmax(s) = softmax(s − c) for any shift c; the usual shift, each row's
# max, only keeps the powers from overflowing. By Cauchy–Schwarz every score |q·k| ≤ |q| |k|:
# when that bound is at most SAFE_EXPONENT for a chunk, its raw powers lie between 2^-80 and
# 2^80 (float32 spans 2^-126 to 2^128, so the sum of even a million of them is finite and
# positive), and the max pass, a read and a write of every score, is skipped.
SAFE_EXPONENT = 80.0
LOG2_E = 1 / math.log(2)


def attention(q, k, v, heads, mask=None):
    """nn.attention, a few heads at a time on every core, each in chunks of query rows small
    enough that the score matrix never exists whole (4096 tokens, 8 heads, batch 2 would be
    1 GB). The scores are computed transposed, K Qᵀ (keys down, queries across), which BLAS runs
    faster than Q Kᵀ for SD's narrow heads, and in base 2 (SAFE_EXPONENT says why); the division
    by the softmax sum is done on the (d, rows) output instead of the (Tk, rows) weights."""
    xp = array_module(q)
    batch, q_len, width = q.shape
    k_len = k.shape[1]
    q = nn.split_heads(q * (LOG2_E / math.sqrt(width // heads)), heads)  # (B·heads, Tq, d), scores in base 2
    k, v = nn.split_heads(k, heads), nn.split_heads(v, heads)  # (B·heads, Tk, d)
    out = xp.empty_like(q)

    def attend(items):  # a slice of the B·heads heads
        keys = k[items]
        values = xp.ones((items.stop - items.start, k.shape[2] + 1, k_len), "float32")  # (heads, d + 1, Tk)
        values[:, :-1] = v[items].transpose(0, 2, 1)  # Vᵀ, then a row of ones: the product adds up each softmax
        key_reach = None if mask is not None else longest_row(keys)
        rows = max(1, ATTENTION_SCORES // ((items.stop - items.start) * k_len))
        for start in range(0, q_len, rows):
            queries = q[items, start : start + rows]
            scores = (keys @ queries.transpose(0, 2, 1)).astype("float32", copy=False)  # (heads, Tk, rows)
            if mask is not None:
                scores += mask[start : start + rows].T * LOG2_E
            if mask is not None or longest_row(queries) * key_reach > SAFE_EXPONENT:
                scores -= scores.max(axis=1, keepdims=True)
            xp.exp2(scores, out=scores)
            weighted = values @ scores  # (heads, d + 1, rows): Vᵀ P and, last, Σ P
            out[items, start : start + rows] = (weighted[:, :-1] / weighted[:, -1:]).transpose(0, 2, 1)

    in_blocks(attend, batch * heads, q_len * k_len)
    return nn.merge_heads(out, batch)  # (B, Tq, heads·d)


def longest_row(x):
    """The largest Euclidean length of the vectors along x's last axis, in float32."""
    return float(array_module(x).sqrt((x.astype("float32", copy=False) ** 2).sum(axis=-1).max()))


# ---------------------------------------------------------------- activations and upsampling
# Each activation is about ten NumPy operations: in blocks (parallel.elementwise), their
# temporaries stay in the cache, on every core.


def silu(x, out=None):
    """nn.silu in blocks; silu(h, out=h) overwrites h (a norm's output that nothing else reads)."""
    return elementwise(nn.silu, x, out=out)


def quick_gelu(x):
    """nn.quick_gelu in blocks."""
    return elementwise(nn.quick_gelu, x)


def gelu(x):
    """nn.gelu in blocks, in a form that takes fewer passes: x·erf(x/√2) is even in x, so
    x·Φ(x) = ½·(x + |x| − |x|·erfc(|x|/√2)), and erfc is needed only at non-negative arguments
    (no branch on the sign), in place."""

    def equation(x):
        xp = array_module(x)
        magnitude = xp.abs(x)
        y = x + magnitude
        y -= magnitude * erfc_nonnegative(magnitude * (1 / math.sqrt(2)))
        y *= 0.5
        return y

    return elementwise(equation, x)


def geglu(projected):
    """nn.geglu in blocks: hidden · GELU(gate) for the two halves of the last axis."""
    half = projected.shape[-1] // 2
    return elementwise(lambda hidden, gate: hidden * gelu(gate), projected[..., :half], projected[..., half:])


def erfc_nonnegative(z):
    """nn.erfc for z ≥ 0, Horner's rule in place (no new arrays)."""
    xp = array_module(z)
    t = 1 / (1 + 0.5 * z)
    poly = xp.full_like(t, nn.ERFC_COEFFICIENTS[0])
    for coefficient in nn.ERFC_COEFFICIENTS[1:]:
        poly *= t
        poly += coefficient
    poly -= z * z
    tail = xp.exp(poly, out=poly)
    tail *= t
    return tail


def upsample_nearest(x, size):
    """nn.upsample_nearest; the usual doubling by broadcasting each pixel into a 2×2 block."""
    if tuple(size) != (2 * x.shape[2], 2 * x.shape[3]):
        return nn.upsample_nearest(x, size)
    y = array_module(x).empty((*x.shape[:2], x.shape[2], 2, x.shape[3], 2), x.dtype)
    y[...] = x[:, :, :, None, :, None]  # (B, C, h, 2, w, 2)
    return y.reshape(*x.shape[:2], *size)


# ---------------------------------------------------------------- the process


def tune_process():
    """Tune this process for the fast paths, once, when the first one runs (ops.py calls this).

    Two settings change for the whole process, each unless the user has set it:
    - glibc's malloc keeps freed memory for the next array (`keep_freed_memory`), unless one of
      MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_ is set;
    - OpenBLAS's idle threads sleep at once (`let_idle_blas_threads_sleep`), unless
      OPENBLAS_THREAD_TIMEOUT is set.
    MINISD_TUNE_PROCESS=0 in the environment turns both off. Nothing changes on import.
    """
    if os.environ.get("MINISD_TUNE_PROCESS", "1") != "0":
        _tune_once()


@functools.cache
def _tune_once():
    if not any(name in os.environ for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        keep_freed_memory()
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        let_idle_blas_threads_sleep()


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for the next array instead of giving it back.

    By default an array over 128 KB is mapped fresh from the kernel and unmapped when freed, so
    every new activation pays a page fault per 4 KB page (the kernel zeroes each one): some
    35,000 faults and about 7% of a CPU UNet step, and a 200 MB array (a large layer's
    Winograd kernels) 0.1–0.3 s, five times its computation. These settings never map memory
    for an array: every one comes from the heap, where freed memory is reused, and the heap
    stays at its high-water mark (measured peaks: +0.07 GB for a whole 512×512 generation,
    +0.34 GB for a tiled 1024×1024 decode). On a C library other than glibc (macOS, Windows,
    musl) nothing happens.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_top_pad, 64 * 2**20)


# After a multi-threaded matrix product, OpenBLAS keeps its worker threads spinning for the
# next one for 2^28 CPU cycles (~0.1 s). minisd's own block workers (parallel.py) run the norms,
# activations and attention in exactly those gaps, and a spinning thread takes a core from them:
# inside a UNet step, the attention over 1024 tokens took 75 ms instead of 39 ms and a LayerNorm
# 6 ms instead of 3 (the whole 64x64 step 8.7 s instead of 9.5 s). With 2^4 cycles the idle threads
# sleep at once; waking them costs microseconds per product, and SD's products take milliseconds.
BLAS_THREAD_TIMEOUT = "4"  # OpenBLAS's OPENBLAS_THREAD_TIMEOUT: log2 of the cycles


def let_idle_blas_threads_sleep():
    """Set OPENBLAS_THREAD_TIMEOUT in every OpenBLAS NumPy has loaded.

    OpenBLAS reads its environment when it loads, with NumPy, before minisd can set anything.
    So it is asked to read it again (`openblas_read_env`) and to stop its threads
    (`blas_thread_shutdown_`, what it does before a fork); the next product starts them again
    with the new timeout. A build without these two functions keeps its own setting. The
    variable then stays set (child processes inherit it and read it as they load).
    """
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = BLAS_THREAD_TIMEOUT
    for blas in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        library = ctypes.CDLL(blas.filepath)
        if hasattr(library, "openblas_read_env") and hasattr(library, "blas_thread_shutdown_"):
            library.openblas_read_env()
            library.blas_thread_shutdown_()
