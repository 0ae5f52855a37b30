"""Single-file checkpoints (original CompVis / Stability layout) against the diffusers folder.

Random SD1-, SD2- and SDXL-shaped models are saved as a diffusers folder, then written as one
.safetensors in the original key layout by `to_original` below (the inverse of the original ->
diffusers conversion, written here independently of minisd). diffusers' own
`from_single_file` loads that file back to the folder's weights, which proves the test file is
a faithful original-layout checkpoint; then minisd loads it, detects the architecture, and must
produce exactly the outputs of loading the folder.
"""

import json

import numpy as np
import pytest

import minisd
from helpers import SD15_SCHEDULER, require_reference
from minisd.schedulers import SCHEDULERS
from minisd.weights import WeightsError

pytestmark = pytest.mark.reference
require_reference()  # skips the module, saying why, without torch/diffusers/transformers
from reference import (  # noqa: E402
    SD21_SCHEDULER,
    SDXL_SCHEDULER,
    TINY_VAE,
    build_models,
    build_sdxl_models,
    save_model_folder,
    save_sdxl_folder,
)

# Small models that keep SD's conventions (detection relies on them): 2 ResNets per level,
# 8 heads (SD 1) or 64-wide heads (SD 2, XL), 64-wide text heads, 4 latent channels.
SMALL_UNET = dict(
    sample_size=8,
    block_out_channels=(64, 128),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=32,
)
SMALL_TEXT = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=1,
    hidden_act="quick_gelu",
    vocab_size=49408,
    max_position_embeddings=77,
)
FAMILIES = {
    "sd1": dict(
        text=SMALL_TEXT,
        unet={**SMALL_UNET, "cross_attention_dim": 64, "attention_head_dim": 8},
        scheduler=SD15_SCHEDULER,
    ),
    "sd2": dict(
        text={**SMALL_TEXT, "hidden_act": "gelu"},
        unet={**SMALL_UNET, "cross_attention_dim": 64, "attention_head_dim": (1, 2), "use_linear_projection": True},
        scheduler=SD21_SCHEDULER,
    ),
    "sdxl": dict(  # two text encoders (64 + 128 wide), 1 and 2 transformer layers, added conditioning
        text=SMALL_TEXT,
        # wider than the first: diffusers tells the two encoders of a file apart by width
        text_2={**SMALL_TEXT, "hidden_size": 128, "intermediate_size": 160, "num_attention_heads": 2}
        | {"hidden_act": "gelu", "projection_dim": 128},
        unet={
            **SMALL_UNET,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 64 + 128,
            "attention_head_dim": (1, 2),
            "use_linear_projection": True,
            "transformer_layers_per_block": (1, 2),
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 128,
        },
        scheduler=SDXL_SCHEDULER,
    ),
}
VAE = {
    **TINY_VAE,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
}
SDXL_VAE = {**VAE, "scaling_factor": 0.13025, "force_upcast": True}


# ---- diffusers names -> original names, written out -------------------------------------------

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_key(key, attention_levels, levels):
    """One diffusers UNet key -> its name in the original UNet (model.diffusion_model.*)."""
    parts = key.split(".")
    head, rest = parts[0], parts[1:]
    fixed = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if head in fixed:
        return ".".join([fixed[head], *rest])
    if head in ("time_embedding", "add_embedding"):  # SDXL's added conditioning: label_emb.0
        name = "time_embed" if head == "time_embedding" else "label_emb.0"
        return ".".join([name, {"linear_1": "0", "linear_2": "2"}[rest[0]], *rest[1:]])
    if head == "mid_block":
        index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(rest[0], rest[1])]
        return ".".join(["middle_block", str(index), *resnet_inner(rest[0], rest[2:])])
    level, kind, i, tail = int(rest[0]), rest[1], rest[2], rest[3:]
    if head == "down_blocks":
        if kind == "downsamplers":
            return ".".join([f"input_blocks.{3 * level + 3}.0.op", *tail[1:]])
        return ".".join(
            [f"input_blocks.{1 + 3 * level + int(i)}.{1 if kind == 'attentions' else 0}", *resnet_inner(kind, tail)]
        )
    if kind == "upsamplers":
        slot = 2 if (levels - 1 - level) in attention_levels else 1  # after the attention, if any
        return ".".join([f"output_blocks.{3 * level + 2}.{slot}.conv", *tail[1:]])
    return ".".join(
        [f"output_blocks.{3 * level + int(i)}.{1 if kind == 'attentions' else 0}", *resnet_inner(kind, tail)]
    )


def resnet_inner(kind, tail):
    if kind != "resnets":
        return tail
    return [RESNET[tail[0]], *tail[1:]]


def vae_key(key, levels):
    """One diffusers VAE key -> its name in the original autoencoder (first_stage_model.*)."""
    for new, old in VAE_ATTENTION.items():
        key = key.replace(f"attentions.0.{new}.", f"attn_1.{old}.")
    key = key.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
    key = key.replace("mid_block.attn_1.", "mid.attn_1.").replace("conv_norm_out", "norm_out")
    key = key.replace("conv_shortcut", "nin_shortcut")
    for level in range(levels):
        key = key.replace(f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block.")
        key = key.replace(f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample.")
        key = key.replace(f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{levels - 1 - level}.block.")
        key = key.replace(f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{levels - 1 - level}.upsample.")
    return key


def openclip_text(state, width, prefix="cond_stage_model.model.", extra_block=True):
    """transformers CLIPTextModel(WithProjection) -> OpenCLIP keys: fused in_proj, the projection
    as x @ P; SD 2 also gets one extra last block (its model stops a layer before OpenCLIP's)."""
    state = {key.removeprefix("text_model."): value for key, value in state.items()}  # WithProjection nests it
    projection = state.pop("text_projection.weight").T if "text_projection.weight" in state else np.eye(width)
    out = {
        "cond_stage_model.model.text_projection": np.ascontiguousarray(projection, np.float32),  # save_file: no views
        "cond_stage_model.model.logit_scale": np.array(4.6, dtype=np.float32),
    }
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            out["cond_stage_model.model.token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["cond_stage_model.model.positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["cond_stage_model.model.ln_final." + key.split(".")[-1]] = value
        elif key.startswith("encoder.layers."):
            _, _, i, *rest = key.split(".")
            inner = ".".join(rest)
            for new, old in names.items():
                inner = inner.replace(new + ".", old + ".")
            if ".q_proj." in inner or ".k_proj." in inner or ".v_proj." in inner:
                if ".q_proj." in inner:
                    kind = inner.split(".")[-1]
                    fused = np.concatenate([state[f"encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
                    out[f"cond_stage_model.model.transformer.resblocks.{i}.attn.in_proj_{kind}"] = fused
                continue
            out[f"cond_stage_model.model.transformer.resblocks.{i}.{inner}"] = value
    for key in [k for k in out if f"resblocks.{layers - 1}." in k and extra_block]:  # OpenCLIP's last, unused
        out[key.replace(f"resblocks.{layers - 1}.", f"resblocks.{layers}.")] = out[key] * 0.5
    return {key.replace("cond_stage_model.model.", prefix): value for key, value in out.items()}


def to_original(models, family, config):
    """The diffusers models ({name: module}) -> one {original key: array} checkpoint."""
    states = {name: {k: v.detach().numpy() for k, v in m.state_dict().items()} for name, m in models.items()}
    text_encoder, unet, vae = states["text_encoder"], states["unet"], states["vae"]
    levels = len(config["unet"]["block_out_channels"])
    attention = {i for i, t in enumerate(config["unet"]["down_block_types"]) if t.startswith("CrossAttn")}
    out = {f"model.diffusion_model.{unet_key(k, attention, levels)}": v for k, v in unet.items()}
    for key, value in vae.items():  # the original VAE attention uses 1x1 convolutions
        value = value[..., None, None] if "attentions" in key and value.ndim == 2 else value
        out[f"first_stage_model.{vae_key(key, len(VAE['block_out_channels']))}"] = value
    if family == "sd1":
        out.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in text_encoder.items()})
    elif family == "sd2":
        out.update(openclip_text(text_encoder, config["text"]["hidden_size"]))
    else:
        out.update({f"conditioner.embedders.0.transformer.text_model.{k}": v for k, v in text_encoder.items()})
        width = config["text_2"]["hidden_size"]
        out.update(openclip_text(states["text_encoder_2"], width, "conditioner.embedders.1.model.", False))
    out["alphas_cumprod"] = np.linspace(1, 0, 1000, dtype=np.float32)  # a training buffer, ignored
    return out


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    """(family, diffusers folder, single file)."""
    from safetensors.numpy import save_file

    family, config = request.param, FAMILIES[request.param]
    tmp = tmp_path_factory.mktemp(family)
    if family == "sdxl":
        models = build_sdxl_models(config["text"], config["text_2"], config["unet"], SDXL_VAE, seed=50)
        folder = save_sdxl_folder(tmp / "folder", models, scheduler=config["scheduler"])
    else:
        models = dict(zip(("text_encoder", "unet", "vae"), build_models(config["text"], config["unet"], VAE, seed=50)))
        folder = save_model_folder(tmp / "folder", *models.values(), scheduler=config["scheduler"])
    if family == "sd2":
        (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))
    file = tmp / f"{family}.safetensors"
    save_file(to_original(models, family, config), str(file), metadata={"format": "pt"})
    return family, folder, file


def test_diffusers_reads_the_test_file_as_the_folder(checkpoint):
    """The test's original-layout file is right: diffusers' from_single_file gets the folder's weights."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family, folder, file = checkpoint
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None}
    folder_pipe = cls.from_pretrained(folder, **extra)
    file_pipe = cls.from_single_file(file, config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if family == "sdxl" else ()):
        theirs = getattr(folder_pipe, name).state_dict()
        ours = getattr(file_pipe, name).state_dict()
        assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))[:5]
        for key, value in theirs.items():
            assert torch.equal(ours[key].reshape(value.shape), value), f"{family} {name} {key}"


def slots(module):
    return {key: np.asarray(value) for key, _, _, value in module.named_slots()}


def components(pipe):
    """{name: module} of a Pipeline, SDXL's second text encoder included."""
    found = {name: getattr(pipe, name) for name in ("text_encoder", "unet", "vae")}
    return found | ({"text_encoder_2": pipe.sdxl.text_encoders[1]} if pipe.sdxl else {})


def test_single_file_equals_the_folder(checkpoint):
    family, folder, file = checkpoint
    from_folder, from_file = minisd.load(folder), minisd.load(file, config={"image_size": 64})
    assert set(components(from_file)) == set(components(from_folder))
    for name, module in components(from_folder).items():
        want, got = slots(module), slots(components(from_file)[name])
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key].reshape(want[key].shape), want[key], err_msg=f"{name} {key}")
    assert from_file.tokenizer.pad_id == from_folder.tokenizer.pad_id == (0 if family == "sd2" else 49407)
    expected_prediction = "v_prediction" if family == "sd2" else "epsilon"
    assert from_file.scheduler_config["prediction_type"] == expected_prediction


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_single_file_gives_the_folders_picture(checkpoint, scheduler):
    """With every scheduler, not only the default: each is built from the scheduler config, and a
    single file's (minisd's presets) must act as the folder's (SD 1.5's and SD 2.1's own files)."""
    _, folder, file = checkpoint
    from_folder, from_file = minisd.load(folder), minisd.load(file, config={"image_size": 64})
    options = dict(steps=4, height=64, width=64, seed=3, scheduler=scheduler, progress=False)
    assert np.array_equal(
        np.asarray(from_file("a red circle", **options)), np.asarray(from_folder("a red circle", **options))
    )


def test_detection_and_overrides(checkpoint):
    family, _, file = checkpoint
    pipe = minisd.load(file)
    assert pipe.unet.config.use_linear_projection == (family != "sd1")
    assert pipe.unet.config.block_out_channels == (64, 128)
    assert pipe.text_encoder.config.hidden_act == ("gelu" if family == "sd2" else "quick_gelu")
    assert pipe.default_size == {"sd1": 512, "sd2": 768, "sdxl": 1024}[family]  # SD 2's usual v-model is 768
    assert bool(pipe.sdxl) == (family == "sdxl") and pipe.vae.config.scaling_factor == (
        0.13025 if family == "sdxl" else 0.18215
    )
    if family == "sdxl":
        assert pipe.unet.config.transformer_layers_per_block == (1, 2)
        assert pipe.unet.config.addition_time_embed_dim == 8 and pipe.sdxl.text_encoders[1].config.projection_dim == 128
    epsilon = minisd.load(file, config={"prediction_type": "epsilon", "image_size": 512})
    assert epsilon.scheduler_config["prediction_type"] == "epsilon" and epsilon.default_size == 512


def test_missing_and_extra_keys_are_named(checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, _, file = checkpoint
    tensors = load_file(str(file))
    dropped = "model.diffusion_model.out.2.bias"
    del tensors[dropped]
    tensors["model.diffusion_model.extra_layer.weight"] = np.zeros(3, np.float32)
    tensors["conditioner.embedders.0.weight"] = np.zeros(3, np.float32)  # belongs to no SD 1/2 component
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken))
    with pytest.raises(WeightsError) as error:
        minisd.load(broken)
    message = str(error.value)
    assert "conv_out.bias" in message and "extra_layer.weight" in message
    del tensors["model.diffusion_model.extra_layer.weight"]
    tensors["model.diffusion_model.out.2.bias"] = np.zeros(4, np.float32)
    save_file(tensors, str(broken))
    with pytest.raises(WeightsError, match="conditioner.embedders.0.weight"):
        minisd.load(broken)


def test_bad_files_and_overrides(checkpoint, tmp_path):
    from safetensors.numpy import save_file

    _, folder, file = checkpoint
    other = tmp_path / "other.safetensors"
    save_file({"some.weight": np.zeros(2, np.float32)}, str(other))
    with pytest.raises(WeightsError, match="not a Stable Diffusion 1.x/2.x/XL checkpoint"):
        minisd.load(other)
    with pytest.raises(ValueError, match="unknown single-file config key 'sampler'"):
        minisd.load(file, config={"sampler": "ddim"})
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction"):
        minisd.load(file, config={"prediction_type": "v"})
    with pytest.raises(ValueError, match="carries its own config.json"):
        minisd.load(folder, config={"family": "sd1"})
