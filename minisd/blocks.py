"""Building blocks shared by the UNet and the VAE: ResNet block, attention, down/upsampling.

The UNet and the autoencoder are built from the same bricks (diffusers keeps them in
resnet.py and attention_processor.py); they sit here, one floor above the primitives, so that
unet.py and vae.py stay side by side without importing each other.
"""

from . import ops
from .backend import array_module
from .layers import Conv2d, GroupNorm, Linear
from .module import Module, positive_integers


class ResnetBlock2D(Module):
    """GroupNorm → SiLU → conv3×3 (+ time embedding) → GroupNorm → SiLU → conv3×3, plus skip.

    The UNet passes a time embedding (projected to one shift per channel); the VAE does not
    (temb_channels=None). A 1×1 conv reshapes the skip when the channel count changes.
    """

    def __init__(self, in_channels, out_channels, temb_channels, groups=32, eps=1e-5):
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_channels is not None:
            self.time_emb_proj = Linear(temb_channels, out_channels)
        self.norm2 = GroupNorm(groups, out_channels, eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = Conv2d(in_channels, out_channels, 1)

    def __call__(self, x, temb=None):  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(silu_in_place(self.norm1(x)))
        if temb is not None:
            h += self.time_emb_proj(ops.silu(temb))[:, :, None, None]  # one shift per channel
        h = self.conv2(silu_in_place(self.norm2(h)))
        if hasattr(self, "conv_shortcut"):
            x = self.conv_shortcut(x)
        return x + h


def silu_in_place(h):
    """SiLU over a norm's fresh output, written over it (no second image-sized array)."""
    return ops.silu(h, out=h)


class Attention(Module):
    """Multi-head attention with diffusers' key names (to_q, to_k, to_v, to_out.0).

    Self-attention when `context` is None, cross-attention otherwise: queries come from the
    image tokens, keys and values from the context (the text embeddings).
    """

    def __init__(self, query_dim, heads, head_dim, context_dim=None, bias=False):
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = Linear(query_dim, inner, bias)
        self.to_k = Linear(context_dim, inner, bias)
        self.to_v = Linear(context_dim, inner, bias)
        self.to_out = [Linear(inner, query_dim)]  # to_out.1 is training-time dropout

    def __call__(self, x, context=None):  # (B, T, query_dim) -> (B, T, query_dim)
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out[0](ops.attention(q, k, v, self.heads))


class SpatialSelfAttention(Attention):
    """The VAE's single-head attention over all pixels: GroupNorm, attention, residual."""

    def __init__(self, channels, groups, eps):
        super().__init__(channels, heads=1, head_dim=channels, bias=True)
        self.group_norm = GroupNorm(groups, channels, eps)

    def __call__(self, x):  # (B, C, H, W) -> (B, C, H, W)
        batch, channels, height, width = x.shape
        h = self.group_norm(x).reshape(batch, channels, height * width).transpose(0, 2, 1)
        h = super().__call__(h)  # (B, H·W, C): every pixel is a token
        return x + h.transpose(0, 2, 1).reshape(x.shape)


class Downsample2D(Module):
    """Halve H and W with a stride-2 conv3×3.

    The UNet pads 1 on every side; the VAE encoder (padding=0) pads only right and bottom.
    """

    def __init__(self, channels, padding=1):
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding)

    def __call__(self, x):
        if self.conv.padding == 0:
            xp = array_module(x)
            x = xp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
        return self.conv(x)


class Upsample2D(Module):
    """Nearest-neighbour upsampling (×2, or to `size`), then conv3×3."""

    def __init__(self, channels):
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def __call__(self, x, size=None):
        size = size or (2 * x.shape[2], 2 * x.shape[3])
        return self.conv(ops.upsample_nearest(x, size))  # (B, C, 2h, 2w)


def check_levels(must, config, sizes):
    """The config rules the UNet and the VAE share (`must`: module.Rules): one width per level,
    the `sizes` >= 1, and GroupNorm's groups dividing every level's channels."""
    blocks, channels = len(config.down_block_types), config.block_out_channels
    must("block_out_channels", len(channels) == blocks and positive_integers(channels), f"{blocks} integers >= 1")
    for key in sizes:
        must(key, positive_integers([getattr(config, key)]), "an integer >= 1")
    must("norm_num_groups", all(c % config.norm_num_groups == 0 for c in channels), f"a divisor of each of {channels}")
