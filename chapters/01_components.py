# %% [markdown]
# # 1. The components
#
# *The Illustrated Stable Diffusion*, section **"The components of Stable Diffusion"**.
#
# Stable Diffusion is a system of three models run one after the other:
#
# 1. the **text encoder** (CLIP's text transformer) turns the prompt into one vector per token;
# 2. the **image information creator** (a UNet and a scheduler) starts from random *latents* and
#    removes noise from them step by step. It never touches pixels: it works in a small latent
#    space, which is why it can afford many steps;
# 3. the **image decoder** (the autoencoder's decoder) paints the final latents into pixels, once.
#
# This chapter runs the three one by one, prints the shapes of the tensors passed between them
# and the time each takes, and draws them as the article does: three boxes, tensors in between,
# each shape beside SD 1.5's (the article's 77×768, 4×64×64 and 3×512×512, read from its
# configuration). The latents after the first step are noise; after the last, channel 3 already
# shows the circle the decoder paints.

# %%
import textwrap

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

import common
from minisd.images import to_pil

args = common.options("Chapter 1: the three components, the tensors between them, their times")
tr = args.tr
pipe = common.load_model(args)
prompt = "a red circle on a white background"
steps = 4 if args.quick else pipe.defaults["steps"]
times, shapes = {}, {}

# %%
# 1. The text encoder: prompt -> 77 token ids -> 77 vectors, one per token
with common.timed("text encoder", times):
    ids = pipe.tokenizer.encode(prompt)  # (1, 77): start token, the prompt's tokens, end token, padding
    embeddings = pipe.text_encoder(pipe.backend.asarray(ids, dtype="int64"))  # (1, 77, D)
shapes["token ids"], shapes["token embeddings"] = ids.shape, embeddings.shape
print(f"text encoder: {ids.shape} token ids -> {embeddings.shape} token embeddings")

# %%
# 2. The image information creator: the denoising loop, one UNet call (and scheduler step) per step.
# pipe.denoise is a generator that yields after every step. It encodes the prompt itself (with the
# empty negative prompt, for guidance), so the UNet sees a batch of 2: without and with the text.
with common.timed("image information creator", times):
    for step in pipe.denoise(prompt, steps=steps, seed=0):
        if step.index == 0:
            first_latents = common.host(pipe, step.latents)
latents = step.latents  # (1, 4, h, w)
shapes["latents"] = latents.shape
print(f"image information creator: {steps} steps on latents of shape {latents.shape}")

# %%
# 3. The image decoder: latents -> pixels, once, at the end.
# The latents are scaled to unit variance for the UNet; the decoder wants them unscaled.
with common.timed("image decoder", times):
    image = pipe.vae.decode(pipe.vae_backend.asarray(latents / pipe.vae.config.scaling_factor))  # (1, 3, H, W)
shapes["image"] = image.shape
picture = to_pil(common.host(pipe, image))  # in [-1, 1] -> 0..255 RGB
print(f"image decoder: latents {latents.shape} -> image {image.shape}")
for name, seconds in times.items():
    print(f"{name:>26}: {seconds * 1000:8.1f} ms")


# %%
# The figure: three boxes and the tensors between them, with the measured shapes and times
def box(ax, x, width, title, detail):
    ax.add_patch(FancyBboxPatch((x, 0.12), width, 0.74, boxstyle="round,pad=0.005", fc="#dde8f5", ec="#2a5d9f"))
    ax.text(x + width / 2, 0.8, title, ha="center", va="center", fontsize=10.5, weight="bold")
    ax.text(x + width / 2, 0.7, detail, ha="center", va="center", fontsize=9)


def arrow(ax, x0, x1, label):
    ax.annotate("", (x1, 0.45), (x0, 0.45), arrowprops={"arrowstyle": "-|>", "lw": 1.5})
    ax.text((x0 + x1) / 2, 0.42, label, ha="center", va="top", fontsize=8)


def image_axes(fig, x, y, height, data, title, **style):
    inset = fig.add_axes((x, y, height * HEIGHT / WIDTH, height))  # a square
    inset.imshow(data, interpolation="nearest", **style)
    inset.set_title(title, fontsize=8)
    inset.set_xticks([])
    inset.set_yticks([])


def tensor(label, name):
    """An arrow's label: the tensor's name, its shape here and SD 1.5's (the article's numbers)."""
    here, article = common.shape(shapes[name][1:]), common.shape(common.sizes(pipe)["SD 1.5"][name])
    return "\n".join([label, tr.literal(here), tr("(SD 1.5: {shape})", shape=article)])


WIDTH, HEIGHT = 12, 3.6
fig = plt.figure(figsize=(WIDTH, HEIGHT))
ax = fig.add_axes((0, 0, 1, 1))
ax.set_axis_off()
ax.text(0.5, 0.94, tr("Stable Diffusion: three components run one after the other"), ha="center", fontsize=12)
ax.text(
    0.065,
    0.45,
    tr("prompt:") + "\n" + tr.literal(textwrap.fill(f'"{prompt}"', 20)),
    ha="center",
    va="center",
    fontsize=9,
)
arrow(ax, 0.125, 0.175, tr("token ids") + "\n" + tr.literal(common.shape(shapes["token ids"][1:])))
box(ax, 0.175, 0.155, tr("Text encoder"), tr("CLIP text transformer\n{ms:.0f} ms", ms=times["text encoder"] * 1000))
arrow(ax, 0.33, 0.42, tensor(tr("token\nembeddings"), "token embeddings"))
box(
    ax,
    0.42,
    0.24,
    tr("Image information creator"),
    tr("UNet + scheduler, {steps} steps\n{s:.2f} s", steps=steps, s=times["image information creator"]),
)
mosaic = common.channel_mosaic
image_axes(fig, 0.437, 0.17, 0.36, mosaic(first_latents[0]), tr("latents after step 1"), cmap="gray")
image_axes(fig, 0.557, 0.17, 0.36, mosaic(common.host(pipe, latents)[0]), tr("after step {n}", n=steps), cmap="gray")
ax.text(0.54, 0.13, tr("(the 4 latent channels tiled 2 × 2)"), ha="center", va="bottom", fontsize=7)
arrow(ax, 0.66, 0.76, tensor(tr("latents"), "latents"))
box(
    ax,
    0.76,
    0.125,
    tr("Image decoder"),
    tr("the autoencoder's\ndecoder, {ms:.0f} ms", ms=times["image decoder"] * 1000),
)
arrow(ax, 0.885, 0.9, "")
image_axes(fig, 0.9, 0.3, 0.3, common.pixels(picture), tensor(tr("image"), "image"))
common.save_figure(fig, args, "01_components")

common.save_facts(
    args,
    "01_components",
    {
        "prompt": prompt,
        "steps": steps,
        "shapes": {name: list(shape) for name, shape in shapes.items()},
        "seconds": times,
    },
)
