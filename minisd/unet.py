"""The noise predictor: a UNet that sees noisy latents, the timestep and the text.

Down blocks shrink the latent image while widening the channels, a middle block works at the
smallest size, up blocks grow it back, each taking the matching down-block output through a
skip connection. ResNet blocks carry the timestep; spatial transformers let every latent pixel
attend to the other pixels (self-attention) and to the prompt's tokens (cross-attention).
Everything about the shape comes from unet/config.json (UNet2DConditionModel).

Two later additions enter through the time embedding, which every ResNet block reads:
SDXL's *added conditioning* (`addition_embed_type: "text_time"`): the pooled prompt vector and
six "time ids" (original size, crop top-left, target size), each id embedded like a timestep,
through an MLP of their own (`add_embedding`); and the guidance-scale embedding of LCM's
distilled UNets (`time_cond_proj_dim`), projected and added before the time MLP.
"""

import math
from dataclasses import dataclass

from . import ops
from .backend import array_module
from .blocks import Attention, Downsample2D, ResnetBlock2D, Upsample2D, check_levels, silu_in_place
from .errors import ConfigError
from .layers import Conv2d, GroupNorm, LayerNorm, Linear
from .module import Config, Module, Rules, positive_integers


@dataclass
class UNetConfig(Config):
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    transformer_layers_per_block: int | tuple = 1
    downsample_padding: int = 1
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    # diffusers' historical naming: in SD configs `attention_head_dim` is the number of heads
    # (SD1: 8 everywhere); `num_attention_heads`, when set, takes precedence.
    attention_head_dim: int | tuple = 8
    num_attention_heads: int | tuple | None = None
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    # Options of UNet2DConditionModel that SD 1.x/2.x leave at these values; minisd implements
    # only these and refuses a config that changes them (see `check_supported`).
    center_input_sample: bool = False
    mid_block_scale_factor: float = 1.0
    only_cross_attention: bool = False
    dual_cross_attention: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    time_cond_proj_dim: int | None = None  # LCM: the guidance scale w, embedded to this width
    addition_time_embed_dim: int | None = None  # SDXL: the width each time id is embedded to (256)
    projection_class_embeddings_input_dim: int | None = None  # SDXL: pooled text + 6 time ids (2816)
    time_embedding_type: str = "positional"
    resnet_time_scale_shift: str = "default"
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    attention_type: str = "default"
    encoder_hid_dim: int | None = None
    num_class_embeds: int | None = None

    def per_block(self, value):
        """A per-down-block list from a value a config may give once or per block."""
        count = len(self.down_block_types)
        return list(value) if isinstance(value, (list, tuple)) else [value] * count

    def check(self, source):
        """Ranges and consistency, then what SD 1.x/2.x leave fixed (`check_supported`)."""
        must, blocks = Rules(source, self), len(self.down_block_types)
        for key in ("down_block_types", "up_block_types"):
            must(key, all(isinstance(name, str) for name in getattr(self, key)), "a list of block names")
        must("up_block_types", blocks >= 1 and len(self.up_block_types) == blocks, f"{blocks} blocks, as down")
        check_levels(must, self, ("in_channels", "out_channels", "sample_size", "layers_per_block", "norm_num_groups"))
        for key in ("attention_head_dim", "num_attention_heads", "cross_attention_dim", "transformer_layers_per_block"):
            per_block = [] if getattr(self, key) is None else self.per_block(getattr(self, key))
            must(key, len(per_block) in (0, blocks) and positive_integers(per_block), f">= 1, once or {blocks} times")
        for width, heads in zip(self.block_out_channels, self.heads):
            must("attention heads", width % heads == 0, f"a divisor of the block's {width} channels", heads)
        if self.addition_embed_type == "text_time":
            for key in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
                must(key, positive_integers([getattr(self, key) or 0]), 'an integer >= 1 with "text_time"')
        must("time_cond_proj_dim", self.time_cond_proj_dim is None or self.time_cond_proj_dim >= 1, "null or >= 1")
        check_supported(self, source)

    @property
    def heads(self):
        return self.per_block(self.num_attention_heads or self.attention_head_dim)


SUPPORTED_BLOCKS = {"CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}


def check_supported(config: UNetConfig, source="unet/config.json"):
    """Raise if the config asks for a UNet feature that SD 1.x/2.x, SDXL and LCM do not use."""
    defaults = UNetConfig()
    fixed = [
        "center_input_sample",
        "mid_block_scale_factor",
        "only_cross_attention",
        "dual_cross_attention",
        "class_embed_type",
        "time_embedding_type",
        "resnet_time_scale_shift",
        "conv_in_kernel",
        "conv_out_kernel",
        "attention_type",
        "mid_block_type",
        "act_fn",
        "encoder_hid_dim",
        "num_class_embeds",
    ]
    changed = [f"{key}={getattr(config, key)!r}" for key in fixed if getattr(config, key) != getattr(defaults, key)]
    blocks = set(config.down_block_types) | set(config.up_block_types)
    changed += [f"block type {name!r}" for name in sorted(blocks - SUPPORTED_BLOCKS)]
    if config.addition_embed_type not in (None, "text_time"):
        changed.append(f"addition_embed_type={config.addition_embed_type!r} (SDXL's is 'text_time')")
    if changed:
        raise ConfigError(
            f"{source} asks for UNet features minisd does not implement "
            f"(it covers Stable Diffusion 1.x, 2.x and XL): {', '.join(changed)}"
        )


class UNet2DConditionModel(Module):
    """(noisy latents (B, 4, h, w), timestep, text (B, 77, D)) -> predicted noise (B, 4, h, w)

    SDXL's UNet also takes `text_embeds` (B, 1280), the pooled prompt, and `time_ids` (B, 6);
    an LCM UNet takes `timestep_cond` (B, time_cond_proj_dim), the embedded guidance scale.
    """

    def __init__(self, config: UNetConfig):
        check_supported(config)
        self.config = config
        channels = config.block_out_channels
        temb_dim = 4 * channels[0]
        self.time_embedding = TimestepEmbedding(channels[0], temb_dim, config.time_cond_proj_dim)
        if config.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb_dim)
        self.conv_in = Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down_blocks = make_down_blocks(config, temb_dim)
        self.mid_block = UNetMidBlock2DCrossAttn(config, temb_dim)
        self.up_blocks = make_up_blocks(config, temb_dim)
        self.conv_norm_out = GroupNorm(config.norm_num_groups, channels[0], config.norm_eps)
        self.conv_out = Conv2d(channels[0], config.out_channels, 3, padding=1)

    def __call__(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, timestep_cond=None):
        emb = self.embed_time(sample, timestep, timestep_cond)  # (B, 4·C0)
        if hasattr(self, "add_embedding"):
            emb = emb + self.embed_added(text_embeds, time_ids).astype(emb.dtype)

        x = self.conv_in(sample)  # (B, C0, h, w)
        skips = [x]
        for block in self.down_blocks:
            x, outputs = block(x, emb, encoder_hidden_states)
            skips += outputs
        x = self.mid_block(x, emb, encoder_hidden_states)
        for block in self.up_blocks:
            block_skips, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if skips else None
            x = block(x, block_skips, emb, encoder_hidden_states, upsample_size)
        return self.conv_out(silu_in_place(self.conv_norm_out(x)))  # (B, 4, h, w)

    def embed_time(self, sample, timestep, timestep_cond=None):
        """The timestep's sinusoidal embedding through the time MLP: (B, 4·C0)."""
        if (timestep_cond is None) != (self.config.time_cond_proj_dim is None):
            raise ValueError("timestep_cond (the embedded guidance scale) goes with a UNet with time_cond_proj_dim")
        xp = array_module(sample)
        timesteps = xp.broadcast_to(xp.asarray(timestep), (sample.shape[0],))
        config = self.config
        t_emb = timestep_embedding(timesteps, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
        return self.time_embedding(t_emb.astype(sample.dtype), timestep_cond)

    def embed_added(self, text_embeds, time_ids):
        """SDXL's added conditioning: [pooled text (B, P), each time id embedded (B, 6·256)] through
        its MLP -> (B, 4·C0), added to the time embedding."""
        if text_embeds is None or time_ids is None:
            raise ValueError("an SDXL UNet (addition_embed_type 'text_time') needs text_embeds and time_ids")
        xp, config = array_module(text_embeds), self.config
        ids = time_ids.reshape(-1)  # (B·6,)
        time_embeds = timestep_embedding(ids, config.addition_time_embed_dim, config.flip_sin_to_cos, config.freq_shift)
        time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)  # (B, 6·256)
        added = xp.concatenate([text_embeds, time_embeds.astype(text_embeds.dtype)], axis=-1)  # (B, 2816)
        return self.add_embedding(added)


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, freq_shift=0):
    """Sinusoidal embedding of the timestep: (B,) -> (B, dim).

    Frequencies fall geometrically from 1 to 1/10000: f_i = exp(-ln(10000)·i / (dim/2 - shift)).
    SD puts the cosines first (flip_sin_to_cos).
    """
    xp = array_module(timesteps)
    half = dim // 2
    exponent = xp.float32(-math.log(10000)) * xp.arange(half, dtype="float32")
    frequencies = xp.exp(exponent / xp.float32(half - freq_shift))
    angles = timesteps.astype("float32")[:, None] * frequencies[None, :]  # (B, half)
    sin, cos = xp.sin(angles), xp.cos(angles)
    return xp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


def guidance_embedding(w, dim):
    """LCM's embedding of the guidance scale w (diffusers' get_guidance_scale_embedding): (B,) -> (B, dim).

    The sinusoidal embedding of 1000·w, sines first, frequencies exp(-i·ln(10000)/(dim/2 - 1)),
    computed in diffusers' order so that the large angles round alike.
    """
    xp = array_module(w)
    half = dim // 2
    step = xp.log(xp.float32(10000)) / xp.float32(half - 1)
    frequencies = xp.exp(xp.arange(half, dtype="float32") * -step)
    angles = (w.astype("float32") * xp.float32(1000))[:, None] * frequencies[None, :]  # (B, half)
    embedding = xp.concatenate([xp.sin(angles), xp.cos(angles)], axis=1)
    return xp.pad(embedding, ((0, 0), (0, dim % 2)))


class TimestepEmbedding(Module):
    """Linear → SiLU → Linear on the sinusoidal embedding; with `cond_dim`, a projected
    condition (LCM's guidance embedding) is added to the input first."""

    def __init__(self, in_dim, out_dim, cond_dim=None):
        if cond_dim is not None:
            self.cond_proj = Linear(cond_dim, in_dim, bias=False)
        self.linear_1 = Linear(in_dim, out_dim)
        self.linear_2 = Linear(out_dim, out_dim)

    def __call__(self, x, condition=None):
        if condition is not None:
            x = x + self.cond_proj(condition.astype(x.dtype))
        return self.linear_2(ops.silu(self.linear_1(x)))


# ---------------------------------------------------------------- spatial transformer


class Transformer2DModel(Module):
    """Attention over the pixels of a feature map: norm, project in, transformer blocks, out.

    SD1 projects with 1×1 convs before flattening; SD2 (use_linear_projection) flattens first
    and projects with Linear layers. The result is added back to the input.
    """

    def __init__(self, channels, heads, context_dim, depth, config):
        head_dim = channels // heads
        inner = heads * head_dim
        self.use_linear_projection = config.use_linear_projection
        self.norm = GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        if self.use_linear_projection:
            self.proj_in = Linear(channels, inner)
        else:
            self.proj_in = Conv2d(channels, inner, 1)
        self.transformer_blocks = [BasicTransformerBlock(inner, heads, head_dim, context_dim) for _ in range(depth)]
        if self.use_linear_projection:
            self.proj_out = Linear(inner, channels)
        else:
            self.proj_out = Conv2d(inner, channels, 1)

    def __call__(self, x, context):
        batch, channels, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        h = h.transpose(0, 2, 3, 1).reshape(batch, height * width, -1)  # (B, h·w, C): pixels as tokens
        if self.use_linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, -1).transpose(0, 3, 1, 2)  # (B, C, h, w)
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return h + x


class BasicTransformerBlock(Module):
    """LayerNorm → self-attention, LayerNorm → cross-attention on the text, LayerNorm → GEGLU MLP."""

    def __init__(self, dim, heads, head_dim, context_dim):
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def __call__(self, x, context):  # (B, T, dim) -> (B, T, dim)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class FeedForward(Module):
    """GEGLU MLP: dim -> 2·4·dim, x · GELU(gate), -> dim. Keys ff.net.0.proj and ff.net.2
    (ff.net.1 is training-time dropout: no weights)."""

    def __init__(self, dim, mult=4):
        self.net = {0: GEGLU(dim, mult * dim), 2: Linear(mult * dim, dim)}

    def __call__(self, x):
        return self.net[2](self.net[0](x))


class GEGLU(Module):
    def __init__(self, dim, inner):
        self.proj = Linear(dim, 2 * inner)

    def __call__(self, x):
        return ops.geglu(self.proj(x))  # (B, T, 2·inner) -> (B, T, inner)


# ---------------------------------------------------------------- down, mid and up blocks


class DownBlock2D(Module):
    """ResNet blocks (each optionally followed by a spatial transformer), then a downsample.

    Returns the output and every intermediate feature map: the up path's skip connections.
    """

    def __init__(self, in_channels, out_channels, temb_dim, config, index, cross_attention):
        groups, eps = config.norm_num_groups, config.norm_eps
        layers = config.layers_per_block
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_dim, groups, eps)
            for i in range(layers)
        ]
        if cross_attention:
            self.attentions = spatial_transformers(config, index, out_channels, layers)
        if index < len(config.down_block_types) - 1:
            self.downsamplers = [Downsample2D(out_channels, config.downsample_padding)]

    def __call__(self, x, temb, context):
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x, context)
            outputs.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)  # (B, C, h/2, w/2)
            outputs.append(x)
        return x, outputs


class UpBlock2D(Module):
    """ResNet blocks on [x, skip] concatenated along channels (with optional transformers),
    then an upsample to the size of the next skip connection."""

    def __init__(self, in_channels, prev_channels, out_channels, temb_dim, config, index, cross_attention):
        groups, eps = config.norm_num_groups, config.norm_eps
        layers = config.layers_per_block + 1
        self.resnets = []
        for i in range(layers):
            skip_channels = in_channels if i == layers - 1 else out_channels
            resnet_in = prev_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock2D(resnet_in + skip_channels, out_channels, temb_dim, groups, eps))
        if cross_attention:  # up block i mirrors down block n-1-i
            mirrored = len(config.down_block_types) - 1 - index
            self.attentions = spatial_transformers(config, mirrored, out_channels, layers)
        if index < len(config.up_block_types) - 1:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x, skips, temb, context, upsample_size=None):
        xp = array_module(x)
        for i, resnet in enumerate(self.resnets):
            x = xp.concatenate([x, skips.pop()], axis=1)  # (B, C + C_skip, h, w)
            x = resnet(x, temb)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x, context)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, upsample_size)  # (B, C, 2h, 2w)
        return x


class UNetMidBlock2DCrossAttn(Module):
    """ResNet → spatial transformer → ResNet at the smallest resolution."""

    def __init__(self, config, temb_dim):
        channels = config.block_out_channels[-1]
        groups, eps = config.norm_num_groups, config.norm_eps
        self.attentions = spatial_transformers(config, -1, channels, 1)
        self.resnets = [ResnetBlock2D(channels, channels, temb_dim, groups, eps) for _ in range(2)]

    def __call__(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


def spatial_transformers(config, block, channels, count):
    """`count` spatial transformers with the heads, text width and depth of down block `block`."""
    heads = config.heads[block]
    context_dim = config.per_block(config.cross_attention_dim)[block]
    depth = config.per_block(config.transformer_layers_per_block)[block]
    return [Transformer2DModel(channels, heads, context_dim, depth, config) for _ in range(count)]


def make_down_blocks(config, temb_dim):
    blocks, out_channels = [], config.block_out_channels[0]
    for index, block_type in enumerate(config.down_block_types):
        in_channels, out_channels = out_channels, config.block_out_channels[index]
        cross_attention = block_type.startswith("CrossAttn")
        blocks.append(DownBlock2D(in_channels, out_channels, temb_dim, config, index, cross_attention))
    return blocks


def make_up_blocks(config, temb_dim):
    reversed_channels = list(reversed(config.block_out_channels))
    blocks, out_channels = [], reversed_channels[0]
    for index, block_type in enumerate(config.up_block_types):
        prev_channels, out_channels = out_channels, reversed_channels[index]
        in_channels = reversed_channels[min(index + 1, len(reversed_channels) - 1)]
        cross_attention = block_type.startswith("CrossAttn")
        blocks.append(UpBlock2D(in_channels, prev_channels, out_channels, temb_dim, config, index, cross_attention))
    return blocks
