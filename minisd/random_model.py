"""Stable Diffusion's components at their real sizes with random weights.

Real checkpoints cannot be downloaded on the machines that test minisd, so the benchmark
(bench.py), the roofline (roofline.py) and the tests build SD 1.5's (or SDXL's) text encoder,
UNet and VAE from the presets (presets.py) and fill them with random weights of a realistic spread.
"""

import numpy

from .clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from .presets import SD1
from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, VAEConfig
from .weights import load_module

COMPONENTS = {  # kind: (module class, config class, its key in a preset)
    "text": (CLIPTextModel, CLIPTextConfig, "text_encoder"),
    "text_2": (CLIPTextModelWithProjection, CLIPTextConfig, "text_encoder_2"),  # SDXL's second
    "unet": (UNet2DConditionModel, UNetConfig, "unet"),
    "vae": (AutoencoderKL, VAEConfig, "vae"),
}


def random_weights(module, seed=0, dtype="float32"):
    """{key: host array} for every slot of `module`: N(0, 1/fan_in) for matrices and kernels,
    scales near 1 and small shifts for the 1-D parameters (norms, biases); each cast to `dtype`
    as it is drawn (float16: SDXL's UNet never sits in memory in float32)."""
    rng = numpy.random.default_rng(seed)
    weights = {}
    for key, _, _, slot in module.named_slots():
        noise = rng.standard_normal(slot.shape, dtype=numpy.float32)
        if len(slot.shape) > 1:
            noise /= numpy.float32(numpy.sqrt(numpy.prod(slot.shape[1:])))
        elif key.endswith("weight"):
            noise = 1 + 0.1 * noise
        else:
            noise *= 0.1
        weights[key] = noise.astype(dtype, copy=False)
    return weights


def place(module, weights, backend):
    """Put `weights` into `module`'s slots on `backend`, as the loader does; returns the module."""
    load_module(module, weights, "random weights", backend)
    return module


def build(kind, backend, preset=SD1):
    """(module, its weights) of the preset's `kind` ("text", "text_2", "unet" or "vae") with random
    weights, drawn in the backend's weights dtype and placed on `backend`; the seed is fixed per
    kind, so equal calls give equal models."""
    module_class, config_class, key = COMPONENTS[kind]
    module = module_class(config_class.from_dict(preset[key]))
    weights = random_weights(module, seed=len(kind), dtype=backend.weights_dtype)
    return place(module, weights, backend), weights
