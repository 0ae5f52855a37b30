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
# With text, an **attention block** follows the ResNet blocks (in SD 1.5 all but those of the
# smallest latents): each latent pixel looks at the other pixels (self-attention) and at the prompt's
# token vectors (**cross-attention**). The ResNet blocks never see the text; the attention blocks
# bring it in.
#
# The chapter draws the UNet twice, as the article does, without text and with text, from one call
# watched through `minisd.module.forward_hooks`: while it is active, a function of ours is called
# after every layer of the UNet with the layer's name, inputs and output. The drawings show what the
# call did, nothing guessed from layer names: a skip connection where an up-block ResNet block's
# input holds, number for number, an output of the way down; an arrow from the time embedding or
# the text into each layer that was handed that very array. Under each drawing: the shapes and block
# counts of this model beside SD 1.5's (its UNet built from its configuration, with empty weights),
# and the code of a ResNet block, or of a transformer block and its attention, read from minisd.
# Then the time embedding itself, the same seeds without and with text, and where each word of the
# prompt is looked at (cross-attention maps).

# %%
import inspect
import itertools
import textwrap
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from matplotlib.path import Path

import common
from minisd.blocks import Attention, Downsample2D, ResnetBlock2D, Upsample2D
from minisd.module import forward_hooks
from minisd.presets import SD1
from minisd.unet import BasicTransformerBlock, Transformer2DModel, UNet2DConditionModel, UNetConfig, timestep_embedding
from minisd.watch import token_maps, watch_unet

args = common.options("Chapter 7: the UNet without and with text, the time embedding, cross-attention")
tr = args.tr
pipe = common.load_model(args)
unet = pipe.unet
prompt = "a red circle on a white background"
steps = 6 if args.quick else pipe.defaults["steps"]
size = pipe.default_size
timestep = 500


# %%
# 1. One UNet call, watched: every layer's input and output, and which layers are handed the time
# embedding and the text
@dataclass
class Layer:
    key: str  # the layer's name in the checkpoint, e.g. down_blocks.1.resnets.0
    kind: str  # ResNet, attention, downsample, upsample, conv_in, conv_out
    input: np.ndarray  # a copy of its first input: (1, C_in, h, w)
    output: np.ndarray  # a copy of its output: (1, C_out, h, w)
    reads: list  # what it was handed besides the latents: "time embedding", "text"


KINDS = {ResnetBlock2D: "ResNet", Transformer2DModel: "attention", Downsample2D: "downsample", Upsample2D: "upsample"}
ENDS = ("conv_in", "conv_out")  # the first convolution (latents -> channels) and the last (channels -> noise)
side = size // pipe.vae_scale_factor
noisy = np.random.default_rng(0).standard_normal((1, unet.config.in_channels, side, side))
latents = pipe.backend.asarray(noisy, dtype="float32")  # (1, 4, h, w)
text = pipe.encode_prompt(prompt, guidance=1)  # (1, 77, D)
conditions = {"text": text}  # the time embedding joins once the UNet has computed it
readers = {"time embedding": [], "text": []}  # every module handed each, the drawn ones and those inside them
layers = []


def record(key, module, inputs, output):
    if key == "time_embedding":
        conditions["time embedding"] = output  # (1, 4·C0): the timestep as a vector
    reads = [name for name, value in conditions.items() if any(argument is value for argument in inputs)]
    for name in reads:
        readers[name].append(key)
    kind = KINDS.get(type(module), key if key in ENDS else None)
    if kind:  # a layer the article draws, not one of the linear layers inside it
        layers.append(Layer(key, kind, common.host(pipe, inputs[0]), common.host(pipe, output), reads))


with forward_hooks(unet, record):
    noise = unet(latents, timestep, text)  # (1, 4, h, w): same shape as the latents


# %%
# 2. The skip connections, read from the numbers: an up-block ResNet is handed [x, skip] concatenated
# along the channels, so its input is wider than the output before it, and the rest of its input is,
# number for number, an output the way down kept
def find_skips(layers):
    """{key of the layer that takes a skip: the Layer whose output it is}."""
    skips = {}
    for previous, layer in itertools.pairwise(layers):
        extra = layer.input.shape[1] - previous.output.shape[1]  # C_skip, 0 for a layer without a skip
        if extra > 0:
            skip = layer.input[:, -extra:]  # (1, C_skip, h, w)
            skips[layer.key] = next(kept for kept in layers if np.array_equal(kept.output, skip))
    return skips


skips = find_skips(layers)
for layer in layers:
    kept = skips.get(layer.key)
    note = f"   (+ skip from {kept.key}, {kept.output.shape[1]} channels)" if kept else ""
    reads = f"reads {', '.join(layer.reads)}" if layer.reads else ""
    print(
        f"{layer.key:>30}  {layer.kind:>10}  {layer.input.shape!s:>16} -> {layer.output.shape!s:<16}{reads:<30}{note}"
    )
print(f"UNet: latents {tuple(latents.shape)} + timestep + text {tuple(text.shape)} -> noise {tuple(noise.shape)}")
print({name: len(keys) for name, keys in readers.items()}, "modules handed the time embedding, the text")


# %%
# 3. This model and SD 1.5 side by side. SD 1.5's UNet is built from its configuration with empty weights
# (shapes only, nothing computed); both are counted from their modules.
def census(unet):
    """How many blocks of each kind a UNet is made of, counted from its modules."""
    modules = [module for _, module in unet.named_modules()]
    return {
        "ResNet blocks": sum(isinstance(module, ResnetBlock2D) for module in modules),
        "skip connections": sum(len(block.resnets) for block in unet.up_blocks),  # each up ResNet takes one
        "attention blocks": sum(isinstance(module, Transformer2DModel) for module in modules),
        "cross-attention layers": sum(isinstance(module, BasicTransformerBlock) for module in modules),  # 1 attn2 each
    }


def shapes_of(unet, sizes):
    """The shapes of what the drawings show, without the batch: latents (4, h, w), token embeddings
    (77, D), the time embedding (4·C0,) and the (C, h, w) of the ResNet blocks at each level, largest first."""
    _, side, _ = sizes["latents"]
    return {
        "latents": sizes["latents"],
        "token embeddings": sizes["token embeddings"],
        "time embedding": (unet.time_embedding.linear_2.weight.shape[0],),
        "levels": [(c, side // 2**level, side // 2**level) for level, c in enumerate(unet.config.block_out_channels)],
    }


unets = {pipe.name: unet, "SD 1.5": UNet2DConditionModel(UNetConfig.from_dict(SD1["unet"]))}
counts = {name: census(model) for name, model in unets.items()}
shapes = {name: shapes_of(model, common.sizes(pipe)[name]) for name, model in unets.items()}
for name in unets:
    print(f"{name}: {counts[name]}, {shapes[name]}")

# %%
# 4. The code of a ResNet block, and of a transformer block with its cross-attention, as minisd runs it
SHOWN_CODE = {False: [ResnetBlock2D.__call__], True: [BasicTransformerBlock.__call__, Attention.__call__]}
sources = {f.__qualname__: textwrap.dedent(inspect.getsource(f)) for shown in SHOWN_CODE.values() for f in shown}
for name, code in sources.items():
    print(f"--- {name}\n{code}")


# %%
# Figures 1 and 2: the UNet without text, then with text. Each layer is a box in a column of its own, in
# the order the data flows, at the height of its resolution: the U. The skip connections are arches over
# it; the time embedding and the text come from below, with an arrow into each layer that was handed them.
# Under the U: the shapes and counts of this model and SD 1.5, and the code of one block.
ROW = 1.4  # height between two resolutions
WIDTH, HEIGHT = 0.9, 0.6  # of a box
COLOURS = {"ResNet": "#9ecae1", "attention": "#fdae6b", "downsample": "#a1d99b", "upsample": "#a1d99b"}
FEEDS = {"time embedding": "#08519c", "text": "#d94801"}  # the colours of the two conditions' arrows
SKIP = "tab:purple"
NAMES = {"ResNet": tr("ResNet"), "attention": tr("Attn"), "downsample": tr("down"), "upsample": tr("up")}
NAMES.update({end: tr("conv") for end in ENDS})


def place(layers, with_text):
    """{key: (x, y)}: one column per drawn layer, at the height of its resolution. Without text an
    attention block is not drawn and takes the place of the ResNet block before it (so a skip that
    starts at it starts at that ResNet block, as in a UNet without attention)."""
    top = layers[0].output.shape[2]  # the latents' height
    places, x = {}, -1
    for layer in layers:
        if with_text or layer.kind != "attention":
            x += 1
        places[layer.key] = (x, -ROW * np.log2(top / layer.output.shape[2]))
    return places


def draw_layers(ax, drawn, places):
    for a, b in itertools.pairwise(drawn):  # the data's path, from layer to layer
        ax.plot(*zip(places[a.key], places[b.key]), color="0.45", lw=1, zorder=1)
    for layer in drawn:
        x, y = places[layer.key]
        colour = COLOURS.get(layer.kind, "#dddddd")
        ax.add_patch(Rectangle((x - WIDTH / 2, y - HEIGHT / 2), WIDTH, HEIGHT, fc=colour, ec="k", zorder=2))
        ax.text(x, y, NAMES[layer.kind], ha="center", va="center", fontsize=8, zorder=3)


def draw_skips(ax, skips, places):
    """Each skip connection as an arch from the top of the kept output to the top of the layer that
    takes it. At a level the arches nest (the last output kept is the first taken): the outer ones higher.
    Returns the height of the highest."""
    spans = [(places[kept.key], places[taken]) for taken, kept in skips.items()]
    peaks = []
    for (x0, y0), (x1, y1) in spans:
        inside = sum(y == y0 and x0 < a < b < x1 for (a, y), (b, _) in spans)
        start, end = (x0, y0 + HEIGHT / 2), (x1, y1 + HEIGHT / 2)
        peaks.append(start[1] + 0.4 + 0.3 * inside)
        lift = 4 / 3 * (peaks[-1] - start[1])  # the arch's control points: its peak is 3/4 as high
        path = Path([start, (x0, start[1] + lift), (x1, end[1] + lift), end], [Path.MOVETO] + [Path.CURVE4] * 3)
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=10, color=SKIP, lw=1.2, zorder=1))
    return max(peaks)


def draw_feeds(ax, drawn, places):
    """The time embedding and the text as lines under the U, with an arrow up into every drawn layer
    that was handed them (without text, no drawn layer is handed the text: no line for it). Returns
    the height of the lowest line."""
    labels = {"time embedding": tr("time embedding\n(t = {t})", t=timestep), "text": tr("token\nembeddings")}
    y = min(y for _, y in places.values()) - HEIGHT / 2
    for name, colour in FEEDS.items():
        targets = [places[layer.key] for layer in drawn if name in layer.reads]
        if not targets:
            continue
        y -= 0.8
        ax.plot([-0.6, max(x for x, _ in targets)], [y, y], color=colour, lw=2, zorder=1)
        for x, top in targets:
            arrow = {"arrowstyle": "-|>", "color": colour, "lw": 1.2, "shrinkA": 0, "shrinkB": 0}
            ax.annotate("", (x, top - HEIGHT / 2), (x, y), arrowprops=arrow, zorder=1)
        ax.text(-0.7, y, labels[name], ha="right", va="center", fontsize=9, color=colour)
    return y


def draw_ends(ax, drawn, places):
    """The latents coming into the first layer, the predicted noise out of the last, both from below."""
    for layer, label, arrow in ((drawn[0], tr("latents"), "-|>"), (drawn[-1], tr("predicted\nnoise"), "<|-")):
        x, y = places[layer.key]
        style = {"arrowstyle": arrow, "color": "0.2", "lw": 1.2}
        ax.annotate(label, (x, y - HEIGHT / 2), (x, y - HEIGHT / 2 - 0.6), ha="center", va="top", arrowprops=style)


def draw_unet(ax, with_text):
    drawn = [layer for layer in layers if with_text or layer.kind != "attention"]
    places = place(layers, with_text)
    draw_layers(ax, drawn, places)
    top = draw_skips(ax, skips, places)
    draw_ends(ax, drawn, places)
    bottom = draw_feeds(ax, drawn, places)
    for level, y in enumerate(sorted({y for _, y in places.values()}, reverse=True), 1):
        ax.text(-0.7, y, tr("level {n}", n=level), ha="right", va="center", fontsize=9, color="0.3")
    ax.set_xlim(-2.4, len(drawn) - 0.4)
    ax.set_ylim(bottom - 0.5, top + 0.1)
    ax.set_axis_off()


def draw_table(ax, title, rows):
    """A table of rows (label, this model's value, SD 1.5's), inside the axes."""
    columns = ["", *(tr.literal(name) for name in unets)]
    table = ax.table(rows, colLabels=columns, colWidths=(0.44, 0.28, 0.28), loc="upper center", cellLoc="center")
    table[0, 0].set_visible(False)  # no header over the labels
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)
    ax.axis("off")
    ax.set_title(title, fontsize=10)


def draw_shapes(ax, with_text):
    """Shapes, channels × height × width without the batch: the latents, each level's ResNet blocks,
    the time embedding and the token embeddings."""
    ours, theirs = (shapes[name] for name in unets)
    levels = itertools.zip_longest(ours["levels"], theirs["levels"], fillvalue=())  # SD 1.5 may have more
    rows = [(tr("latents, predicted noise"), ours["latents"], theirs["latents"])]
    rows += [(tr("level {n}", n=n), a, b) for n, (a, b) in enumerate(levels, 1)]
    rows.append((tr("time embedding"), ours["time embedding"], theirs["time embedding"]))
    if with_text:
        rows.append((tr("token embeddings"), ours["token embeddings"], theirs["token embeddings"]))
    cells = [[label, common.shape(a) or "–", common.shape(b) or "–"] for label, a, b in rows]
    draw_table(ax, tr("Shapes: this model and SD 1.5"), cells)


def draw_counts(ax, with_text):
    labels = {"ResNet blocks": tr("ResNet blocks"), "skip connections": tr("skip connections")}
    if with_text:
        labels |= {"attention blocks": tr("attention blocks"), "cross-attention layers": tr("cross-attention layers")}
    cells = [[label, *(str(counts[name][row]) for name in unets)] for row, label in labels.items()]
    draw_table(ax, tr("Blocks, counted from the modules"), cells)


def draw_code(ax, functions):
    """The functions' code, each under its file and name, in monospace."""
    code = "\n".join(
        f"# {f.__module__.replace('.', '/')}.py: {f.__qualname__}\n{sources[f.__qualname__]}" for f in functions
    )
    box = {"fc": "#f5f5f5", "ec": "0.75", "boxstyle": "round,pad=0.6"}
    ax.text(0.02, 0.96, tr.literal(code), family="monospace", fontsize=9.5, va="top", transform=ax.transAxes, bbox=box)
    ax.axis("off")


def legend(ax, with_text):
    def box(colour):
        return Patch(fc=colour, ec="k")

    def line(colour):
        return Line2D([], [], color=colour, lw=2)

    entries = [
        (box(COLOURS["ResNet"]), tr("ResNet block")),
        (box(COLOURS["downsample"]), tr("down: stride-2 convolution; up: nearest ×2, convolution")),
        (line(SKIP), tr("skip connection: concatenated to the layer's input")),
        (line(FEEDS["time embedding"]), tr("time embedding, handed to every ResNet block")),
    ]
    if with_text:
        entries.insert(1, (box(COLOURS["attention"]), tr("Attn: attention block (self-, then cross-attention)")))
        entries.append(
            (line(FEEDS["text"]), tr("token embeddings, handed to every attention block, to no ResNet block"))
        )
    handles, labels = zip(*entries)
    ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, fontsize=9, frameon=False)


def draw_figure(with_text):
    fig = plt.figure(figsize=(16, 10), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=(2.6, 1), width_ratios=(3.8, 3.4, 6.2))
    top = fig.add_subplot(grid[0, :])
    draw_unet(top, with_text)
    legend(top, with_text)
    draw_shapes(fig.add_subplot(grid[1, 0]), with_text)
    draw_counts(fig.add_subplot(grid[1, 1]), with_text)
    draw_code(fig.add_subplot(grid[1, 2]), SHOWN_CODE[with_text])
    if with_text:
        title = tr("The UNet with text ({model}, one call watched): the data flows left to right", model=pipe.name)
    else:
        title = tr("The UNet without text ({model}, one call watched): the data flows left to right", model=pipe.name)
    fig.suptitle(title, fontsize=12)
    return fig


for with_text, name in ((False, "07_unet_without_text"), (True, "07_unet_with_text")):
    common.save_figure(draw_figure(with_text), args, name)

# %%
# 5. The time embedding: the timestep as a vector of sines and cosines of decreasing frequency
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
left.set_xlabel(tr("dimension (0 … {last}: cosines, then sines)", last=embedding.shape[1] // 2 - 1))
left.set_ylabel(tr("timestep t (rows: 8 timesteps averaged)"))
left.set_title(tr("Sinusoidal time embedding, before the UNet's MLP"))
fig.colorbar(shown, ax=left, label=tr("embedding value"))
half = embedding.shape[1] // 2
for dimension in (half // 4, 3 * half // 8, half // 2, 3 * half // 4):  # cosine i turns at 10000^(-i/half) rad per step
    period = 2 * np.pi * 10000 ** (dimension / half)
    label = tr("dimension {dimension}: period {period:.0f} timesteps", dimension=dimension, period=period)
    right.plot(timesteps, embedding[:, dimension], label=label)
right.set_xlabel(tr("timestep t"))
right.set_ylabel(tr("value"))
right.set_title(tr("Four of the cosines\n(fast ones tell near timesteps apart, slow ones far ones)"), fontsize=10)
right.legend(loc="lower left", fontsize=8)
common.save_figure(fig, args, "07_timestep_embedding")

# %%
# 6. Without text and with text: same seeds, the empty prompt against a prompt
seeds = range(2 if args.quick else 3)
fig, axes = plt.subplots(2, len(seeds), figsize=(2.2 * len(seeds) + 1, 5), layout="constrained", squeeze=False)
for column, seed in enumerate(seeds):
    for row, text_prompt in enumerate(("", prompt)):
        axes[row, column].imshow(common.pixels(pipe(text_prompt, steps=steps, seed=seed, progress=False)))
        axes[row, column].set_xticks([])
        axes[row, column].set_yticks([])
    axes[0, column].set_title(tr("seed {seed}", seed=seed))
axes[0, 0].set_ylabel(tr("without text\n(empty prompt)"))
axes[1, 0].set_ylabel(tr("with text") + "\n" + tr.literal(textwrap.fill(f'"{prompt}"', 22)), fontsize=9)
fig.suptitle(tr("The same starting noise, denoised without and with the text"))
common.save_figure(fig, args, "07_without_and_with_text")

# %%
# 7. Cross-attention maps: where each word of the prompt is looked at. `minisd.watch.watch_unet` records
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
# Figure 5: the final picture, and one map per token, all layers and steps averaged, on one colour scale.
# Most of every pixel's attention goes to the end token and the padding after it (62 % here): under
# CLIP's causal attention the end token is the one that has read the whole prompt, and the padding
# tokens repeat it, so a pixel that needs no particular word rests its attention there (a "sink").
# The words share the rest, from 1 % to 12 %: the scale is logarithmic so both show.
norm = LogNorm(vmin=min(float(heat.min()) for heat in heats), vmax=max(float(heat.max()) for heat in heats))
fig, axes = plt.subplots(1, len(tokens) + 1, figsize=(1.45 * (len(tokens) + 1) + 0.6, 2.6), layout="constrained")
axes[0].imshow(final)
axes[0].set_title(tr("picture"), fontsize=9)
words = [tr.literal(token) for token in tokens[1:-1]]  # the prompt's pieces are what the model reads
names = [tr("<start>"), *words, tr("<end> + padding")]
for ax, heat, name in zip(axes[1:], heats, names):
    ax.imshow(final, alpha=0.35)
    image = ax.imshow(
        heat,
        cmap="inferno",
        norm=norm,
        alpha=0.75,
        extent=(-0.5, final.shape[1] - 0.5, final.shape[0] - 0.5, -0.5),
        interpolation="bilinear",
    )
    ax.set_title(name + "\n" + tr("{share:.0%} of attention", share=heat.mean()), fontsize=8)
for ax in axes:
    ax.set_axis_off()
fig.colorbar(image, ax=axes[1:], label=tr("attention weight\n(one log scale)"), shrink=0.9, pad=0.01)
title = tr(
    'Cross-attention: where each token of "{prompt}" is looked at '
    "({calls} UNet calls, all their layers averaged; one scale for every map)",
    prompt=prompt,
    calls=len(calls),
)
fig.suptitle(title, fontsize=10)
common.save_figure(fig, args, "07_cross_attention")

common.save_facts(
    args,
    "07_unet",
    {
        "layers": [[layer.key, layer.kind, layer.input.shape, layer.output.shape, layer.reads] for layer in layers],
        "skips": {taken: kept.key for taken, kept in skips.items()},
        "readers": readers,
        "counts": counts,
        "sources": sources,
        "tokens": tokens,
        "attention_per_token": [float(heat.mean()) for heat in heats],
        "attention_total": float(average.sum(axis=-1).mean()),
    },
)
