"""Primitives every component is built from: linear, conv2d, norms, attention, activations.

Each function is the equation it computes, written with `xp` (NumPy or CuPy, see backend.py).
Modules hold parameters as attributes named after the checkpoint keys, so the dotted path of a
parameter (`to_out.0.weight`) *is* its key in the file; `Module.named_slots` walks those paths
and the loader (weights.py) fills them.
"""

import contextlib
import dataclasses
import math

from . import cuda
from .backend import array_module, on_gpu


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
def forward_hooks(root, callback):
    """While the `with` block runs, call `callback(key, module, args, output)` after every call
    of a module below `root`; `key` is its checkpoint path ("down_blocks.0.resnets.1").

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
            output = call(self, *args, **kwargs)
            if type(self) is cls and id(self) in keys:  # once per call, even through super().__call__
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
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        self.weight = Param(out_channels, in_channels, kernel_size, kernel_size)
        self.bias = Param(out_channels)
        self.stride, self.padding = stride, padding

    def __call__(self, x):  # (B, C_in, H, W) -> (B, C_out, H', W')
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)


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
    """y = x Wᵀ + b, with W stored (out, in) as in PyTorch checkpoints."""
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def conv2d(x, weight, bias, stride=1, padding=0):
    """2-D convolution as one matrix product (im2col).

    Every output pixel sees a kh x kw window of every input channel; gathering those windows
    into columns turns the convolution into (B, H'W', C·kh·kw) @ (C·kh·kw, C_out).
    """
    xp = array_module(x)
    batch, _, height, width = x.shape
    out_channels, in_channels, kh, kw = weight.shape
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    if kh == kw == 1 and stride == 1:
        columns = x.reshape(batch, in_channels, out_h * out_w).transpose(0, 2, 1)
    else:
        columns = im2col(x, kh, kw, stride, out_h, out_w)  # (B, H'W', C·kh·kw)
    y = columns @ weight.reshape(out_channels, -1).T  # (B, H'W', C_out)
    y += bias
    return y.transpose(0, 2, 1).reshape(batch, out_channels, out_h, out_w)


def im2col(x, kh, kw, stride, out_h, out_w):
    """(B, C, H, W) padded input -> (B, out_h·out_w, C·kh·kw) columns of sliding windows."""
    xp = array_module(x)
    batch, channels = x.shape[:2]
    shifted = [
        x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
        for i in range(kh)
        for j in range(kw)
    ]
    columns = xp.stack(shifted, axis=2)  # (B, C, kh·kw, H', W')
    columns = columns.reshape(batch, channels * kh * kw, out_h * out_w)
    return columns.transpose(0, 2, 1)


def group_norm(x, num_groups, weight, bias, eps):
    """Normalise each group of channels over (channels in group, H, W), then scale and shift.

    Statistics are taken in float32 even for float16 inputs (a float16 sum overflows).
    """
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, num_groups, -1).astype("float32", copy=False)  # (B, G, C/G·H·W)
    mean = grouped.mean(axis=-1, keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=-1, keepdims=True)
    normed = ((grouped - mean) / (var + eps) ** 0.5).reshape(x.shape)
    affine_shape = (1, channels) + (1,) * (x.ndim - 2)
    y = normed * weight.reshape(affine_shape) + bias.reshape(affine_shape)
    return y.astype(x.dtype, copy=False)


def layer_norm(x, weight, bias, eps):
    """Normalise over the last axis (the feature vector of each token), statistics in float32."""
    x32 = x.astype("float32", copy=False)
    mean = x32.mean(axis=-1, keepdims=True)
    var = ((x32 - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x32 - mean) / (var + eps) ** 0.5 * weight + bias
    return y.astype(x.dtype, copy=False)


def softmax_in_place(x):
    """softmax over the last axis, overwriting `x` (the score matrix is the largest array
    attention makes, so no copy of it is taken). Subtracting the row max keeps exp finite."""
    xp = array_module(x)
    x -= x.max(axis=-1, keepdims=True)
    xp.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


# Scores of (query chunk x keys x heads x batch) are kept under this many elements
# (16 Mi floats = 64 MB in float32), so 4096-token self-attention never builds all at once.
ATTENTION_CHUNK_ELEMENTS = 16 * 2**20


def attention(q, k, v, heads, mask=None):
    """Multi-head scaled dot-product attention: softmax(Q Kᵀ / √d + mask) V.

    q: (B, Tq, heads·d), k and v: (B, Tk, heads·d), mask broadcastable to (Tq, Tk) with
    -inf (or a large negative number) where a query may not look. Queries are processed in
    chunks so the score matrix stays under ATTENTION_CHUNK_ELEMENTS; scores and softmax are
    float32 whatever the input dtype. On the GPU, kernels/attention.cu computes the same thing
    in one fused pass for the head dims it covers.
    """
    if on_gpu(q) and cuda.attention_supported(q, k, heads):
        return cuda.attention(q, k, v, heads, mask)
    xp = array_module(q)
    batch, q_len, width = q.shape
    head_dim = width // heads
    q, k, v = (split_heads(t, heads) for t in (q, k, v))  # (B, heads, T, d)
    q = q * (1 / math.sqrt(head_dim))
    out = xp.empty_like(q)
    chunk = max(1, ATTENTION_CHUNK_ELEMENTS // (batch * heads * k.shape[2]))
    for start in range(0, q_len, chunk):
        rows = slice(start, start + chunk)
        scores = (q[:, :, rows] @ k.transpose(0, 1, 3, 2)).astype("float32", copy=False)  # (B, heads, chunk, Tk)
        if mask is not None:
            scores += mask[rows]
        out[:, :, rows] = softmax_in_place(scores).astype(v.dtype, copy=False) @ v
    return out.transpose(0, 2, 1, 3).reshape(batch, q_len, width)  # (B, Tq, heads·d)


def attention_weights(q, k, heads):
    """The attention probabilities softmax(Q Kᵀ / √d), one map per head: (B, heads, Tq, Tk).

    The weights `attention` mixes the values with (it makes them chunk by chunk and keeps none);
    chapter 7 draws cross-attention maps from them. q: (B, Tq, heads·d), k: (B, Tk, heads·d).
    """
    head_dim = q.shape[-1] // heads
    q, k = split_heads(q, heads), split_heads(k, heads)  # (B, heads, T, d)
    scores = ((q * (1 / math.sqrt(head_dim))) @ k.transpose(0, 1, 3, 2)).astype("float32", copy=False)
    return softmax_in_place(scores)


def split_heads(x, heads):
    """(B, T, heads·d) -> (B, heads, T, d)"""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)


# ---------------------------------------------------------------- activations


def sigmoid(x):
    """σ(x) = 1 / (1 + e^-x), written with tanh so large |x| never overflows."""
    xp = array_module(x)
    return 0.5 * (1 + xp.tanh(0.5 * x))


def silu(x):
    return x * sigmoid(x)


def quick_gelu(x):
    """CLIP's GELU approximation: x·σ(1.702x)."""
    return x * sigmoid(1.702 * x)


def gelu(x):
    """Exact GELU: x·Φ(x) = x·½·erfc(-x/√2)."""
    return 0.5 * x * erfc(-x * (1 / math.sqrt(2)))


def erfc(x):
    """Complementary error function, fractional error < 1.2e-7 everywhere.

    NumPy has no erf; this is the Chebyshev fit from Numerical Recipes (Press et al.,
    3rd ed., §6.2.2): erfc(z) ≈ t·exp(-z² + P(t)) with t = 1/(1 + z/2), for z = |x|,
    and erfc(-z) = 2 - erfc(z).
    """
    xp = array_module(x)
    z = xp.abs(x)
    t = 1 / (1 + 0.5 * z)
    poly = ERFC_COEFFICIENTS[0]
    for coefficient in ERFC_COEFFICIENTS[1:]:  # Horner's rule
        poly = poly * t + coefficient
    tail = t * xp.exp(poly - z * z)
    return xp.where(x >= 0, tail, 2 - tail)


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
