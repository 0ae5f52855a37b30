"""Primitives every component is built from: linear, conv2d, norms, attention, activations.

Each function is the equation it computes, written with `xp` (NumPy or CuPy, see backend.py).
Modules hold parameters as attributes named after the checkpoint keys, so the dotted path of a
parameter (`to_out.0.weight`) *is* its key in the file; `Module.named_slots` walks those paths
and the loader (weights.py) fills them.
"""

import contextlib
import dataclasses
import math

from . import cuda, winograd
from .backend import array_module, on_gpu
from .parallel import elementwise, in_blocks


class Config:
    """Base for component configs: dataclasses filled from a checkpoint's config.json."""

    @classmethod
    def from_dict(cls, values):
        """Take the fields this config knows; keys it does not know (`_class_name`...) are ignored."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


# ---------------------------------------------------------------- parameters and modules


class Param:
    """An empty parameter slot of known shape; the loader replaces it by an array."""

    def __init__(self, *shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)

    def __repr__(self):
        return f"Param{self.shape}"


class Module:
    """A bag of parameters and child modules, addressed by dotted checkpoint keys."""

    def named_slots(self, prefix=""):
        """Yield (key, owner, attribute, value) for every parameter below this module.

        Children may be modules, lists of modules (keys `resnets.0`, `resnets.1`, ...) or dicts
        of modules (keys given by the dict, for checkpoint lists with weightless gaps).
        """
        for name, value in vars(self).items():
            key = prefix + name
            if isinstance(value, Module):
                yield from value.named_slots(key + ".")
            elif isinstance(value, (list, dict)):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for index, child in items:
                    if isinstance(child, Module):
                        yield from child.named_slots(f"{key}.{index}.")
            elif isinstance(value, Param) or _is_array(value):
                yield key, self, name, value

    def parameters(self):
        """{key: array} for every parameter, in declaration order."""
        return {key: value for key, _, _, value in self.named_slots()}

    def named_modules(self, prefix=""):
        """Yield (key, module) for every module below this one, each parent before its children."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                children = [(prefix + name, value)]
            elif isinstance(value, (list, dict)):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                children = [(f"{prefix}{name}.{index}", child) for index, child in items if isinstance(child, Module)]
            else:
                continue
            for key, child in children:
                yield key, child
                yield from child.named_modules(key + ".")


@contextlib.contextmanager
def forward_hooks(root, callback, before=None):
    """While the `with` block runs, call `callback(key, module, args, output)` after every call
    of a module below `root`; `key` is its checkpoint path ("down_blocks.0.resnets.1"), and
    `before(key, module, args)`, if given, as the call begins (the roofline times layers so).

    A window into a forward pass for the chapters (chapter 7 lists the shape of every layer and
    draws cross-attention maps with it), in the spirit of PyTorch's forward hooks, that leaves the
    layer code as it is: the __call__ of each module class below `root` is wrapped on entry and
    given back on exit. Modules of those classes outside `root` (the VAE's ResNet blocks, when
    `root` is the UNet) are not reported. Outside a `with forward_hooks(...)` block nothing changes.
    The callback gets the arrays themselves: copy one to keep it, as the caller of a layer may
    update its output in place (a ResNet block adds the time embedding to conv1's output).
    """
    modules = list(root.named_modules())
    keys = {id(module): key for key, module in modules}
    classes = {type(module) for _, module in modules}
    own_calls = {cls: cls.__dict__.get("__call__") for cls in classes}  # None: inherited

    def hooked(cls, call):
        def call_and_report(self, *args, **kwargs):
            reported = type(self) is cls and id(self) in keys  # once per call, even through super().__call__
            if reported and before:
                before(keys[id(self)], self, args)
            output = call(self, *args, **kwargs)
            if reported:
                callback(keys[id(self)], self, args, output)
            return output

        return call_and_report

    for cls in classes:
        cls.__call__ = hooked(cls, cls.__call__)
    try:
        yield
    finally:
        for cls, call in own_calls.items():
            if call is None:
                del cls.__call__
            else:
                cls.__call__ = call


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True):
        self.weight = Param(out_features, in_features)
        self.bias = Param(out_features) if bias else None

    def __call__(self, x):  # (..., in) -> (..., out)
        return linear(x, self.weight, self.bias)


class Conv2d(Module):
    """A convolution layer: `conv2d`, or on the CPU, for the 3×3 layers where it pays, Winograd's
    algorithm (winograd.py), which gives the same result with fewer multiplications."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        self.weight = Param(out_channels, in_channels, kernel_size, kernel_size)
        self.bias = Param(out_channels)
        self.stride, self.padding = stride, padding

    def __call__(self, x):  # (B, C_in, H, W) -> (B, C_out, H', W')
        same_size_3x3 = (self.weight.shape[2:], self.stride, self.padding) == ((3, 3), 1, 1)
        algorithm = winograd_algorithm(x) if same_size_3x3 else None
        if algorithm:
            weight = self.weight.astype(x.dtype, copy=False)
            kernels = winograd.transform_kernels(weight, algorithm)  # (patch², C_out, C_in)
            return winograd.conv3x3(x, kernels, self.bias, algorithm)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)


def winograd_algorithm(x):
    """The Winograd algorithm that beats im2col for input x on a CPU, or None, as measured on SD's
    layers. It needs enough input channels for its products to run near BLAS peak (64 and more).
    F(4×4, 3×3) runs on maps of 32×32 pixels and more; on smaller ones transforming its kernels
    would cost about what its products save, and F(2×2, 3×3) (fewer savings, but its kernels
    transform in less than half the time) runs where the batch holds 512 pixels (a 16×16 map
    with guidance's batch of 2). Kernels are transformed on every call: keeping them would take
    4 or 1.8 times the weights' memory. The GPU keeps cuBLAS im2col."""
    batch, channels, height, width = x.shape
    if on_gpu(x) or channels < 64:
        return None
    if height * width >= 32 * 32:
        return winograd.F4
    return winograd.F2 if batch * height * width >= 2 * 16 * 16 else None


class GroupNorm(Module):
    def __init__(self, num_groups, num_channels, eps):
        self.weight = Param(num_channels)
        self.bias = Param(num_channels)
        self.num_groups, self.eps = num_groups, eps

    def __call__(self, x):
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-5):
        self.weight = Param(dim)
        self.bias = Param(dim)
        self.eps = eps

    def __call__(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class Embedding(Module):
    def __init__(self, num_embeddings, dim):
        self.weight = Param(num_embeddings, dim)

    def __call__(self, ids):  # (B, T) int -> (B, T, dim)
        return self.weight[ids]


# ---------------------------------------------------------------- layers as equations


def linear(x, weight, bias=None):
    """y = x Wᵀ + b, with W stored (out, in) as in PyTorch checkpoints.

    All leading axes (batch, tokens) are flattened into one: a single large matrix product
    runs faster than one per batch element, which is what `@` on a 3-D x would do.
    """
    y = x.reshape(-1, x.shape[-1]) @ weight.T  # (B·T, out)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def conv2d(x, weight, bias, stride=1, padding=0):
    """2-D convolution as matrix products (im2col).

    Every output pixel sees a kh×kw window of every input channel; gathering those windows into
    columns turns the convolution into kernel (C_out, C·kh·kw) @ columns (C·kh·kw, H'W'), and
    the product comes out already in (C_out, H', W') order. Small feature maps put all images
    of the batch side by side in one product (wider products run faster); on the CPU, large
    ones gather the columns of a strip of output rows at a time, so they stay under
    CONV_COLUMN_ELEMENTS (all of them would be kh·kw = 9 times the input: 1.2 GB for a 512×512
    VAE layer).
    """
    xp = array_module(x)
    batch, _, height, width = x.shape
    out_channels, in_channels, kh, kw = weight.shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    kernel = weight.reshape(out_channels, -1)  # (C_out, C·kh·kw)
    if kh == kw == 1 and stride == 1 and padding == 0:  # a 1×1 conv is a linear layer over the channels
        y = kernel @ x.reshape(batch, in_channels, out_h * out_w)  # (B, C_out, H'W')
        y += bias[:, None]
        return y.reshape(batch, out_channels, out_h, out_w)
    if on_gpu(x) or batch * kernel.shape[1] * out_h * out_w <= CONV_COLUMN_ELEMENTS:  # every image at once
        columns = all_columns(x, kh, kw, stride, padding, out_h, out_w)  # (C·kh·kw, B·H'W')
        y = (kernel @ columns).reshape(out_channels, batch, out_h, out_w)
        y += bias[:, None, None, None]
        return xp.ascontiguousarray(y.transpose(1, 0, 2, 3))  # (B, C_out, H', W')
    y = xp.empty((batch, out_channels, out_h, out_w), x.dtype)
    strip = max(1, CONV_COLUMN_ELEMENTS // (kernel.shape[1] * out_w))  # output rows per strip
    for b in range(batch):
        for top in range(0, out_h, strip):
            rows = min(strip, out_h - top)
            window = padded_rows(x[b], top * stride, (top + rows - 1) * stride + kh, padding)  # what the strip sees
            out = y[b, :, top : top + rows].reshape(out_channels, rows * out_w)  # a view into y
            xp.matmul(kernel, im2col(window, kh, kw, stride, rows, out_w), out=out)
    y += bias[:, None, None]
    return y


def all_columns(x, kh, kw, stride, padding, out_h, out_w):
    """im2col of every image of x (B, C, H, W), zero-padded: (C·kh·kw, B·out_h·out_w). On the
    GPU, kernels/im2col.cu gathers them in one pass."""
    if on_gpu(x) and cuda.fused_supported(x):
        return cuda.im2col(x, kh, kw, stride, padding, out_h, out_w)
    x = array_module(x).pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    return im2col(x.transpose(1, 0, 2, 3), kh, kw, stride, out_h, out_w)


def padded_rows(x, start, stop, padding):
    """Rows start..stop (counted with the padding) of x (C, H, W) zero-padded by `padding` on
    every side: one strip is padded at a time, never a copy of the whole input."""
    height = x.shape[1]
    inner = x[:, max(start - padding, 0) : min(stop - padding, height)]
    above, below = max(padding - start, 0), max(stop - padding - height, 0)
    return array_module(x).pad(inner, ((0, 0), (above, below), (padding, padding)))


# Columns of one strip: 4 Mi floats = 16 MB in float32, which the L3 cache mostly holds.
CONV_COLUMN_ELEMENTS = 4 * 2**20


def im2col(x, kh, kw, stride, out_h, out_w):
    """(C, [B,] H, W) padded input -> (C·kh·kw, [B·]out_h·out_w): column p holds the window of
    output pixel p (of every image, when x holds a batch)."""
    xp = array_module(x)
    shifted = [
        x[..., i : i + stride * out_h : stride, j : j + stride * out_w : stride]
        for i in range(kh)
        for j in range(kw)
    ]
    columns = xp.stack(shifted, axis=1)  # (C, kh·kw, [B,] H', W')
    return columns.reshape(x.shape[0] * kh * kw, -1)


def group_norm(x, num_groups, weight, bias, eps):
    """Normalise each group of channels over (channels in group, H, W), then scale and shift.

    Statistics are taken in float32 even for float16 inputs (a float16 sum overflows). Groups
    are independent, so they are normalised a few at a time, on every core (parallel.py). On
    the GPU, kernels/fused.cu does it in one kernel.
    """
    if on_gpu(x) and cuda.fused_supported(x):
        return cuda.group_norm(x, num_groups, weight, bias, eps)
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
        scale = weight[which] / (var + eps) ** 0.5  # (items, C/G, 1): one multiply per channel
        xp.multiply(centered, scale, out=out[items])
        out[items] += bias[which]

    in_blocks(normalize, batch * num_groups, groups[0].size, x)
    return out.reshape(x.shape)


def layer_norm(x, weight, bias, eps):
    """Normalise over the last axis (the feature vector of each token), statistics in float32.
    Tokens are independent: a block of them at a time, on every core (parallel.py). On the GPU,
    kernels/fused.cu does it in one kernel."""
    if on_gpu(x) and cuda.fused_supported(x):
        return cuda.layer_norm(x, weight, bias, eps)
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

    in_blocks(normalize, tokens.shape[0], tokens.shape[1], x)
    return out.reshape(x.shape)


def softmax_in_place(x):
    """softmax over the last axis, overwriting `x` (a score matrix is large: no copy of it is
    taken). Subtracting the row max keeps exp finite."""
    xp = array_module(x)
    x -= x.max(axis=-1, keepdims=True)
    xp.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


# Scores of (keys x query rows) for the heads one block of work handles are kept under this
# many elements: 512 Ki floats = 2 MB in float32 on the CPU, so the softmax passes stay in the
# cache (128 query rows of 4096 keys; measured 2–7 % faster on SD's layers than 4 MB blocks).
# On the GPU, 16 Mi floats (64 MB) per query chunk.
ATTENTION_SCORES_CPU = 2**19
ATTENTION_SCORES_GPU = 16 * 2**20
# The CPU path takes the softmax in powers of two: e^s = 2^(s·log₂e), and NumPy's float32 exp2
# runs twice as fast as its exp. softmax(s) = softmax(s − c) for any shift c; the usual shift,
# each row's max, only keeps the powers from overflowing. By Cauchy–Schwarz every score
# |q·k| ≤ |q| |k|: when that bound is at most SAFE_EXPONENT for a chunk, its raw powers lie
# between 2^-80 and 2^80 (float32 spans 2^-126 to 2^128, so the sum of even a million of them
# is finite and positive), and the max pass, a read and a write of every score, is skipped.
SAFE_EXPONENT = 80.0
LOG2_E = 1 / math.log(2)


def attention(q, k, v, heads, mask=None):
    """Multi-head scaled dot-product attention: softmax(Q Kᵀ / √d + mask) V.

    q: (B, Tq, heads·d), k and v: (B, Tk, heads·d), mask broadcastable to (Tq, Tk) with
    -inf (or a large negative number) where a query may not look. Heads are independent, and
    so are query rows: on the CPU a few heads at a time, on every core, each in chunks of rows
    small enough that the score matrix never exists whole (4096 tokens, 8 heads, batch 2 would
    be 1 GB). Scores, softmax and the weighted sum are float32 whatever the input dtype; the
    division by the softmax sum is done on the (rows, d) output instead of the (rows, Tk)
    weights. The scores are computed transposed, K Qᵀ (keys down, queries across), which BLAS
    runs faster than Q Kᵀ for SD's narrow heads, and in powers of two (SAFE_EXPONENT says why).
    On the GPU, kernels/attention.cu does all of it in one fused pass for the head dims it covers.
    """
    if on_gpu(q) and cuda.attention_supported(q, k, heads):
        return cuda.attention(q, k, v, heads, mask)
    xp = array_module(q)
    batch, q_len, width = q.shape
    k_len = k.shape[1]
    q = split_heads(q * (LOG2_E / math.sqrt(width // heads)), heads)  # (B·heads, Tq, d), scores in base 2
    k, v = split_heads(k, heads), split_heads(v, heads)  # (B·heads, Tk, d)
    out = xp.empty_like(q)
    scores_limit = ATTENTION_SCORES_GPU if on_gpu(q) else ATTENTION_SCORES_CPU

    shift_by_max = mask is not None or on_gpu(q)  # on the GPU, checking the bound would wait for the device

    def attend(items):  # a slice of the B·heads heads
        keys = k[items]
        values = xp.ones((items.stop - items.start, k.shape[2] + 1, k_len), "float32")  # (heads, d + 1, Tk)
        values[:, :-1] = v[items].transpose(0, 2, 1)  # Vᵀ, then a row of ones: the product adds up each softmax
        key_reach = None if shift_by_max else longest_row(keys)
        rows = max(1, scores_limit // ((items.stop - items.start) * k_len))
        for start in range(0, q_len, rows):
            queries = q[items, start : start + rows]
            scores = (keys @ queries.transpose(0, 2, 1)).astype("float32", copy=False)  # (heads, Tk, rows)
            if mask is not None:
                scores += mask[start : start + rows].T * LOG2_E
            if shift_by_max or longest_row(queries) * key_reach > SAFE_EXPONENT:
                scores -= scores.max(axis=1, keepdims=True)
            xp.exp2(scores, out=scores)
            weighted = values @ scores  # (heads, d + 1, rows): Vᵀ P and, last, Σ P
            out[items, start : start + rows] = (weighted[:, :-1] / weighted[:, -1:]).transpose(0, 2, 1)

    in_blocks(attend, batch * heads, q_len * k_len, q)
    return merge_heads(out, batch)  # (B, Tq, heads·d)


def longest_row(x):
    """The largest Euclidean length of the vectors along x's last axis, in float32."""
    return float(array_module(x).sqrt((x.astype("float32", copy=False) ** 2).sum(axis=-1).max()))


def attention_weights(q, k, heads):
    """The attention probabilities softmax(Q Kᵀ / √d), one map per head: (B, heads, Tq, Tk).

    The weights `attention` mixes the values with (it makes them chunk by chunk and keeps none);
    chapter 7 draws cross-attention maps from them. q: (B, Tq, heads·d), k: (B, Tk, heads·d).
    """
    batch, q_len, width = q.shape
    q, k = split_heads(q * (1 / math.sqrt(width // heads)), heads), split_heads(k, heads)  # (B·heads, T, d)
    scores = (q @ k.transpose(0, 2, 1)).astype("float32", copy=False)  # (B·heads, Tq, Tk)
    return softmax_in_place(scores).reshape(batch, heads, q_len, -1)


def split_heads(x, heads):
    """(B, T, heads·d) -> (B·heads, T, d): one contiguous (T, d) matrix per head."""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3).reshape(batch * heads, length, -1)


def merge_heads(x, batch):
    """(B·heads, T, d) -> (B, T, heads·d), the inverse of split_heads."""
    heads, length, head_dim = x.shape[0] // batch, x.shape[1], x.shape[2]
    return x.reshape(batch, heads, length, head_dim).transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


# ---------------------------------------------------------------- activations


def sigmoid(x):
    """σ(x) = 1 / (1 + e^-x), written with tanh so large |x| never overflows."""
    xp = array_module(x)
    return 0.5 * (1 + xp.tanh(0.5 * x))


# The activations run block by block on every core (parallel.elementwise): each is about ten
# NumPy operations, and a block keeps their temporaries in the cache. On the GPU, SiLU and
# quick GELU are one kernel each (kernels/fused.cu), GELU inside GEGLU's.


def silu(x, out=None):
    """x·σ(x); silu(h, out=h) overwrites h (a norm's output that nothing else reads)."""
    if on_gpu(x) and cuda.fused_supported(x):
        return cuda.silu(x, 1.0, out=out)
    return elementwise(lambda x: x * sigmoid(x), x, out=out)


QUICK_GELU_ALPHA = 1.702


def quick_gelu(x):
    """CLIP's GELU approximation: x·σ(1.702x)."""
    if on_gpu(x) and cuda.fused_supported(x):
        return cuda.silu(x, QUICK_GELU_ALPHA)
    return elementwise(lambda x: x * sigmoid(QUICK_GELU_ALPHA * x), x)


def gelu(x):
    """Exact GELU: x·Φ(x), with Φ(x) = ½·erfc(-x/√2) the normal distribution's CDF.

    x·erf(x/√2) is even in x, so x·Φ(x) = ½·(x + |x| - |x|·erfc(|x|/√2)): erfc is needed only
    at non-negative arguments (no branch on the sign), and for large negative x the two first
    terms cancel exactly, leaving the tiny true value.
    """

    def equation(x):
        xp = array_module(x)
        magnitude = xp.abs(x)
        y = x + magnitude
        y -= magnitude * erfc_nonnegative(magnitude * (1 / math.sqrt(2)))
        y *= 0.5
        return y

    return elementwise(equation, x)


def geglu(projected):
    """GEGLU's gate: hidden · GELU(gate) for the two halves of the last axis, (..., 2·inner) ->
    (..., inner). On the GPU, kernels/fused.cu computes it in one kernel."""
    if on_gpu(projected) and cuda.fused_supported(projected):
        return cuda.geglu(projected)
    half = projected.shape[-1] // 2
    hidden, gate = projected[..., :half], projected[..., half:]
    return elementwise(lambda hidden, gate: hidden * gelu(gate), hidden, gate)


def erfc_nonnegative(z):
    """Complementary error function for z ≥ 0, fractional error < 1.2e-7.

    NumPy has no erf; this is the Chebyshev fit from Numerical Recipes (Press et al.,
    3rd ed., §6.2.2): erfc(z) ≈ t·exp(-z² + P(t)) with t = 1/(1 + z/2).
    """
    xp = array_module(z)
    t = 1 / (1 + 0.5 * z)
    poly = xp.full_like(t, ERFC_COEFFICIENTS[0])
    for coefficient in ERFC_COEFFICIENTS[1:]:  # Horner's rule, in place (no new arrays)
        poly *= t
        poly += coefficient
    poly -= z * z
    tail = xp.exp(poly, out=poly)
    tail *= t
    return tail


# P(t), highest power first (Numerical Recipes' erfcc).
ERFC_COEFFICIENTS = (
    0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
    -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223,
)  # fmt: skip

ACTIVATIONS = {"silu": silu, "swish": silu, "quick_gelu": quick_gelu, "gelu": gelu}


def activation(name):
    """The activation function a config names (`hidden_act`, `act_fn`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}: minisd knows {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
