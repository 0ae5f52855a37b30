"""Every option of a generation, written once (`Options`), and its checks.

`Pipeline.__call__`, `img2img` and `denoise` take these as keywords, the command line fills the
same object, and `Pipeline.options` fills what was left at None from the model's defaults.
"""

from dataclasses import dataclass, fields
from pathlib import Path

from PIL import Image

from .module import describe, fits


@dataclass
class Options:
    """Every option of a generation, written once: what `Pipeline.__call__`, `img2img` and
    `denoise` take as keywords, and what the command line fills. None means the model's default
    (`Pipeline.options` fills it in)."""

    negative_prompt: str | None = None  # what to steer away from (None: as "", except SDXL's zeros, sdxl.py)
    steps: int | None = None  # denoising steps (default: the model folder's, else 50)
    guidance: float | None = None  # classifier-free guidance scale s (default: the folder's, else 7.5)
    seed: int = 0  # the seed of every random draw
    height: int | None = None  # pixels, a multiple of 8 (default: the image's for img2img, else the model's)
    width: int | None = None
    scheduler: str | None = None  # a name of schedulers.SCHEDULERS (default: the one the model's config names)
    eta: float = 0.0  # DDIM's noise (0: deterministic)
    clip_skip: int = 0  # encode the prompt this many layers before the text encoder's last
    long_prompt: str = "truncate"  # over 75 tokens: "truncate" (as diffusers) or "chunk"
    prompt_weights: bool | None = None  # AUTOMATIC1111's (word:1.3); None: where a text has brackets or BREAK
    num_images: int = 1  # text to image: this many images in one batch
    latents: object = None  # text to image: the initial noise, (N, 4, h, w), instead of the seed's
    image: object = None  # image to image: the starting picture (PIL image or a path)
    strength: float = 0.8  # image to image: how far to noise it, (0, 1] (inpainting's default: 1)
    mask: object = None  # inpainting: white where to paint over `image` (PIL image or a path)
    vae_tiling: bool = False  # decode images larger than the model's size in blended tiles
    # SDXL's size conditioning (sdxl.time_ids), (height, width) pairs: None means the picture's size
    original_size: tuple | None = None
    crop_top_left: tuple = (0, 0)
    target_size: tuple | None = None

    def check_types(self):
        """Raise a ValueError naming the first option whose type is not the one its field declares."""
        for name in ("steps", "num_images"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name))
        for field in fields(self):
            value = getattr(self, field.name)
            if not fits(value, field.type):
                raise ValueError(f"option {field.name} is {value!r:.80}, but it must be {describe(field.type)}")
        for name in ("image", "mask"):
            value = getattr(self, name)
            if not (value is None or isinstance(value, (str, Path, Image.Image))):
                raise ValueError(f"option {name} must be a PIL image or a picture file's path, not {type(value)}")
        if self.mask is not None and self.image is None:
            raise ValueError("option mask goes with image: the picture to inpaint")
        for name in ("original_size", "crop_top_left", "target_size"):
            pair, least = getattr(self, name), 0 if name == "crop_top_left" else 1
            if pair is not None and not (len(pair) == 2 and all(fits(v, int) and v >= least for v in pair)):
                raise ValueError(f"option {name} must be two integers >= {least}, (height, width), got {pair!r:.80}")
        if not (self.latents is None or hasattr(self.latents, "shape")):
            raise ValueError(f"option latents must be an array, not {type(self.latents).__name__}")

    def check(self):
        """Raise a ValueError naming the first option out of its range, and what it may be."""
        for name in ("steps", "num_images"):
            check_count(name, getattr(self, name))
        if self.long_prompt not in ("truncate", "chunk"):
            raise ValueError(f"long_prompt must be 'truncate' or 'chunk', got {self.long_prompt!r}")
        if self.clip_skip < 0:
            raise ValueError(f"clip_skip must be >= 0 (layers before the text encoder's last), got {self.clip_skip}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0 (0 is deterministic DDIM), got {self.eta}")
        if self.image is not None:
            self.check_image_to_image()

    def check_image_to_image(self):
        if self.num_images != 1:
            raise ValueError("num_images applies to text to image; img2img makes one image per call")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1] (1 ignores the image entirely), got {self.strength}")
        if int(self.steps * self.strength) < 1:
            raise ValueError(
                f"strength {self.strength} with {self.steps} steps leaves no denoising step "
                "(int(steps*strength) = 0): raise strength or steps"
            )


def check_count(name, value):
    if not fits(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
