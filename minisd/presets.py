"""Stable Diffusion 1.x, 2.x and XL as their diffusers folders configure them, written once.

A model folder carries these as its own config.json files; a single-file checkpoint does not,
so its loader (single_file.py) takes the scheduler and what shapes cannot tell from here, and
so do the benchmark's and the tests' random models of the real sizes (random_model.py). Each
dict holds the keys of the file it stands for (diffusers' names), as SD 1.5
(runwayml/stable-diffusion-v1-5), SD 2.1 (stabilityai/stable-diffusion-2-1) and SDXL base 1.0
(stabilityai/stable-diffusion-xl-base-1.0) ship them.
"""

SD1 = {
    "scheduler": {
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    },
    # OpenAI CLIP ViT-L/14's text tower
    "text_encoder": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "vocab_size": 49408,
    },
    "unet": {
        "sample_size": 64,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,  # SD 1's configs mean 8 heads everywhere by it
    },
    "vae": {
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 2,
        "sample_size": 512,
    },
    "image_size": 512,
}

SD2 = {
    "scheduler": {**SD1["scheduler"], "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
    # OpenCLIP ViT-H's text tower, cut to its penultimate layer (23 of 24): exact GELU, width 1024
    "text_encoder": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "vocab_size": 49408,
    },
    "unet": {
        "sample_size": 96,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),  # 64-wide heads
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    "vae": SD1["vae"],
    "image_size": 768,  # SD 2.1 is a 768x768 v-prediction model (SD 2.1-base: 512, epsilon)
}

SDXL = {
    "scheduler": {
        **SD1["scheduler"],
        "_class_name": "EulerDiscreteScheduler",
        "interpolation_type": "linear",
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "use_karras_sigmas": False,
    },
    # CLIP ViT-L (SD 1's), then OpenCLIP ViT-bigG with its projection; both read a layer before the last
    "text_encoder": {**SD1["text_encoder"], "projection_dim": 768},
    "text_encoder_2": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "vocab_size": 49408,
        "projection_dim": 1280,
    },
    "unet": {
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),  # 64-wide heads
        "cross_attention_dim": 2048,  # 768 + 1280
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # pooled text 1280 + 6 time ids x 256
    },
    "vae": {**SD1["vae"], "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    "image_size": 1024,
    "force_zeros_for_empty_prompt": True,
}

PRESETS = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}
