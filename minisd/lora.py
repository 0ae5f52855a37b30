"""LoRA: a low-rank update someone trained, added to a model's weights.

A LoRA file holds, for some layers of the UNet and the text encoder, two thin matrices: A
("down", r × in) and B ("up", out × r), with r much smaller than the layer. The layer's
weight becomes

    W' = W + s · (α / r) · B A          (a convolution's kernels alike, A and B flattened)

with s the scale you choose and α the file's own factor (r when it gives none). Two layouts
are shared, both .safetensors:

    kohya / AUTOMATIC1111   lora_unet_<path with _>.lora_down.weight, .lora_up.weight, .alpha
                            lora_te_<path with _>...   (the text encoder; SDXL's: lora_te1_, lora_te2_)
    diffusers / PEFT        unet.<path>.lora_A.weight, unet.<path>.lora_B.weight
                            text_encoder.<path>...     (α = r; SDXL's second: text_encoder_2.)

where <path> is the layer's checkpoint key, which minisd's module paths are. The update is
fused into the weights (computed in float32); the weights it changed are kept, so unloading
gives the model back bit for bit. Every key of the file must name a layer of the model.
"""

import re

import numpy

from .errors import WeightsError
from .layers import Conv2d, Linear
from .safetensors_file import read_safetensors

KOHYA = re.compile(r"(lora_unet|lora_te1|lora_te2|lora_te)_(\w+?)\.(lora_down\.weight|lora_up\.weight|alpha)")
PEFT = re.compile(r"(unet|text_encoder_2|text_encoder)\.([\w.]+?)\.(lora_A\.weight|lora_B\.weight)")
COMPONENTS = {
    "lora_unet": "unet",
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
    "unet": "unet",
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder_2",
}
PART = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "alpha": "alpha",
    "lora_A.weight": "down",
    "lora_B.weight": "up",
}


def read_lora(path, layers):
    """{(layer key, layer): {"down", "up", "alpha"}} of a LoRA file, `layers` from layers_by_name.
    A key naming no layer is an error."""
    updates, unknown = {}, []
    for key, tensor in read_safetensors(path).items():
        match = KOHYA.fullmatch(key) or PEFT.fullmatch(key)
        found = layers.get((COMPONENTS[match.group(1)], match.group(2))) if match else None
        if found is None:
            unknown.append(key)
            continue
        updates.setdefault(found, {})[PART[match.group(3)]] = numpy.asarray(tensor)
    if unknown:
        shown = ", ".join(sorted(unknown)[:10]) + (" ..." if len(unknown) > 10 else "")
        raise WeightsError(
            f"{path}: {len(unknown)} keys name no layer of this model: {shown} (a LoRA for another "
            "model, or a layout minisd does not read: kohya lora_unet_/lora_te_ or diffusers/PEFT)"
        )
    incomplete = [key for (key, _), parts in updates.items() if not {"down", "up"} <= set(parts)]
    if incomplete:
        raise WeightsError(f"{path}: layers with only one of the two LoRA matrices: {', '.join(incomplete[:10])}")
    return updates


def layers_by_name(components):
    """{(component, name): (layer key, layer)} for every Linear and Conv2d, under its checkpoint
    key and under its kohya name (the key with `_` for `.`)."""
    layers = {}
    for component, module in components.items():
        for key, layer in module.named_modules():
            if isinstance(layer, (Linear, Conv2d)):
                layers[(component, key)] = layers[(component, key.replace(".", "_"))] = (key, layer)
    return layers


def delta(path, layer, weight_shape, down, up, alpha, scale):
    """s · (α / r) · B A, shaped like the layer's weight, in float32."""
    shapes_fit = min(down.ndim, up.ndim) >= 2 and down.size and up.size and up.shape[1] == down.shape[0]
    if not shapes_fit or (alpha is not None and alpha.size != 1):
        alpha_shape = "" if alpha is None else f", alpha {alpha.shape}"
        raise WeightsError(
            f"{path}: the LoRA for {layer} has down {down.shape}, up {up.shape}{alpha_shape}; a LoRA has down "
            "(r, in[, k, k]), up (out, r[, 1, 1]) with r >= 1, and one number alpha"
        )
    rank = down.shape[0]
    product = up.reshape(up.shape[0], -1).astype(numpy.float32) @ down.reshape(rank, -1).astype(numpy.float32)
    if product.size != int(numpy.prod(weight_shape)) or up.shape[0] != weight_shape[0]:
        raise WeightsError(
            f"{path}: the LoRA for {layer} makes a {product.shape} update, the layer's weight is {tuple(weight_shape)}"
        )
    factor = float(alpha.reshape(())) / rank if alpha is not None else 1.0
    return (scale * factor) * product.reshape(weight_shape)


class LoRAs:
    """The LoRAs fused into a pipeline's UNet and text encoder, and the weights they replaced."""

    def __init__(self, components, backend):
        self.components, self.backend = components, backend
        self.originals = {}  # layer -> its weight before any LoRA

    def load(self, path, scale=1.0):
        """Fuse the LoRA in file `path`, times `scale`, into the weights."""
        for (key, layer), parts in read_lora(path, layers_by_name(self.components)).items():
            weight = layer.weight
            change = delta(path, key, weight.shape, parts["down"], parts["up"], parts.get("alpha"), scale)
            self.originals.setdefault(layer, weight)
            layer.weight = self.backend.asarray(
                self.backend.to_host(weight).astype(numpy.float32) + change, weight.dtype
            )

    def unload(self):
        """Every weight back as it was before the first LoRA, bit for bit."""
        for layer, weight in self.originals.items():
            layer.weight = weight
        self.originals = {}
