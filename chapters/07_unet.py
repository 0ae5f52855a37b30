# %% [markdown]
# # 7. The UNet noise predictor
#
# *The Illustrated Stable Diffusion*, sections **"Layers of the UNet noise predictor (without
# text)"** and **"with text"**.
#
# The noise predictor is a UNet: a stack of layers, each working on the previous one's output.
# Without text:
#
# - **ResNet blocks** transform the latents; the way down (*down blocks*) halves the size and widens
#   the channels, the way up (*up blocks*) does the reverse;
# - **skip connections** hand the outputs of the way down to the matching layers of the way up;
# - the **timestep** becomes a vector (the *time embedding*) that every ResNet block adds in.
#
# With text, an **attention layer** follows the ResNet blocks: each latent pixel looks at the other
# pixels (self-attention) and at the prompt's token vectors (**cross-attention**). The ResNet blocks
# never see the text; the attention layers bring it in.
#
# To watch the layers we use `minisd.module.forward_hooks`: while it is active, a function of ours is
# called after every layer of the UNet with the layer's name, inputs and output.

# %%
import itertools
import re
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import FancyArrowPatch, Rectangle

import common
from minisd.module import forward_hooks
from minisd.unet import timestep_embedding
from minisd.watch import token_maps, watch_unet

args = common.options("Chapter 7: the UNet's layers and shapes, the time embedding, text, cross-attention")
pipe = common.load_model(args)
unet = pipe.unet
prompt = "a red circle on a white background"
steps = 6 if args.quick else pipe.defaults["steps"]
size = pipe.default_size


# %%
# 1. One UNet call, watched: the shape of every layer's input and output
@dataclass
class Layer:
    key: str  # the layer's name in the checkpoint, e.g. down_blocks.1.resnets.0
    kind: str  # ResNet, Attention, Downsample, Upsample, conv_in, conv_out, time embedding
    input: tuple  # shape of its (first) input
    output: tuple  # shape of its output


KINDS = {
    "ResnetBlock2D": "ResNet",
    "Transformer2DModel": "Attention",
    "Downsample2D": "Downsample",
    "Upsample2D": "Upsample",
    "TimestepEmbedding": "time embedding",
}
SHOWN = re.compile(r"conv_in|conv_out|time_embedding|mid_block\.\w+\.\d|(down|up)_blocks\.\d+\.\w+\.\d+")
layers = []


def record_layer(key, module, inputs, output):
    if SHOWN.fullmatch(key):  # the blocks the article draws, not their inner linear layers
        kind = KINDS.get(type(module).__name__, key)
        layers.append(Layer(key, kind, tuple(inputs[0].shape), tuple(output.shape)))


shape = (1, unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)  # (1, 4, h, w)
latents = pipe.backend.asarray(np.random.default_rng(0).standard_normal(shape), dtype="float32")
text = pipe.encode_prompt(prompt, guidance=1)  # (1, 77, D)
with forward_hooks(unet, record_layer):
    noise = unet(latents, 500, text)  # (1, 4, h, w): same shape as the latents


# %%
# 2. The skip connections: what the way down keeps, the way up takes back (last kept, first taken)
def skip_pairs(layers):
    """(kept, taken) pairs: the down path's kept outputs, matched with the up path's ResNet blocks.

    The way down keeps conv_in's output, then after each ResNet block (or the attention layer that
    follows it) and each downsample; each ResNet block of the way up concatenates the last one kept.
    """
    down = [layer for layer in layers if layer.key == "conv_in" or layer.key.startswith("down_blocks")]
    followed_by_attention = {layer.key.replace("attentions", "resnets") for layer in down if layer.kind == "Attention"}
    kept = [layer for layer in down if layer.key not in followed_by_attention]
    taken = [layer for layer in layers if layer.key.startswith("up_blocks") and layer.kind == "ResNet"]
    return list(zip(reversed(kept), taken))


skips = {taken.key: kept for kept, taken in skip_pairs(layers)}
for layer in layers:
    note = (
        f"   (+ skip from {skips[layer.key].key}, {skips[layer.key].output[1]} channels)" if layer.key in skips else ""
    )
    print(f"{layer.key:>30}  {layer.kind:>14}  {layer.input!s:>16} -> {layer.output!s:<16}{note}")
print(f"UNet: latents {tuple(latents.shape)} + timestep + text {tuple(text.shape)} -> noise {tuple(noise.shape)}")


# %%
# Figure 1: the U: each layer at the height of its resolution, skip connections as arcs
def draw_unet(layers, skips):
    path = [layer for layer in layers if layer.kind != "time embedding"]
    top = path[0].output[2]  # the latents' height
    colours = {"ResNet": "#9ecae1", "Attention": "#fdae6b", "Downsample": "#a1d99b", "Upsample": "#a1d99b"}
    fig, ax = plt.subplots(figsize=(max(12, 0.34 * len(path)), 6), layout="constrained")
    place = {}
    for x, layer in enumerate(path):
        depth = np.log2(top / layer.output[2])  # 0 at full size, 1 at half size, ...
        place[layer.key] = (x, -depth)
        ax.add_patch(Rectangle((x - 0.4, -depth - 0.25), 0.8, 0.5, fc=colours.get(layer.kind, "#dddddd"), ec="k"))
        ax.text(
            x,
            -depth,
            layer.kind.replace("sample", "").replace("Attention", "Attn").replace("conv_", ""),
            ha="center",
            va="center",
            fontsize=7,
            rotation=90,
        )
        ax.text(
            x,
            -depth - 0.3,
            f"{layer.output[1]}×{layer.output[2]}×{layer.output[3]}",
            ha="center",
            va="top",
            fontsize=6,
            rotation=90,
        )
    for a, b in itertools.pairwise(path):  # the data's path from layer to layer
        ax.annotate("", place[b.key], place[a.key], arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.8})
    for taken, kept in skips.items():
        (x0, y0), (x1, y1) = place[kept.key], place[taken]
        ax.add_patch(
            FancyArrowPatch(
                (x0, y0 + 0.25),
                (x1, y1 + 0.25),
                connectionstyle="arc3,rad=-0.25",
                arrowstyle="-|>",
                mutation_scale=8,
                color="tab:purple",
                lw=0.8,
                alpha=0.7,
            )
        )
    depths = [y for _, y in place.values()]
    ax.set_xlim(-1, len(path))
    ax.set_ylim(min(depths) - 0.9, 1.6)
    ax.set_yticks(sorted(set(depths)), [f"{int(top / 2**-y)}×{int(top / 2**-y)}" for y in sorted(set(depths))])
    ax.set_ylabel("resolution of the latents")
    ax.set_xticks([])
    ax.set_xlabel("layers in the order the data flows through them (boxes: channels × height × width out)")
    for spine in ("top", "right", "bottom"):
        ax.spines[spine].set_visible(False)
    time = next(layer for layer in layers if layer.kind == "time embedding")
    ax.set_title(
        f"The UNet noise predictor: {len(path)} layers; purple arcs: skip connections.\n"
        f"Time embedding {time.output[1]} numbers, added in every ResNet; text {tuple(text.shape[1:])}, "
        "read by every Attn (cross-attention)"
    )
    return fig


common.save_figure(draw_unet(layers, skips), args, "07_unet_layers")

# %%
# 3. The time embedding: the timestep as a vector of sines and cosines of decreasing frequency
timesteps = np.arange(1000)
embedding = timestep_embedding(timesteps, unet.config.block_out_channels[0])  # (1000, C0): cosines, then sines
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
# 1000 timesteps on about 350 rows of pixels: each row shows the mean of 8 consecutive timesteps, so
# the cosines that turn within a few steps fade to their mean instead of drawing a false (moiré) pattern
binned = embedding.reshape(125, 8, -1).mean(axis=1)  # (125, C0)
shown = left.imshow(
    binned,
    aspect="auto",
    cmap="RdBu_r",
    vmin=-1,
    vmax=1,
    interpolation="nearest",
    extent=(-0.5, binned.shape[1] - 0.5, 1000, 0),
)
left.set_xlabel(f"dimension (0 … {embedding.shape[1] // 2 - 1}: cosines, then sines)")
left.set_ylabel("timestep t (rows: 8 steps averaged)")
left.set_title("Sinusoidal time embedding, before the UNet's MLP")
fig.colorbar(shown, ax=left, label="embedding value")
half = embedding.shape[1] // 2
for dimension in (half // 4, 3 * half // 8, half // 2, 3 * half // 4):  # cosine i turns at 10000^(-i/half) rad per step
    period = 2 * np.pi * 10000 ** (dimension / half)
    right.plot(timesteps, embedding[:, dimension], label=f"dimension {dimension}: period {period:.0f} steps")
right.set_xlabel("timestep t")
right.set_ylabel("value")
right.set_title("Four of the cosines\n(fast ones tell near timesteps apart, slow ones far ones)", fontsize=10)
right.legend(loc="lower left", fontsize=8)
common.save_figure(fig, args, "07_timestep_embedding")

# %%
# 4. Without text and with text: same seeds, the empty prompt against a prompt
seeds = range(2 if args.quick else 3)
fig, axes = plt.subplots(2, len(seeds), figsize=(2.2 * len(seeds) + 1, 5), layout="constrained", squeeze=False)
for column, seed in enumerate(seeds):
    for row, text_prompt in enumerate(("", prompt)):
        axes[row, column].imshow(common.pixels(pipe(text_prompt, steps=steps, seed=seed, progress=False)))
        axes[row, column].set_xticks([])
        axes[row, column].set_yticks([])
    axes[0, column].set_title(f"seed {seed}")
axes[0, 0].set_ylabel("without text\n(empty prompt)")
axes[1, 0].set_ylabel(f'with text\n"{prompt}"', fontsize=8)
fig.suptitle("The same starting noise, denoised without and with the text")
common.save_figure(fig, args, "07_without_and_with_text")

# %%
# 5. Cross-attention maps: where each word of the prompt is looked at. `minisd.watch.watch_unet` records
# every UNet call, with each latent pixel's attention weights over the 77 text vectors (the softmax of
# its query against their keys, minisd.nn.attention_weights), averaged over the attention layers and heads.
calls = []
with watch_unet(unet, calls.append):
    *_, last = pipe.denoise(prompt, steps=steps, seed=0)  # every step runs; each UNet call is recorded
final = common.pixels(pipe.decode(last.latents))
average = np.mean([common.host(pipe, call.attention[-1]) for call in calls], axis=0)  # the prompt's row: (h, w, 77)
tokens, heats = zip(*token_maps(pipe.tokenizer, prompt, average))  # <start>, the words, <end> + padding; (h, w) each
print("share of the attention each token receives:", {t: round(float(h.mean()), 3) for t, h in zip(tokens, heats)})

# %%
# Figure 4: the final picture, and one map per token, all layers and steps averaged, on one colour scale.
# Most of every pixel's attention goes to the end token and the padding after it (62 % here): under
# CLIP's causal attention the end token is the one that has read the whole prompt, and the padding
# tokens repeat it, so a pixel that needs no particular word rests its attention there (a "sink").
# The words share the rest, from 1 % to 12 %: the scale is logarithmic so both show.
norm = LogNorm(vmin=min(float(heat.min()) for heat in heats), vmax=max(float(heat.max()) for heat in heats))
fig, axes = plt.subplots(1, len(tokens) + 1, figsize=(1.45 * (len(tokens) + 1) + 0.6, 2.6), layout="constrained")
axes[0].imshow(final)
axes[0].set_title("picture", fontsize=9)
for ax, heat, token in zip(axes[1:], heats, tokens):
    ax.imshow(final, alpha=0.35)
    image = ax.imshow(
        heat,
        cmap="inferno",
        norm=norm,
        alpha=0.75,
        extent=(-0.5, final.shape[1] - 0.5, final.shape[0] - 0.5, -0.5),
        interpolation="bilinear",
    )
    ax.set_title(f"{token}\n{heat.mean():.0%} of attention", fontsize=8)
for ax in axes:
    ax.set_axis_off()
fig.colorbar(image, ax=axes[1:], label="attention weight\n(one log scale)", shrink=0.9, pad=0.01)
fig.suptitle(
    f'Cross-attention: where each token of "{prompt}" is looked at '
    f"({len(calls)} UNet calls, all their layers averaged; one scale for every map)",
    fontsize=10,
)
common.save_figure(fig, args, "07_cross_attention")

common.save_facts(
    args,
    "07_unet",
    {
        "layers": [[layer.key, layer.kind, list(layer.input), list(layer.output)] for layer in layers],
        "skips": {taken: kept.key for taken, kept in skips.items()},
        "tokens": tokens,
        "attention_per_token": [float(heat.mean()) for heat in heats],
        "attention_total": float(average.sum(axis=-1).mean()),
    },
)
