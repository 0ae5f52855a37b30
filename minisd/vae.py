"""The autoencoder (AutoencoderKL): pixels <-> latents, 8× smaller in height and width.

The encoder compresses a (3, H, W) image into a (4, H/8, W/8) latent (a mean and a log-variance:
a diagonal Gaussian); the decoder paints the image back from a latent. Diffusion runs in the
latent space, where it is 48× cheaper. Every GroupNorm here uses eps 1e-6.
"""

from dataclasses import dataclass

from .backend import array_module
from .blocks import Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D, check_levels, silu_in_place
from .layers import Conv2d, GroupNorm
from .module import Config, Module, Rules

EPS = 1e-6


@dataclass
class VAEConfig(Config):
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def check(self, source):
        """Ranges, consistency, and the blocks and activation SD's autoencoder uses."""
        must, blocks = Rules(source, self), len(self.down_block_types)
        down, up = list(self.down_block_types), list(self.up_block_types)
        must("down_block_types", blocks >= 1 and down == ["DownEncoderBlock2D"] * blocks, "'DownEncoderBlock2D's")
        must("up_block_types", up == ["UpDecoderBlock2D"] * blocks, f"{blocks} 'UpDecoderBlock2D's, as down")
        check_levels(
            must, self, ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups")
        )
        must("scaling_factor", self.scaling_factor > 0, "> 0")
        must("act_fn", self.act_fn == "silu", "'silu', as in SD")


class AutoencoderKL(Module):
    def __init__(self, config: VAEConfig):
        self.config = config
        latent = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = Conv2d(2 * latent, 2 * latent, 1)
        if config.use_post_quant_conv:
            self.post_quant_conv = Conv2d(latent, latent, 1)

    def encode(self, images):
        """(B, 3, H, W) in [-1, 1] -> posterior mean and log-variance, each (B, 4, H/8, W/8)."""
        moments = self.encoder(images)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        latent = self.config.latent_channels
        mean, logvar = moments[:, :latent], moments[:, latent:]
        return mean, logvar.clip(-30.0, 20.0)

    def decode(self, latents, tiled=False):
        """(B, 4, h, w) unscaled latents -> (B, 3, 8h, 8w) images, roughly in [-1, 1].

        tiled=True decodes latents larger than the training size in overlapping tiles of that
        size (see tiled_decode), so memory stays that of one tile however large the image.
        """
        if tiled and max(latents.shape[2:]) > self.tile_latent_size:
            return self.tiled_decode(latents)
        if self.config.use_post_quant_conv:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    @property
    def scale_factor(self):
        """How much smaller the latents are than the image, in height and width: 8 in SD."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def tile_latent_size(self):
        """Latent side of one tile: the training image size over the downsampling (512 / 8 = 64)."""
        return self.config.sample_size // self.scale_factor

    def tiled_decode(self, latents, overlap=0.25):
        """Decode in tiles of tile_latent_size latents that overlap by `overlap` of a tile, as
        diffusers' AutoencoderKL.tiled_decode does (same tiles, same blend, same picture).

        Each tile is decoded on its own, so its GroupNorms see only the tile: neighbouring
        tiles disagree slightly where they meet. Where a tile overlaps the one above and the one
        to the left, it fades in linearly over the overlap (blend), which hides the seam; then
        each tile keeps its first (1 - overlap) of a tile in each direction.
        """
        xp = array_module(latents)
        size = self.tile_latent_size
        stride = int(size * (1 - overlap))  # latents from one tile's start to the next
        extent = int(self.config.sample_size * overlap)  # pixels over which neighbours are blended
        keep = self.config.sample_size - extent  # pixels each tile keeps, in each direction
        rows = [
            [
                self.decode(latents[:, :, top : top + size, left : left + size])
                for left in range(0, latents.shape[3], stride)
            ]
            for top in range(0, latents.shape[2], stride)
        ]
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    blend(rows[i - 1][j], tile, extent)
                if j > 0:  # the same blend on the tile and its left neighbour with rows and columns swapped
                    blend(row[j - 1].swapaxes(2, 3), tile.swapaxes(2, 3), extent)
        return xp.concatenate(
            [xp.concatenate([tile[:, :, :keep, :keep] for tile in row], axis=3) for row in rows], axis=2
        )  # (B, 3, 8h, 8w)


def blend(above, tile, extent):
    """Fade `tile` (B, C, H, W) in over the last `extent` rows of the tile `above` it, in place:
    row k of the overlap is above·(1 - k/extent) + tile·k/extent."""
    xp = array_module(tile)
    extent = min(above.shape[2], tile.shape[2], extent)
    ramp = xp.arange(extent, dtype="float64")[:, None] / extent  # (extent, 1): one weight per row
    overlap_above = above[:, :, above.shape[2] - extent :]
    tile[:, :, :extent] = overlap_above * (1 - ramp).astype(tile.dtype) + tile[:, :, :extent] * ramp.astype(tile.dtype)


class Encoder(Module):
    def __init__(self, config):
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down_blocks = [
            DownEncoderBlock2D(channels[max(i - 1, 0)], channels[i], config, last=i == len(channels) - 1)
            for i in range(len(channels))
        ]
        self.mid_block = UNetMidBlock2D(channels[-1], config)
        self.conv_norm_out = GroupNorm(groups, channels[-1], EPS)
        self.conv_out = Conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1)

    def __call__(self, x):  # (B, 3, H, W) -> (B, 2·4, H/8, W/8)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(silu_in_place(self.conv_norm_out(x)))


class Decoder(Module):
    def __init__(self, config):
        channels, groups = list(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(channels[0], config)
        self.up_blocks = [
            UpDecoderBlock2D(channels[max(i - 1, 0)], channels[i], config, last=i == len(channels) - 1)
            for i in range(len(channels))
        ]
        self.conv_norm_out = GroupNorm(groups, channels[-1], EPS)
        self.conv_out = Conv2d(channels[-1], config.out_channels, 3, padding=1)

    def __call__(self, z):  # (B, 4, h, w) -> (B, 3, 8h, 8w)
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu_in_place(self.conv_norm_out(x)))


class DownEncoderBlock2D(Module):
    def __init__(self, in_channels, out_channels, config, last):
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, config.norm_num_groups, EPS)
            for i in range(config.layers_per_block)
        ]
        if not last:
            self.downsamplers = [Downsample2D(out_channels, padding=0)]

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)  # (B, C, H/2, W/2)
        return x


class UpDecoderBlock2D(Module):
    def __init__(self, in_channels, out_channels, config, last):
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, config.norm_num_groups, EPS)
            for i in range(config.layers_per_block + 1)
        ]
        if not last:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x)  # (B, C, 2H, 2W)
        return x


class UNetMidBlock2D(Module):
    """ResNet → single-head self-attention over all pixels → ResNet."""

    def __init__(self, channels, config):
        groups = config.norm_num_groups
        if config.mid_block_add_attention:
            self.attentions = [SpatialSelfAttention(channels, groups, EPS)]
        self.resnets = [ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2)]

    def __call__(self, x):
        x = self.resnets[0](x)
        if hasattr(self, "attentions"):
            x = self.attentions[0](x)
        return self.resnets[1](x)
