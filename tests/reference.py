"""Random-weight reference models built with diffusers / transformers (the `reference` extra).

Real checkpoints cannot be downloaded here, so parity is proven on models with the real
architectures and random weights: built with the reference libraries, saved in the diffusers
folder layout, loaded by minisd's own loader, and compared output for output.
"""

import json
from pathlib import Path

import torch

from helpers import SD15_SCHEDULER
from minisd.tokenizer import CLIPTokenizer

# The real SD 1.5 sizes are the libraries' defaults, except the text encoder's (ViT-L/14).
SD15_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    vocab_size=49408,
    projection_dim=768,
)
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
)

# SD 2.1 (768x768, v-prediction): OpenCLIP ViT-H text tower cut to its penultimate layer (23 of
# 24, exact GELU, width 1024), linear proj_in/proj_out and 64-wide heads (5, 10, 20, 20 heads).
SD21_TEXT = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    vocab_size=49408,
    projection_dim=512,
)
SD21_UNET = dict(
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# A tiny model of the same family, for whole-pipeline tests (diffusers' own tests use similar).
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=5,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    vocab_size=49408,
    projection_dim=32,
)
TINY_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=(2, 4),
    norm_num_groups=32,
)
TINY_VAE = dict(
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=32,
    sample_size=64,
)


def randomize(model, seed):
    """Give every parameter random values, norms included (their default 1/0 would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            fan_in = param[0].numel() if param.ndim > 1 else 1
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim > 1:
                param.copy_(noise / fan_in**0.5)
            elif name.endswith("weight"):  # norm scales around 1
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return model.eval()


def build_models(text=SD15_TEXT, unet=SD15_UNET, vae=SD15_VAE, seed=0):
    """(text_encoder, unet, vae) torch modules with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return (
        randomize(CLIPTextModel(CLIPTextConfig(**text)), seed),
        randomize(UNet2DConditionModel(**unet), seed + 1),
        randomize(AutoencoderKL(**vae), seed + 2),
    )


def save_model_folder(folder, text_encoder, unet, vae, scheduler=SD15_SCHEDULER, variant=None):
    """Write a diffusers-layout model folder (what users download), safetensors throughout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True, variant=variant)
    unet.save_pretrained(folder / "unet", safe_serialization=True, variant=variant)
    vae.save_pretrained(folder / "vae", safe_serialization=True, variant=variant)
    CLIPTokenizer.default().save(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def reference_pipeline(folder, scheduler="pndm"):
    """diffusers' StableDiffusionPipeline on the same folder (no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_numpy(tensor):
    return tensor.detach().float().numpy()


def torch_seed(seed):
    """diffusers' way to fix the noise: a seeded CPU generator, which minisd's seed= repeats."""
    return torch.Generator("cpu").manual_seed(seed)


# ---- SDXL ----------------------------------------------------------------------------------
# The real SDXL base 1.0 sizes: CLIP ViT-L (as SD 1.5's, read a layer before its last) and
# OpenCLIP ViT-bigG with its projection; a 3-level UNet with 1, 2 and 10 transformer layers,
# 64-wide heads, text 768 + 1280 = 2048 wide, and the pooled text + 6 time ids (2816) added.
SDXL_TEXT = {**SD15_TEXT}
SDXL_TEXT_2 = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    vocab_size=49408,
    projection_dim=1280,
)
SDXL_UNET = dict(
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# A tiny SDXL-shaped model (as diffusers' own SDXL tests build): both encoders 32 wide, so the
# UNet reads 64-wide text and 6 * 8 + 32 = 80 added numbers; two transformer layers on level 2.
TINY_SDXL_TEXT = {**TINY_TEXT, "hidden_act": "gelu"}
TINY_SDXL_TEXT_2 = {**TINY_SDXL_TEXT, "num_hidden_layers": 4}
TINY_SDXL_UNET = dict(
    TINY_UNET,
    cross_attention_dim=64,
    use_linear_projection=True,
    transformer_layers_per_block=(1, 2),
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,
)
TINY_SDXL_VAE = {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True}


def build_sdxl_models(text=TINY_SDXL_TEXT, text_2=TINY_SDXL_TEXT_2, unet=TINY_SDXL_UNET, vae=TINY_SDXL_VAE, seed=0):
    """{name: torch module} of an SDXL pipeline, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return {
        "text_encoder": randomize(CLIPTextModel(CLIPTextConfig(**text)), seed),
        "text_encoder_2": randomize(CLIPTextModelWithProjection(CLIPTextConfig(**text_2)), seed + 3),
        "unet": randomize(UNet2DConditionModel(**unet), seed + 1),
        "vae": randomize(AutoencoderKL(**vae), seed + 2),
    }


def save_sdxl_folder(folder, models, scheduler=SDXL_SCHEDULER, force_zeros=True):
    """An SDXL diffusers folder: a second tokenizer (padding with "!") and text encoder."""
    folder = save_model_folder(folder, models["text_encoder"], models["unet"], models["vae"], scheduler)
    models["text_encoder_2"].save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    CLIPTokenizer.default("!").save(folder / "tokenizer_2")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(
        _class_name="StableDiffusionXLPipeline",
        text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
        tokenizer_2=["transformers", "CLIPTokenizer"],
        scheduler=["diffusers", scheduler["_class_name"]],
        force_zeros_for_empty_prompt=force_zeros,
    )
    for key in ("safety_checker", "feature_extractor"):
        del index[key]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def reference_sdxl(folder, img2img=False, scheduler=None):
    """diffusers' StableDiffusionXL(Img2Img)Pipeline on the folder, no watermark; `scheduler`: a
    diffusers scheduler class name to switch to, as a user does (from_config)."""
    import diffusers

    cls = diffusers.StableDiffusionXLImg2ImgPipeline if img2img else diffusers.StableDiffusionXLPipeline
    pipe = cls.from_pretrained(folder, add_watermarker=False)
    if scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
