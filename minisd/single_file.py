"""Single-file checkpoints: one .safetensors in the original CompVis / Stability AI key layout.

Most Stable Diffusion checkpoints people download are one file holding all three models under
the names the original training code used:

    model.diffusion_model.*              the UNet   (input_blocks / middle_block / output_blocks)
    first_stage_model.*                  the VAE    (encoder.down / decoder.up, counted upwards)
    cond_stage_model.transformer.*       SD 1.x text encoder (Hugging Face CLIP names)
    cond_stage_model.model.*             SD 2.x text encoder (OpenCLIP names, fused q/k/v)
    conditioner.embedders.0.transformer.*   SDXL's first text encoder (Hugging Face CLIP names)
    conditioner.embedders.1.model.*         SDXL's second (OpenCLIP names, with its projection)

This module renames those keys to the diffusers names minisd's modules use, through one table
of renames per component (RENAMES, below), and detects the architecture from tensor shapes:
SD 1.x, 2.x or XL from the text encoders, channel widths and transformer depths from the weights,
v-prediction from the
file's metadata (`modelspec.prediction_type`) or, for SD 2.x, its usual 768-pixel v-model.
`overrides` corrects what detection cannot know (e.g. an SD 2.x 512-pixel epsilon model).
"""

import re
from pathlib import Path

import numpy

from .clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from .errors import WeightsError
from .presets import PRESETS
from .safetensors_file import read_safetensors, read_safetensors_header
from .sdxl import SDXLText
from .tokenizer import EOS, CLIPTokenizer
from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, VAEConfig
from .weights import HELP, load_module

OVERRIDES = {"family": ("sd1", "sd2", "sdxl"), "prediction_type": ("epsilon", "v_prediction"), "image_size": int}

# ---------------------------------------------------------------- the rename table
# Per component: (regex on the original key, replacement) pairs, applied in order. Block
# numbers that the two layouts count differently are handled by `block_renames`, which expands
# the same kind of pairs for the detected number of levels.

RENAMES = {
    "unet": [
        (r"^model\.diffusion_model\.", ""),
        (r"^time_embed\.0\.", "time_embedding.linear_1."),
        (r"^time_embed\.2\.", "time_embedding.linear_2."),
        (r"^input_blocks\.0\.0\.", "conv_in."),
        (r"^out\.0\.", "conv_norm_out."),
        (r"^out\.2\.", "conv_out."),
        (r"^middle_block\.0\.", "mid_block.resnets.0."),
        (r"^middle_block\.1\.", "mid_block.attentions.0."),
        (r"^middle_block\.2\.", "mid_block.resnets.1."),
        (r"^label_emb\.0\.0\.", "add_embedding.linear_1."),  # SDXL's added conditioning
        (r"^label_emb\.0\.2\.", "add_embedding.linear_2."),
        # inside a ResNet block
        (r"\.in_layers\.0\.", ".norm1."),
        (r"\.in_layers\.2\.", ".conv1."),
        (r"\.emb_layers\.1\.", ".time_emb_proj."),
        (r"\.out_layers\.0\.", ".norm2."),
        (r"\.out_layers\.3\.", ".conv2."),
        (r"\.skip_connection\.", ".conv_shortcut."),
    ],
    "vae": [
        (r"^first_stage_model\.", ""),
        (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
        (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        (r"(attentions\.0)\.norm\.", r"\1.group_norm."),
        (r"(attentions\.0)\.q\.", r"\1.to_q."),
        (r"(attentions\.0)\.k\.", r"\1.to_k."),
        (r"(attentions\.0)\.v\.", r"\1.to_v."),
        (r"(attentions\.0)\.proj_out\.", r"\1.to_out.0."),
    ],
    "sd1_text": [
        (r"^cond_stage_model\.transformer\.(text_model\.)?", "text_model."),
    ],
    "sdxl_text": [
        (r"^conditioner\.embedders\.0\.transformer\.(text_model\.)?", "text_model."),
    ],
    "sd2_text": [
        (r"^(cond_stage_model|conditioner\.embedders\.1)\.model\.", "text_model."),
        (r"^text_model\.text_projection$", "text_projection.weight"),  # SDXL's (transposed by `openclip`)
        (r"^text_model\.token_embedding\.", "text_model.embeddings.token_embedding."),
        (r"^text_model\.positional_embedding$", "text_model.embeddings.position_embedding.weight"),
        (r"^text_model\.ln_final\.", "text_model.final_layer_norm."),
        (r"^text_model\.transformer\.resblocks\.", "text_model.encoder.layers."),
        (r"\.ln_1\.", ".layer_norm1."),
        (r"\.ln_2\.", ".layer_norm2."),
        (r"\.attn\.out_proj\.", ".self_attn.out_proj."),
        (r"\.mlp\.c_fc\.", ".mlp.fc1."),
        (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    ],
}
PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "sd1_text": "cond_stage_model.transformer.",
    "sd2_text": "cond_stage_model.model.",
    "sdxl_text": "conditioner.embedders.0.transformer.",
    "sdxl_text_2": "conditioner.embedders.1.model.",
}
# Keys a checkpoint may carry that are not weights minisd uses: the training schedule's buffers,
# EMA copies, CLIP's image-text projection, and SD 2.x's last text layer (SD 2 uses the 23rd).
IGNORED = [
    r"^(betas|alphas_cumprod.*|sqrt_.*|log_one_minus_alphas_cumprod|posterior_.*)$",
    r"^model_ema\..*",
    r"^cond_stage_model\.model\.(text_projection|logit_scale|visual\..*)$",
    r"^conditioner\.embedders\.1\.model\.logit_scale$",
    r".*embeddings\.position_ids$",
]


def block_renames(levels, layers):
    """UNet and VAE block numbers: the original counts blocks in one flat list (UNet) or the
    decoder from the bottom up (VAE); diffusers nests them per level, top down."""
    per_level = layers + 1  # the UNet's down path: `layers` blocks, then a downsampler
    unet = [
        (rf"^input_blocks\.{1 + level * per_level + i}\.0\.", f"down_blocks.{level}.resnets.{i}.")
        for level in range(levels)
        for i in range(layers)
    ]
    unet += [
        (rf"^input_blocks\.{1 + level * per_level + i}\.1\.", f"down_blocks.{level}.attentions.{i}.")
        for level in range(levels)
        for i in range(layers)
    ]
    unet += [
        (rf"^input_blocks\.{level * per_level + per_level}\.0\.op\.", f"down_blocks.{level}.downsamplers.0.conv.")
        for level in range(levels - 1)
    ]
    up = per_level  # the up path has one more block per level, and the upsampler rides on the last
    unet += [
        (rf"^output_blocks\.{level * up + i}\.0\.", f"up_blocks.{level}.resnets.{i}.")
        for level in range(levels)
        for i in range(up)
    ]
    unet += [
        (
            rf"^output_blocks\.{level * up + i}\.1\.(norm|proj_in|proj_out|transformer_blocks)",
            rf"up_blocks.{level}.attentions.{i}.\1",
        )
        for level in range(levels)
        for i in range(up)
    ]
    unet += [
        (rf"^output_blocks\.{level * up + up - 1}\.[12]\.conv\.", f"up_blocks.{level}.upsamplers.0.conv.")
        for level in range(levels - 1)
    ]
    vae = [(rf"^encoder\.down\.{level}\.block\.", f"encoder.down_blocks.{level}.resnets.") for level in range(levels)]
    vae += [
        (rf"^encoder\.down\.{level}\.downsample\.", f"encoder.down_blocks.{level}.downsamplers.0.")
        for level in range(levels)
    ]
    vae += [
        (rf"^decoder\.up\.{levels - 1 - level}\.block\.", f"decoder.up_blocks.{level}.resnets.")
        for level in range(levels)
    ]
    vae += [
        (rf"^decoder\.up\.{levels - 1 - level}\.upsample\.", f"decoder.up_blocks.{level}.upsamplers.0.")
        for level in range(levels)
    ]
    return {"unet": unet, "vae": vae}


# ---------------------------------------------------------------- reading a file


TEXT_ENCODERS = {  # per family: (the text encoders' part names, the class of each)
    "sd1": {"sd1_text": CLIPTextModel},
    "sd2": {"sd2_text": CLIPTextModel},
    "sdxl": {"sdxl_text": CLIPTextModel, "sdxl_text_2": CLIPTextModelWithProjection},
}
OPENCLIP = {"sd2_text", "sdxl_text_2"}  # OpenCLIP's names: fused q/k/v (`openclip`)
LABELS = {
    "sd1_text": "text encoder",
    "sd2_text": "text encoder",
    "sdxl_text": "text encoder",
    "sdxl_text_2": "text encoder 2",
}


def read_single_file(path, backend, vae_backend, overrides=None):
    """The parts of a Pipeline from one checkpoint file: tokenizer, models, scheduler config."""
    path = Path(path)
    tensors = read_safetensors(path)
    model = detect(path, tensors, _check_overrides(overrides or {}))
    levels, layers = len(model["unet"].block_out_channels), model["unet"].layers_per_block
    renames = block_renames(levels, layers)
    parts = {
        "unet": (UNet2DConditionModel(model["unet"]), RENAMES["unet"] + renames["unet"], backend),
        "vae": (AutoencoderKL(model["vae"]), RENAMES["vae"] + renames["vae"], vae_backend),
    }
    for name, config in model["text"].items():
        module = TEXT_ENCODERS[model["family"]][name](config)
        parts[name] = (module, RENAMES["sd2_text" if name in OPENCLIP else name], backend)
    claimed = set()
    for name, (module, table, target) in parts.items():
        keys = [key for key in tensors if key.startswith(PREFIXES[name])]
        claimed |= set(keys)
        mine = {key: tensors[key] for key in keys if not _ignored(key)}
        if name in OPENCLIP:
            mine = openclip(mine, model["text"][name].num_hidden_layers)
        load_module(module, rename_all(mine, table), f"{path} ({LABELS.get(name, name)})", target)
    unknown = [key for key in tensors if key not in claimed and not _ignored(key)]
    if unknown:
        raise WeightsError(
            f"{path} has keys that belong to no Stable Diffusion component: "
            f"{', '.join(sorted(unknown)[:20])}{' ...' if len(unknown) > 20 else ''}"
        )
    encoders = [parts[name][0] for name in model["text"]]
    return dict(
        tokenizer=CLIPTokenizer.default("!" if model["family"] == "sd2" else EOS),  # SD 2.x pads with "!" (id 0)
        text_encoder=encoders[0],
        unet=parts["unet"][0],
        vae=parts["vae"][0],
        scheduler_config=model["scheduler"],
        backend=backend,
        name=path.stem,
        vae_backend=vae_backend,
        sdxl=SDXLText((CLIPTokenizer.default(), CLIPTokenizer.default("!")), tuple(encoders), backend)
        if len(encoders) == 2
        else None,
    )


def _ignored(key):
    return any(re.fullmatch(pattern, key) for pattern in IGNORED)


def rename_all(tensors, table):
    renamed = {}
    for key, value in tensors.items():
        for pattern, replacement in table:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def openclip(tensors, layers):
    """OpenCLIP's tensors as transformers holds them. q, k, v are one (3D, D) in_proj: split into
    three (D, D) projections; the projection is applied as x @ P: transposed into a Linear's
    weight. Only the first `layers` blocks are kept: SD 2.x reads the penultimate layer (SDXL,
    which pools the last layer's end token, keeps them all)."""
    out = {}
    for key, value in tensors.items():
        match = re.search(r"resblocks\.(\d+)\.", key)
        if match and int(match.group(1)) >= layers:
            continue  # the last block: computed by OpenCLIP, unused by Stable Diffusion 2
        fused = re.fullmatch(r"(.*)\.attn\.in_proj_(weight|bias)", key)
        if key.endswith(".text_projection"):
            out[key] = numpy.ascontiguousarray(value.T)  # as a folder stores it: the same sums, the same bits
        elif fused:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), numpy.split(value, 3)):
                out[f"{fused.group(1)}.self_attn.{name}.{fused.group(2)}"] = part
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- detecting the architecture


def detect(path, tensors, overrides):
    """Configs for the UNet, the VAE and the text encoder, read from the tensors' shapes."""
    family = overrides.get("family") or _family(path, tensors)
    texts = {name: _text_config(path, tensors, name) for name in TEXT_ENCODERS[family]}
    metadata = read_metadata(path)
    v_model = {"v": True, "epsilon": False}.get(metadata.get("modelspec.prediction_type"), family == "sd2")
    prediction = overrides.get("prediction_type") or ("v_prediction" if v_model else "epsilon")
    v_768 = family == "sd2" and prediction == "v_prediction"  # SD 2.x: v-models 768 pixels, epsilon ones 512
    image_size = overrides.get("image_size") or PRESETS["sd2" if v_768 else family]["image_size"]
    vae = _vae_config(path, tensors, PRESETS[family]["vae"].get("scaling_factor", VAEConfig.scaling_factor))
    latent_size = image_size // 2 ** (len(vae.block_out_channels) - 1)  # the VAE shrinks by 8 in SD
    model = {
        "family": family,
        "text": texts,
        "unet": _unet_config(path, tensors, family, latent_size),
        "vae": vae,
        "scheduler": {**PRESETS[family]["scheduler"], "prediction_type": prediction},
    }
    for name, config in [("unet", model["unet"]), ("vae", vae), *texts.items()]:  # shapes that make no model
        config.check(f"{path} (the {LABELS.get(name, name)} its shapes describe)")
    return model


def _family(path, tensors):
    for family in ("sd1", "sd2", "sdxl"):
        if any(key.startswith(PREFIXES[f"{family}_text"]) for key in tensors):
            return family
    refiner = any(key.startswith("conditioner.embedders.0.model.") for key in tensors)
    raise WeightsError(
        f"{path} is not a Stable Diffusion 1.x/2.x/XL checkpoint in the original layout: it has no "
        f"{PREFIXES['sd1_text']}* (SD 1.x), {PREFIXES['sd2_text']}* (SD 2.x) nor {PREFIXES['sdxl_text']}* "
        f"(SDXL) text encoder keys{' (an SDXL refiner, which minisd does not run)' if refiner else ''}; {HELP}"
    )


def _shape(tensors, key, path, dims=2):
    """The shape of tensor `key`, which must be there with at least `dims` axes."""
    if key not in tensors:
        raise WeightsError(f"{path} is missing {key}, which every SD 1.x/2.x/XL checkpoint has; {HELP}")
    if tensors[key].ndim < dims:
        raise WeightsError(f"{path}: {key} has shape {tensors[key].shape}; SD's has {dims} axes or more; {HELP}")
    return tensors[key].shape


def _first(tensors, prefix, suffix, path):
    """The first key that starts with `prefix` and ends with `suffix`."""
    for key in tensors:
        if key.startswith(prefix) and key.endswith(suffix):
            return key
    raise WeightsError(f"{path} has no {prefix}*{suffix}, which every SD 1.x/2.x/XL checkpoint has; {HELP}")


def _unet_config(path, tensors, family, latent_size):
    prefix = PREFIXES["unet"]
    in_channels = _shape(tensors, f"{prefix}input_blocks.0.0.weight", path)[1]
    if in_channels != 4:
        raise WeightsError(
            f"{path}: the UNet takes {in_channels} input channels; minisd runs text-to-image "
            "models (4 latent channels), not inpainting or depth models"
        )
    levels = 1 + _largest_index(tensors, rf"{re.escape(prefix)}input_blocks\.(\d+)\.", path) // 3
    channels = tuple(
        _shape(tensors, f"{prefix}input_blocks.{1 + 3 * level}.0.out_layers.3.weight", path)[0]
        for level in range(levels)
    )
    attention = [f"{prefix}input_blocks.{1 + 3 * level}.1.proj_in.weight" in tensors for level in range(levels)]
    context = _shape(tensors, _first(tensors, prefix, "attn2.to_k.weight", path), path)[1]
    heads = 8 if family == "sd1" else [c // 64 for c in channels]  # SD 1: 8 heads; SD 2 and XL: 64 wide
    linear = tensors[_first(tensors, prefix, "proj_in.weight", path)].ndim == 2
    depths = tuple(  # transformer layers per level (SDXL: 1, 2, 10)
        1
        + _largest_index(
            tensors, rf"{re.escape(prefix)}input_blocks\.{1 + 3 * level}\.1\.transformer_blocks\.(\d+)\.", path
        )
        if has_attention
        else 1
        for level, has_attention in enumerate(attention)
    )
    return UNetConfig(
        sample_size=latent_size,
        block_out_channels=channels,
        cross_attention_dim=context,
        attention_head_dim=heads,
        use_linear_projection=linear,
        layers_per_block=2,
        transformer_layers_per_block=depths,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        **_added_conditioning(path, tensors, family),
    )


def _added_conditioning(path, tensors, family):
    """SDXL's added-conditioning MLP, read from label_emb.0.0's input width: the pooled text
    (the second text encoder's projection) and six time ids, each embedded to the same width."""
    if family != "sdxl":
        return {}
    width = _shape(tensors, f"{PREFIXES['unet']}label_emb.0.0.weight", path)[1]  # 2816 in SDXL
    pooled = _shape(tensors, f"{PREFIXES['sdxl_text_2']}text_projection", path)[1]  # 1280
    return {
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": (width - pooled) // 6,
        "projection_class_embeddings_input_dim": width,
    }


def _vae_config(path, tensors, scaling_factor):
    prefix = PREFIXES["vae"]
    levels = 1 + _largest_index(tensors, rf"{re.escape(prefix)}encoder\.down\.(\d+)\.", path)
    channels = tuple(
        _shape(tensors, f"{prefix}encoder.down.{level}.block.0.conv1.weight", path)[0] for level in range(levels)
    )
    latent = _shape(tensors, f"{prefix}post_quant_conv.weight", path)[0]
    return VAEConfig(
        block_out_channels=channels,
        latent_channels=latent,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        scaling_factor=scaling_factor,  # not in the file: SD 1/2's 0.18215, SDXL's 0.13025
    )


def _text_config(path, tensors, name):
    """A text encoder's config from its shapes. Hugging Face CLIP names (SD 1.x, SDXL's first):
    every layer used, quick_gelu. OpenCLIP names (SD 2.x, SDXL's second): exact GELU; SD 2.x
    leaves the last layer unused, SDXL pools it through its projection."""
    prefix = PREFIXES[name]
    if name in OPENCLIP:
        names = (
            "token_embedding.weight",
            r"transformer\.resblocks\.(\d+)\.",
            "transformer.resblocks.0.mlp.c_fc.weight",
        )
    else:
        prefix += "text_model." if any(key.startswith(prefix + "text_model.") for key in tensors) else ""
        names = ("embeddings.token_embedding.weight", r"encoder\.layers\.(\d+)\.", "encoder.layers.0.mlp.fc1.weight")
    embedding, blocks, mlp = names
    vocab, width = _shape(tensors, prefix + embedding, path)[:2]
    layers = 1 + _largest_index(tensors, re.escape(prefix) + blocks, path)
    projection = name == "sdxl_text_2" and _shape(tensors, prefix + "text_projection", path)[1]
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=_shape(tensors, prefix + mlp, path)[0],
        num_hidden_layers=layers - 1 if name == "sd2_text" else layers,
        num_attention_heads=width // 64,  # 64-wide heads in all
        hidden_act="gelu" if name in OPENCLIP else "quick_gelu",
        projection_dim=projection or 768,
    )


def _largest_index(tensors, pattern, path):
    """The largest block number N among keys matching `pattern` (one group capturing N)."""
    numbers = [int(match.group(1)) for key in tensors if (match := re.match(pattern, key))]
    if not numbers:
        where = pattern.replace("\\", "").replace("(d+)", "N")
        raise WeightsError(f"{path} has no {where}* keys, which every SD 1.x/2.x/XL checkpoint has; {HELP}")
    return max(numbers)


def read_metadata(path):
    """The safetensors header's "__metadata__" (strings), {} if none."""
    return read_safetensors_header(path)[1].get("__metadata__") or {}


def _check_overrides(overrides):
    for key, value in overrides.items():
        allowed = OVERRIDES.get(key)
        if allowed is None:
            raise ValueError(f"unknown single-file config key {key!r}: choose from {', '.join(OVERRIDES)}")
        if allowed is int and not (isinstance(value, int) and value > 0 and value % 8 == 0):
            raise ValueError(f"{key} must be a positive multiple of 8, got {value!r}")
        if allowed is not int and value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return overrides
