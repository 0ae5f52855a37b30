# %% [markdown]
# # 10. After the article: Stable Diffusion XL
#
# *The Illustrated Stable Diffusion* describes Stable Diffusion 1.x. Its successor, **SDXL**
# (Podell et al. 2023), keeps the three components and the denoising loop of chapters 1–9; what
# changes is how big the UNet is and how much it is told:
#
# - **two text encoders** read the prompt, CLIP ViT-L (768 wide, SD 1's) and OpenCLIP ViT-bigG
#   (1280 wide), each a layer before its last. Their vectors are concatenated token by token, so
#   cross-attention reads 77 vectors of 768 + 1280 = 2048 numbers;
# - a **pooled** vector (the second encoder's end-of-text state, projected) sums up the prompt,
#   and six **time ids**, (original height, width, crop top, left, target height, width), say what
#   size the training picture had and how it was cropped. Both enter through the time embedding
#   that every ResNet block reads (`minisd/sdxl.py`, `UNet2DConditionModel.embed_added`);
# - **deeper transformers where the latents are small**: 1, 2 and 10 transformer layers per
#   level where SD 1 has 1, 1, 1, and no attention at all at the largest level; three levels,
#   not four;
# - **1024×1024 pictures**: 128×128 latents, four times SD 1's.
#
# The sizes are counted from the real configurations (`minisd/presets.py`: parameter shapes only,
# nothing allocated). The conditioning is computed on a small random SDXL-shaped model, built
# from minisd's own code: no SDXL weights are needed to see where each input goes.

# %%
import matplotlib.pyplot as plt
import numpy as np

import common
from minisd.backend import Backend
from minisd.bench_memory import sdxl_pipeline
from minisd.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from minisd.presets import SD1, SDXL
from minisd.sdxl import time_ids
from minisd.unet import UNet2DConditionModel, UNetConfig, timestep_embedding
from minisd.vae import AutoencoderKL, VAEConfig

args = common.options("Chapter 10: what SDXL changes, from the configs and on a small random SDXL")
tr = args.tr
prompt = "a red circle on a white background"


# %%
# 1. The real sizes, from the configurations
def parameters(module):
    """How many numbers a module's weights hold, from their shapes."""
    return sum(int(np.prod(slot.shape)) for _, _, _, slot in module.named_slots())


def sizes(preset):
    """{component: parameters} of a preset's models (no weights: only their shapes)."""
    counts = {"text encoder": parameters(CLIPTextModel(CLIPTextConfig.from_dict(preset["text_encoder"])))}
    if "text_encoder_2" in preset:
        counts["text encoder 2"] = parameters(
            CLIPTextModelWithProjection(CLIPTextConfig.from_dict(preset["text_encoder_2"]))
        )
    counts["UNet"] = parameters(UNet2DConditionModel(UNetConfig.from_dict(preset["unet"])))
    counts["VAE"] = parameters(AutoencoderKL(VAEConfig.from_dict(preset["vae"])))
    return counts


def transformer_depths(preset):
    """Transformer layers after each ResNet block of the way down, per level (0: no attention)."""
    config = UNetConfig.from_dict(preset["unet"])
    depths = config.per_block(config.transformer_layers_per_block)
    return [d if kind.startswith("CrossAttn") else 0 for d, kind in zip(depths, config.down_block_types)]


models = {"SD 1.5": SD1, "SDXL": SDXL}
counts = {name: sizes(preset) for name, preset in models.items()}
depths = {name: transformer_depths(preset) for name, preset in models.items()}
for name, preset in models.items():
    unet = preset["unet"]
    print(f"{name}: parameters {counts[name]}, transformer layers per level {depths[name]}")
    latent, pixels = unet["sample_size"], preset["image_size"]
    print(f"  text vectors 77 x {unet['cross_attention_dim']}, latents 4 x {latent}², pixels {pixels}²")

# %%
# Figure 1: parameters per component, and transformer layers per level
fig, (left, right, table) = plt.subplots(1, 3, figsize=(13, 4), layout="constrained", width_ratios=[1.2, 1, 1.2])
components = ["text encoder", "text encoder 2", "UNet", "VAE"]
component_labels = [tr("text\nencoder"), tr("text\nencoder 2"), tr.literal("UNet"), tr.literal("VAE")]
for offset, (name, colour) in zip((-0.2, 0.2), zip(models, ("tab:blue", "tab:orange"))):
    values = [counts[name].get(component, 0) / 1e6 for component in components]
    bars = left.bar(np.arange(len(components)) + offset, values, 0.4, label=tr.literal(name), color=colour)
    left.bar_label(bars, [f"{v:.0f}" if v else "" for v in values], fontsize=8)
left.set_xticks(range(len(components)), component_labels, fontsize=9)
left.set_ylabel(tr("parameters (millions)"))
left.set_title(tr("Parameters per component"))
left.legend()
for offset, (name, colour) in zip((-0.2, 0.2), zip(models, ("tab:blue", "tab:orange"))):
    bars = right.bar(np.arange(len(depths[name])) + offset, depths[name], 0.4, label=tr.literal(name), color=colour)
    right.bar_label(bars, fontsize=8)
right.set_xticks(range(4), [tr("level {i}", i=i) for i in range(4)], fontsize=9)
right.set_ylabel(tr("transformer layers after each ResNet"))
right.set_title(tr("Attention moves to the small latents\n(0: no attention; SDXL has 3 levels)"))
right.legend()
rows = [
    (tr("text vectors"), *(f"77 × {p['unet']['cross_attention_dim']}" for p in models.values())),
    (tr("added inputs"), tr("none"), tr("pooled 1280 + 6 time ids")),
    (tr("latents"), *(f"4 × {p['unet']['sample_size']} × {p['unet']['sample_size']}" for p in models.values())),
    (tr("pixels"), *(f"3 × {p['image_size']} × {p['image_size']}" for p in models.values())),
    (tr("VAE scaling"), tr.number(0.18215, "g"), tr.number(SDXL["vae"]["scaling_factor"], "g")),
]
table.axis("off")
cells = table.table(
    cellText=[row[1:] for row in rows],
    rowLabels=[row[0] for row in rows],
    colLabels=[tr.literal(name) for name in models],
    loc="center",
)
cells.auto_set_font_size(False)
cells.set_fontsize(8.5)
cells.scale(1, 1.8)
table.set_title(tr("What the UNet reads and writes"))
fig.suptitle(tr("SD 1.5 and SDXL base 1.0, counted from their configurations"), fontsize=12)
common.save_figure(fig, args, "10_sdxl_sizes")

# %%
# 2. The conditioning, on a small random SDXL-shaped model: two encoders 64 and 128 wide, 32-wide time-id embeddings
SMALL = {
    "scheduler": SDXL["scheduler"],
    "text_encoder": {
        **SD1["text_encoder"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
    },
    "text_encoder_2": {
        **SDXL["text_encoder_2"],
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "projection_dim": 128,
    },
    "unet": {
        **SDXL["unet"],
        "sample_size": 8,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2),
        "attention_head_dim": (1, 2),
        "cross_attention_dim": 64 + 128,
        "addition_time_embed_dim": 32,
        "projection_class_embeddings_input_dim": 6 * 32 + 128,
    },
    "vae": {
        **SDXL["vae"],
        "block_out_channels": (32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
    },
}
pipe = sdxl_pipeline(Backend(), SMALL)
# a 1024x1024 request (the conditioning does not depend on the small model's size); guidance 1: the prompt alone
options = pipe.options(height=1024, width=1024, guidance=1)
context, added = pipe.condition(prompt, options)  # (1, 77, 192), {"text_embeds": (1, 128), "time_ids": (1, 6)}
first_width = SMALL["text_encoder"]["hidden_size"]
print("text vectors", context.shape, "pooled", added["text_embeds"].shape, "time ids", added["time_ids"][0])

# %%
# 3. What the time ids do: the UNet's added embedding for several crops, against the uncropped one.
# The weights are random, so how much it changes means nothing; that it changes is the point: a
# trained SDXL learned that "cropped from the top" pictures have their subject cut, and a request
# for crop (0, 0) asks for the subject whole.
crops = [0, 16, 32, 64, 128, 256, 512] if not args.quick else [0, 64, 256]
unet = pipe.unet
uncropped = unet.embed_added(added["text_embeds"], added["time_ids"])  # (1, 4·C0)
changes = []
for top in crops:
    ids = time_ids(pipe.options(height=1024, width=1024, crop_top_left=(top, 0)))[None]
    embedding = unet.embed_added(added["text_embeds"], ids)
    changes.append(float(np.linalg.norm(embedding - uncropped) / np.linalg.norm(uncropped)))
print("relative change of the added embedding with the crop's top:", dict(zip(crops, np.round(changes, 3))))
# the sinusoid each time id goes through before the added-conditioning MLP: (6, 32)
sinusoids = timestep_embedding(added["time_ids"][0], SMALL["unet"]["addition_time_embed_dim"])

# %%
# Figure 2: the concatenated text vectors, the six time ids as sinusoids, the crop's effect
fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained", width_ratios=[1.4, 1, 1])
image = axes[0].imshow(context[0].T, aspect="auto", cmap="RdBu_r", interpolation="nearest")
axes[0].axhline(first_width - 0.5, color="black", linewidth=2)
axes[0].set_xlabel(tr("token (77)"))
axes[0].set_ylabel(tr("vector component"))
axes[0].set_title(tr("Text vectors: encoder 1\n(rows 0–{last}) over encoder 2", last=first_width - 1))
fig.colorbar(image, ax=axes[0], label=tr("value"))
image = axes[1].imshow(sinusoids, aspect="auto", cmap="RdBu_r", interpolation="nearest", vmin=-1, vmax=1)
labels = [tr("original h"), tr("original w"), tr("crop top"), tr("crop left"), tr("target h"), tr("target w")]
axes[1].set_yticks(
    range(6), [tr.literal(f"{name} = {value:.0f}") for name, value in zip(labels, added["time_ids"][0])], fontsize=8
)
axes[1].set_xlabel(tr("embedding component (cos | sin)"))
axes[1].set_title(tr("Six time ids, each as a sinusoid"))
fig.colorbar(image, ax=axes[1], label=tr("value"))
axes[2].plot(crops, changes, "o-")
axes[2].set_xlabel(tr("crop top (pixels)"))
axes[2].set_ylabel(tr("relative change of the added embedding"))
axes[2].set_title(tr("Asking for a crop changes what\nevery ResNet block reads"), fontsize=10)
fig.suptitle(
    tr('SDXL\'s conditioning on a small random SDXL-shaped model, prompt "{prompt}"', prompt=prompt), fontsize=12
)
common.save_figure(fig, args, "10_sdxl_conditioning")

# %%
common.save_facts(
    args,
    "10_sdxl",
    {
        "prompt": prompt,
        "parameters": counts,
        "transformer_depths": depths,
        "context_shape": list(context.shape),
        "first_width": first_width,
        "time_ids": added["time_ids"][0].tolist(),
        "crops": crops,
        "changes": changes,
    },
)
