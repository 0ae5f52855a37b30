"""Live previews: the latents of any step as a small RGB picture, without the VAE.

A latent pixel's four channels already say roughly what colour its 8×8 patch of the picture
will be, and a linear map says it well enough to watch a picture form:

    rgb = latents · M + b        per latent pixel: (4,) · (4, 3) + (3,) -> (3,) in about [-1, 1]

one pixel of preview per latent pixel (1/8 of the picture's size), for the cost of a 4×3
product. `fit` finds M and b by least squares from latents and their real decodes, each
decode averaged over the 8×8 patch of every latent pixel; the embedded model ships its own
(weights/minisd-shapes/minisd.json, `"preview"`, made by weights/training/fit_preview.py).
"""

import numpy
from PIL import Image

# Stable Diffusion 1.x and 2.x (one VAE): the factors ComfyUI publishes for SD 1.5's latents
# (comfy/latent_formats.py, SD15.latent_rgb_factors), rows the four latent channels, columns R, G, B.
SD_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)  # fmt: skip
# SDXL's VAE has its own latent space: ComfyUI's factors and bias for it (comfy/latent_formats.py,
# SDXL.latent_rgb_factors and latent_rgb_factors_bias). SD's factors on SDXL latents would give
# the right shapes in the wrong colours.
SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)  # fmt: skip
SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def preview(latents, factors=SD_FACTORS, bias=(0.0, 0.0, 0.0)):
    """The first image of latents (N, 4, h, w) (NumPy) as an (h, w) RGB PIL image."""
    rgb = numpy.moveaxis(numpy.asarray(latents[0], numpy.float32), 0, -1) @ numpy.asarray(factors, numpy.float32)
    rgb += numpy.asarray(bias, numpy.float32)  # (h, w, 3) in about [-1, 1]
    return Image.fromarray(((rgb / 2 + 0.5).clip(0, 1) * 255).round().astype(numpy.uint8))


def fit(latents, pixels):
    """(M (4, 3), b (3,)) minimising ‖latents · M + b − pixels‖² over every latent pixel, where
    `pixels` (N, 3, H, W) are the latents' (N, 4, h, w) decodes in [-1, 1], averaged per patch."""
    factor = pixels.shape[2] // latents.shape[2]
    n, _, h, w = latents.shape
    patches = pixels.reshape(n, 3, h, factor, w, factor).mean(axis=(3, 5))  # (N, 3, h, w)
    x = numpy.moveaxis(latents, 1, -1).reshape(-1, latents.shape[1])  # (N·h·w, 4)
    x = numpy.concatenate([x, numpy.ones((len(x), 1))], axis=1)  # a column of ones: the bias
    y = numpy.moveaxis(patches, 1, -1).reshape(-1, 3)  # (N·h·w, 3)
    solution = numpy.linalg.lstsq(x.astype(numpy.float64), y.astype(numpy.float64), rcond=None)[0]  # (5, 3)
    return solution[:-1], solution[-1]
