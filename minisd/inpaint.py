"""Inpainting: paint over the masked part of a picture, keep the rest, as diffusers'
StableDiffusionInpaintPipeline does.

The mask is white where to paint (grey level >= 0.5 after resizing, as diffusers binarizes it).
Two kinds of checkpoints:

- an inpainting UNet (9 input channels) sees, beside the latents, the mask at latent size and
  the latents of the picture with the masked part blacked out: it learned to fill the hole;
- an ordinary UNet (4 channels) paints everywhere, and after every step the known region is
  put back: the picture's latents noised to the next step's level, outside the mask.

Every random draw diffusers makes is made here in the same order (the picture's latents, the
noise, the masked picture's latents, even where a 4-channel UNet does not use them), so a seed
gives diffusers' picture.
"""

from dataclasses import dataclass

import numpy
from PIL import Image

from .images import from_pil


def mask_pixels(mask, width, height):
    """A mask picture -> (1, 1, H, W) of 0 (keep) and 1 (paint): grey, resized (Lanczos), cut at 0.5."""
    grey = mask.convert("L")
    if grey.size != (width, height):
        grey = grey.resize((width, height), Image.LANCZOS)
    values = numpy.asarray(grey, numpy.float32) / 255  # (H, W)
    return (values >= 0.5).astype(numpy.float32)[None, None]


@dataclass
class Inpainting:
    """What the denoising loop needs to inpaint: the mask at latent size (1, 1, h, w), the UNet's
    extra input channels (9-channel UNets), and the picture's latents and noise (4-channel ones)."""

    mask: object
    extra: object  # (1, 5, h, w): the mask and the masked picture's latents, or None
    image_latents: object
    noise: object

    def keep_known(self, latents, scheduler, timesteps, index):
        """After step `index`, a 4-channel UNet's latents outside the mask: the picture's, at the next level."""
        if self.extra is not None:
            return latents
        known = self.image_latents
        if index < len(timesteps) - 1:
            known = scheduler.add_noise(known, self.noise, timesteps[index + 1])
        return (1 - self.mask) * known + self.mask * latents


def start(pipe, generator, image, mask, scheduler, timesteps, strength_max):
    """(first latents, Inpainting) for pipe's UNet, the picture and mask at the generation's size."""
    xp, channels = pipe.backend.xp, pipe.unet.config.in_channels
    if channels not in (4, 9):
        raise ValueError(f"inpainting needs a UNet of 4 or 9 input channels, this one has {channels}")
    pixels = from_pil(image)  # (1, 3, H, W) in [-1, 1]
    image_latents = None
    if channels == 4 or not strength_max:
        image_latents = pipe.sample_latents(generator, pixels)
    factor, (width, height) = pipe.vae_scale_factor, image.size
    shape = (1, pipe.vae.config.latent_channels, height // factor, width // factor)
    noise = pipe.backend.asarray(generator.standard_normal(shape, numpy.float32))
    if strength_max:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[0])
    paint = mask_pixels(mask, *image.size)  # (1, 1, H, W)
    masked_latents = pipe.sample_latents(generator, pixels * (paint < 0.5))
    small = pipe.backend.asarray(paint[:, :, ::factor, ::factor], numpy.float32)  # nearest, as torch's interpolate
    extra = xp.concatenate([small, masked_latents], axis=1) if channels == 9 else None
    return latents, Inpainting(small, extra, image_latents, noise)
