"""Pictures in and out: image files opened safely, PIL images <-> the VAE's pixel arrays.

A picture given to image-to-image may come from anywhere; Pillow decodes it, and a file it
cannot decode, or one so large it may be a decompression bomb, is refused with a ValueError
naming the file.
"""

import warnings

import numpy
from PIL import Image

# Pillow refuses pictures over twice this many pixels as decompression bombs and only warns
# between; minisd refuses from here (89 million pixels, Pillow's own threshold).
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS


def open_image(path):
    """The picture in file `path`, decoded; a ValueError naming the file if it cannot be one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{path} has more than {MAX_IMAGE_PIXELS} pixels: Pillow refuses it as a possible "
                         "decompression bomb; resize the picture first") from None  # fmt: skip
    except (OSError, SyntaxError, ValueError) as error:  # what Pillow raises for a file it cannot decode
        raise ValueError(f"{path} is not a picture Pillow can read (PNG, JPEG, WebP, ...): {error}") from None
    return image


def from_pil(image):
    """PIL RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    pixels = numpy.asarray(image.convert("RGB"), dtype=numpy.float32) / 255.0  # (H, W, 3)
    return (pixels * 2 - 1).transpose(2, 0, 1)[None]


def to_pil(images):
    """(1, 3, H, W) in [-1, 1] -> PIL image, rounding as diffusers does."""
    pixels = ((images[0] / 2 + 0.5).clip(0, 1) * 255).round().astype(numpy.uint8)
    return Image.fromarray(pixels.transpose(1, 2, 0))  # (H, W, 3)
