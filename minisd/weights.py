"""Reading checkpoints: safetensors files, the diffusers folder layout, strict key checks.

A component's parameter slots are named after the checkpoint keys (module.Module.named_slots), so
loading is one generic walk: every key the model declares must be in the file with the right
shape, and every key in the file must be one the model declares. All mismatches are reported
together, by name. Files are read by safetensors_file.py: checked, then memory-mapped.
"""

import re
from pathlib import Path

import numpy

from .clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from .errors import WeightsError, read_json
from .layers import Conv2d, Linear
from .resources import shipped_folder
from .safetensors_file import read_safetensors
from .tokenizer import CLIPTokenizer
from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, VAEConfig

HELP = "see weights/README.md in the minisd repository for how to get Stable Diffusion weights"

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


# ---------------------------------------------------------------- filling a module


def load_module(module, tensors, source, backend, renames=(), ignored=()):
    """Fill every parameter slot of `module` from `tensors`; report all mismatches at once.

    renames: (pattern, replacement) regexes turning older key spellings into the current ones.
    ignored: regexes of keys a file may carry that are not weights (e.g. buffers).
    """
    tensors = {_rename(key, renames): value for key, value in tensors.items()}
    slots = {key: (owner, name, value.shape) for key, owner, name, value in module.named_slots()}
    missing = [key for key in slots if key not in tensors]
    unexpected = [k for k in tensors if k not in slots and not any(re.fullmatch(p, k) for p in ignored)]
    wrong_shape = []
    for key, (owner, name, shape) in slots.items():
        if key not in tensors:
            continue
        array = tensors[key]
        if array.shape != shape and array.shape == shape + (1, 1):
            array = array.reshape(shape)  # a 1×1 conv saved where we use a linear layer
        if array.shape != shape:
            wrong_shape.append(f"{key}: file {tuple(array.shape)}, config expects {shape}")
            continue
        big = isinstance(owner, (Linear, Conv2d)) and name == "weight"  # matrices and kernels: the bytes
        setattr(owner, name, backend.asarray(array, backend.weights_dtype if big else None))
    _report(source, missing, unexpected, wrong_shape)


def _rename(key, renames):
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    return key


def _report(source, missing, unexpected, wrong_shape):
    problems = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if keys:
            shown = "\n    ".join(keys[:20]) + (f"\n    ... and {len(keys) - 20} more" if len(keys) > 20 else "")
            problems.append(f"  {len(keys)} {title}:\n    {shown}")
    if problems:
        raise WeightsError(
            f"{source} does not match its config.json:\n"
            + "\n".join(problems)
            + "\nThe weights and config.json must come from the same model; "
            + HELP
        )


# ---------------------------------------------------------------- the diffusers folder layout

# Per component: its folder, weight file stem, model class and config class, key renames, keys to ignore.
TEXT_ENCODER_RENAMES = [(r"^(?!text_model\.)", "text_model.")]  # keys may lack the prefix
TEXT_ENCODER_IGNORED = [r"text_model\.embeddings\.position_ids"]  # a buffer, not a weight
PROJECTION_RENAMES = [(r"^(?!text_model\.|text_projection\.)", "text_model.")]  # SDXL's second encoder
VAE_RENAMES = [  # diffusers < 0.14 names of the VAE attention layers
    (r"(attentions\.\d+)\.query\.", r"\1.to_q."),
    (r"(attentions\.\d+)\.key\.", r"\1.to_k."),
    (r"(attentions\.\d+)\.value\.", r"\1.to_v."),
    (r"(attentions\.\d+)\.proj_attn\.", r"\1.to_out.0."),
]


EMBEDDED_MODEL = "minisd-shapes"


def default_model_folder():
    """The embedded model (weights/minisd-shapes/), used when no weights are given."""
    folder = shipped_folder("minisd.models", "weights") / EMBEDDED_MODEL
    if not folder.joinpath("model_index.json").is_file():
        raise WeightsError(
            f"the embedded model {EMBEDDED_MODEL} is missing from this minisd installation: "
            "rebuild it with python weights/training/train.py, or pass weights='path/to/model-folder'"
            f" (--weights on the command line); {HELP}"
        )
    return folder


def check_model_folder(folder):
    """Raise a WeightsError naming what is missing from a diffusers-layout model folder."""
    folder = Path(folder)
    if not folder.exists():
        raise WeightsError(f"model folder {folder} does not exist; {HELP}")
    if folder.is_file():
        raise WeightsError(
            f"{folder} is neither a model folder (diffusers layout: model_index.json, tokenizer/, "
            "text_encoder/, unet/, vae/, scheduler/) nor a single-file .safetensors checkpoint; "
            f".ckpt and other PyTorch pickles can run arbitrary code, so minisd refuses them; {HELP}"
        )
    needed = [
        "model_index.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
    ]
    absent = [name for name in needed if not (folder / name).exists()]
    if absent:
        raise WeightsError(f"model folder {folder} is incomplete: missing {', '.join(absent)}; {HELP}")
    read_json(folder / "model_index.json")  # a JSON object, or a WeightsError naming the file


def find_weights_file(component_folder, stem, prefer_fp16=False):
    """The component's safetensors file: `stem.safetensors` or the `stem.fp16.safetensors` variant."""
    candidates = [component_folder / f"{stem}.safetensors", component_folder / f"{stem}.fp16.safetensors"]
    if prefer_fp16:
        candidates.reverse()
    for candidate in candidates:
        if candidate.exists():
            return candidate
    pickles = [p.name for p in component_folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise WeightsError(
            f"{component_folder} has only {', '.join(pickles)}: PyTorch pickle files, which can run "
            "arbitrary code when loaded, so minisd refuses them. Convert once to safetensors, e.g. "
            'python -c "import torch, safetensors.torch as s; '
            f"s.save_file(torch.load('{component_folder / pickles[0]}', weights_only=True), "
            f"'{component_folder / stem}.safetensors')\" (or download the .safetensors files); {HELP}"
        )
    raise WeightsError(f"{component_folder} has no {stem}.safetensors (nor {stem}.fp16.safetensors); {HELP}")


def load_component(folder, name, backend):
    """Build one component (text_encoder, unet, vae) from its config.json and weights."""
    _, config_class, stem, _, _ = COMPONENTS[name]
    component_folder = Path(folder) / name
    config = config_class.from_dict(read_json(component_folder / "config.json"), component_folder / "config.json")
    path = find_weights_file(component_folder, stem, prefer_fp16=backend.dtype == numpy.float16)
    return component_from_tensors(name, config, read_safetensors(path), path, backend)


def component_from_tensors(name, config, tensors, source, backend):
    """Build one component from its checked config and {key: array} as its checkpoints spell the
    keys (e.g. a PyTorch module's state_dict); `source` names the tensors in errors."""
    model_class, _, _, renames, ignored = COMPONENTS[name]
    model = model_class(config)
    load_module(model, tensors, source, backend, renames, ignored)
    return model


COMPONENTS = {
    "text_encoder": (CLIPTextModel, CLIPTextConfig, "model", TEXT_ENCODER_RENAMES, TEXT_ENCODER_IGNORED),
    "text_encoder_2": (CLIPTextModelWithProjection, CLIPTextConfig, "model", PROJECTION_RENAMES, TEXT_ENCODER_IGNORED),
    "unet": (UNet2DConditionModel, UNetConfig, "diffusion_pytorch_model", (), ()),
    "vae": (AutoencoderKL, VAEConfig, "diffusion_pytorch_model", VAE_RENAMES, ()),
}


def load_tokenizer(folder, name="tokenizer"):
    """The folder's own tokenizer/ (vocab + merges + pad token); the shipped CLIP vocabulary if absent."""
    tokenizer_folder = Path(folder) / name
    return CLIPTokenizer.from_folder(tokenizer_folder) if tokenizer_folder.exists() else CLIPTokenizer.default()
