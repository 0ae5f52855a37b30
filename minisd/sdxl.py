"""SDXL's conditioning: what changed after the article's model, on the way into the UNet.

Stable Diffusion XL keeps the three components and the denoising loop, and changes what the
UNet is told:

- **two text encoders** read the prompt: CLIP ViT-L (768 wide) and OpenCLIP ViT-bigG (1280
  wide), each a layer before its last and without the final LayerNorm. Their vectors are
  concatenated token by token: the UNet's cross-attention reads (77, 768 + 1280 = 2048);
- the second encoder's **pooled** vector, the projected state of the end token (1280), sums
  up the whole prompt;
- six **time ids**, (original height, width, crop top, left, target height, width): the size
  the training picture had and how it was cropped. Asking for an original size of 1024² and
  no crop asks for a sharp, centred picture.

The pooled vector and the time ids enter through the time embedding (unet.py, `embed_added`).
Without a negative prompt, a folder that sets `force_zeros_for_empty_prompt` (SDXL base does)
guides away from zeros instead of from the encoded empty text, as diffusers does; an explicit
negative prompt, "" included, is encoded as text.
"""

from dataclasses import dataclass

import numpy

from .backend import Backend
from .ops import fast_paths


@dataclass
class SDXLText:
    """The two tokenizers and text encoders of SDXL, and the folder's empty-negative rule."""

    tokenizers: tuple  # (CLIP ViT-L's, OpenCLIP's: it pads with "!")
    text_encoders: tuple  # (CLIPTextModel, CLIPTextModelWithProjection)
    backend: Backend
    force_zeros_for_empty_prompt: bool = True

    def encode(self, prompt, negative_prompt, guided, clip_skip=0, fast=True):
        """(context ([1 negative;] 1 prompt, 77, 2048), pooled ([1;] 1, 1280)); the negative row
        first when `guided` (classifier-free guidance), as in SD 1/2."""
        context, pooled = self.vectors(prompt, clip_skip, fast)
        if not guided:
            return context, pooled
        xp = self.backend.xp
        if negative_prompt is None and self.force_zeros_for_empty_prompt:
            negative, negative_pooled = xp.zeros_like(context), xp.zeros_like(pooled)
        else:
            negative, negative_pooled = self.vectors(negative_prompt or "", 0, fast)  # like diffusers: no clip_skip
        return xp.concatenate([negative, context]), xp.concatenate([negative_pooled, pooled])

    def vectors(self, text, clip_skip, fast):
        """One text through both encoders: (1, 77, 768 + 1280) and the pooled vector (1, 1280)."""
        first, second = self.text_encoders
        ids = [self.backend.asarray(tokenizer.encode(text), dtype="int64") for tokenizer in self.tokenizers]
        with fast_paths(fast):
            states = first.penultimate(ids[0], clip_skip)  # (1, 77, 768)
            states_2, pooled = second.penultimate_and_pooled(ids[1], clip_skip)  # (1, 77, 1280), (1, 1280)
        return self.backend.xp.concatenate([states, states_2], axis=-1), pooled


def time_ids(options):
    """SDXL's six micro-conditioning numbers from the options: original (h, w), crop (top, left),
    target (h, w). By default the picture asks to be what training saw at its best: original =
    target = the size being generated, not cropped (diffusers' defaults)."""
    size = (options.height, options.width)
    original, target = tuple(options.original_size or size), tuple(options.target_size or size)
    return numpy.array([*original, *options.crop_top_left, *target], dtype=numpy.float32)  # (6,)
