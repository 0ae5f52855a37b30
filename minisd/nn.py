"""The equations every component is built from: linear, conv2d, norms, attention, activations.

Each function is the textbook formula, written with `xp` (NumPy or CuPy, see backend.py), and
nothing else: no blocking, no caches, no kernels. This is the reference. The fast paths that
compute the same thing quicker live beside it, on their own floor (cpu.py for NumPy, cuda.py
for CuPy), each tested against the function here, and ops.py decides which one runs;
`minisd.load(path, fast=False)` runs every layer on these functions alone.

Statistics (norms, softmax) are taken in float32 whatever the input dtype: a float16 sum over
thousands of values overflows. Results come back in the input's dtype.
"""

import math

from .backend import array_module


def linear(x, weight, bias=None):
    """y = x Wᵀ + b, with W stored (out, in) as in PyTorch checkpoints: (..., in) -> (..., out).

    The leading axes (batch, tokens) are flattened into one: a single matrix product.
    """
    y = x.reshape(-1, x.shape[-1]) @ weight.T  # (B·T, out)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def conv2d(x, weight, bias, stride=1, padding=0):
    """2-D convolution as one matrix product (im2col): (B, C, H, W) -> (B, C_out, H', W').

    Every output pixel sees a kh×kw window of every input channel. Gathering each window into a
    column turns the convolution into kernel (C_out, C·kh·kw) @ columns (C·kh·kw, H'·W').
    """
    xp = array_module(x)
    batch, _, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # zeros around the border
    columns = im2col(x, kh, kw, stride, out_h, out_w)  # (B, C·kh·kw, H'·W')
    y = weight.reshape(out_channels, -1) @ columns + bias[:, None]  # (B, C_out, H'·W')
    return y.reshape(batch, out_channels, out_h, out_w)


def im2col(x, kh, kw, stride, out_h, out_w):
    """Padded (B, C, H, W) -> (B, C·kh·kw, out_h·out_w): column p holds the window of output pixel p.

    Tap (i, j) of every window is the input shifted by (i, j) and read every `stride` pixels.
    """
    xp = array_module(x)
    taps = [
        x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride] for i in range(kh) for j in range(kw)
    ]  # each (B, C, H', W')
    return xp.stack(taps, axis=2).reshape(x.shape[0], -1, out_h * out_w)  # (B, C, kh·kw, H', W') flattened


def group_norm(x, num_groups, weight, bias, eps):
    """GroupNorm: each group of channels normalised over (its channels, H, W), then γ·x̂ + β per channel.

    x̂ = (x − mean) / √(var + eps)
    """
    batch, channels = x.shape[:2]
    groups = x.reshape(batch, num_groups, -1).astype("float32")  # (B, G, C/G·H·W)
    mean = groups.mean(axis=-1, keepdims=True)
    var = groups.var(axis=-1, keepdims=True)
    normalized = ((groups - mean) / (var + eps) ** 0.5).reshape(x.shape)
    per_channel = (channels,) + (1,) * (x.ndim - 2)  # γ and β broadcast over the pixels
    return (normalized * weight.reshape(per_channel) + bias.reshape(per_channel)).astype(x.dtype)


def layer_norm(x, weight, bias, eps):
    """LayerNorm: each token's feature vector (the last axis) normalised, then γ·x̂ + β."""
    features = x.astype("float32")
    mean = features.mean(axis=-1, keepdims=True)
    var = features.var(axis=-1, keepdims=True)
    normalized = (features - mean) / (var + eps) ** 0.5
    return (normalized * weight + bias).astype(x.dtype)


def softmax(x):
    """softmax over the last axis: e^x / Σ e^x. Subtracting each row's max first keeps e^x finite."""
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(q, k, v, heads, mask=None):
    """Multi-head scaled dot-product attention: softmax(Q Kᵀ / √d + mask) V.

    q: (B, Tq, heads·d), k and v: (B, Tk, heads·d); mask broadcastable to (Tq, Tk), −inf where a
    query may not look. Computed in float32 (float16 scores overflow).
    """
    (batch, _, width), dtype = q.shape, q.dtype
    q, k, v = (split_heads(x.astype("float32"), heads) for x in (q, k, v))  # (B·heads, T, d)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(width // heads)  # (B·heads, Tq, Tk)
    if mask is not None:
        scores = scores + mask
    out = softmax(scores) @ v  # (B·heads, Tq, d)
    return merge_heads(out, batch).astype(dtype)


def attention_weights(q, k, heads):
    """The attention probabilities softmax(Q Kᵀ / √d), one map per head: (B, heads, Tq, Tk).

    The weights `attention` mixes the values with; chapter 7 draws cross-attention maps from them.
    """
    batch, q_len, width = q.shape
    q, k = (split_heads(x.astype("float32"), heads) for x in (q, k))  # (B·heads, T, d)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(width // heads)  # (B·heads, Tq, Tk)
    return softmax(scores).reshape(batch, heads, q_len, -1)


def split_heads(x, heads):
    """(B, T, heads·d) -> (B·heads, T, d): one (T, d) matrix per head."""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3).reshape(batch * heads, length, -1)


def merge_heads(x, batch):
    """(B·heads, T, d) -> (B, T, heads·d), the inverse of split_heads."""
    heads, length, head_dim = x.shape[0] // batch, x.shape[1], x.shape[2]
    return x.reshape(batch, heads, length, head_dim).transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


def upsample_nearest(x, size):
    """(B, C, h, w) -> (B, C, H, W): each output pixel copies the input pixel it falls in.

    Output row i reads input row floor(i·h/H) (columns alike), computed in float32 as PyTorch does.
    """
    xp = array_module(x)
    rows, cols = (
        xp.minimum(xp.floor(xp.arange(out, dtype="float32") * xp.float32(inp / out)), inp - 1).astype("int64")
        for inp, out in zip(x.shape[2:], size)
    )
    return x[:, :, rows[:, None], cols[None, :]]


# ---------------------------------------------------------------- activations


def sigmoid(x):
    """σ(x) = 1 / (1 + e^-x), written with tanh so large |x| never overflows."""
    xp = array_module(x)
    return 0.5 * (1 + xp.tanh(0.5 * x))


def silu(x):
    """SiLU (swish): x·σ(x)."""
    return x * sigmoid(x)


QUICK_GELU_ALPHA = 1.702


def quick_gelu(x):
    """CLIP's GELU approximation: x·σ(1.702x)."""
    return x * sigmoid(QUICK_GELU_ALPHA * x)


def gelu(x):
    """Exact GELU: x·Φ(x), with Φ(x) = ½·erfc(−x/√2) the normal distribution's CDF."""
    return x * (0.5 * erfc(x * (-1 / math.sqrt(2))))


def geglu(projected):
    """GEGLU: hidden · GELU(gate) for the two halves of the last axis, (..., 2·inner) -> (..., inner)."""
    hidden, gate = array_module(projected).split(projected, 2, axis=-1)
    return hidden * gelu(gate)


def erfc(z):
    """The complementary error function 1 − erf(z), fractional error < 1.2e-7.

    NumPy has no erf; this is the Chebyshev fit of Numerical Recipes (Press et al., 3rd ed.,
    §6.2.2): for z ≥ 0, erfc(z) ≈ t·exp(−z² + P(t)) with t = 1/(1 + z/2); erfc(−z) = 2 − erfc(z).
    """
    xp = array_module(z)
    t = 1 / (1 + 0.5 * xp.abs(z))
    tail = t * xp.exp(polynomial(ERFC_COEFFICIENTS, t) - z * z)
    return xp.where(z >= 0, tail, 2 - tail)


def polynomial(coefficients, t):
    """c₀tⁿ + c₁tⁿ⁻¹ + … + cₙ (highest power first) by Horner's rule."""
    value = coefficients[0]
    for coefficient in coefficients[1:]:
        value = value * t + coefficient
    return value


# P(t), highest power first (Numerical Recipes' erfcc).
ERFC_COEFFICIENTS = (
    0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
    -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223,
)  # fmt: skip
