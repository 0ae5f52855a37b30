# %% [markdown]
# # 5. Speed from the latent space
#
# *The Illustrated Stable Diffusion*, section **"Speed boost: diffusion on compressed (latent)
# data instead of the pixel image"**.
#
# Diffusion on pixels is expensive: the UNet would run on every pixel at every step. Stable
# Diffusion first trains an autoencoder: its **encoder** squeezes a picture into a small grid of
# 4-channel *latents* (8 times smaller in height and width), its **decoder** paints the picture
# back. Noising, the noise predictor and the whole denoising loop then work on latents; the
# decoder runs once, at the end.
#
# Here we encode a few pictures, look at their 4 latent channels, decode them, and measure how much
# smaller the latents are and how faithful the round trip is (PSNR, in decibels: higher is closer).
# Then the speed the section is named for: the work of one UNet step on latents against the same
# UNet on pixels, for the embedded model and for SD 1.5's sizes.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import common
from minisd.backend import Backend
from minisd.presets import SD1
from minisd.random_model import place
from minisd.roofline import count_flops
from minisd.unet import UNet2DConditionModel, UNetConfig

args = common.options("Chapter 5: the autoencoder's latents, the compression factor, the round trip's PSNR")
tr = args.tr
pipe = common.load_model(args)
size = pipe.default_size
combinations = [("red", "circle", "white"), ("blue", "square", "black"), ("yellow", "triangle", "gray")]
if args.quick:
    combinations = combinations[:2]

# %%
# 1. Encode each picture, then decode its latents
originals, latents, decoded = [], [], []
for index, combination in enumerate(combinations):
    image = common.picture(*combination, size, seed=index)
    mean, logvar = pipe.encode_image(image)  # each (1, 4, h, w): the encoder gives a distribution
    scaled = mean * pipe.vae.config.scaling_factor  # the mean, scaled to unit variance: what the UNet uses
    originals.append(common.pixels(image))  # (H, W, 3) in [0, 1]
    latents.append(common.host(pipe, scaled)[0])  # (4, h, w)
    decoded.append(common.pixels(pipe.decode(scaled)))  # the decoder paints it back: (H, W, 3)

# %%
# 2. How much smaller, how faithful
compression = originals[0].size / latents[0].size  # (3·H·W) / (4·h·w)
psnrs = [common.psnr(a, b) for a, b in zip(originals, decoded)]
print(f"picture {originals[0].shape} -> latents {latents[0].shape}: {compression:.0f}× fewer numbers")
print("round-trip PSNR (dB):", np.round(psnrs, 1))

# %%
# Figure: picture | its 4 latent channels | the decoded picture | the difference
fig, axes = plt.subplots(len(combinations), 7, figsize=(13, 2.1 * len(combinations) + 0.9), layout="constrained")
limit = max(np.abs(z).max() for z in latents)
for row, (original, z, back, score) in enumerate(zip(originals, latents, decoded, psnrs)):
    axes[row, 0].imshow(original)
    for channel in range(4):
        shown = axes[row, 1 + channel].imshow(z[channel], cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[row, 5].imshow(back)
    axes[row, 6].imshow(np.abs(original - back).mean(axis=2), cmap="magma", vmin=0, vmax=0.25)
    axes[row, 5].set_xlabel(tr("PSNR {score:.1f} dB", score=score))
titles = [
    tr("picture"),
    *(tr("latent channel {c}", c=c) for c in range(4)),
    tr("decoded"),
    tr("|difference|\n0 … 0.25"),
]
for ax, title in zip(axes[0], titles):
    ax.set_title(title)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(shown, ax=axes[:, 4], shrink=0.8, label=tr("latent value"))
article = common.sizes(pipe)["SD 1.5"]
fig.suptitle(
    tr(
        "The autoencoder: a {image} picture becomes {latents} latents ({compression:.0f}× fewer numbers; "
        "SD 1.5: {article_image} → {article_latents}); the decoder paints it back",
        image=common.shape(np.moveaxis(originals[0], 2, 0).shape),
        latents=common.shape(latents[0].shape),
        compression=compression,
        article_image=common.shape(article["image"]),
        article_latents=common.shape(article["latents"]),
    )
)
common.save_figure(fig, args, "05_latent_space")

# %%
# 3. The speed boost. A UNet step's work (FLOPs, counted while it runs, minisd.roofline.count_flops)
# grows with the number of latent pixels n in two ways: convolutions, linear layers and
# cross-attention's queries in proportion to n, self-attention (every pixel against every pixel) in
# proportion to n²; the text's keys and values and the time embedding cost the same at any size.
# So FLOPs(n) = c + a·n + b·n², three counted sizes give c, a and b exactly, and the law prices the
# step at the picture's own size, where the UNet would have to run without the
# autoencoder (3 channels in and out instead of 4). One step with guidance: batch 2.


def unet_with(config, channels):
    """The UNet of `config` with `channels` in and out, weights all zero (FLOPs do not depend on them)."""
    unet = UNet2DConditionModel(UNetConfig.from_dict({**config, "in_channels": channels, "out_channels": channels}))
    zeros = {key: np.zeros(slot.shape, "float16") for key, _, _, slot in unet.named_slots()}
    return place(unet, zeros, Backend("numpy", "float32", "float16"))


def step(unet, side, text_width):
    """(FLOPs, seconds) of one UNet step with guidance on a side × side grid."""
    channels = unet.config.in_channels
    sample, text = np.zeros((2, channels, side, side), "float32"), np.zeros((2, 77, text_width), "float32")
    with count_flops() as flops:
        start = time.perf_counter()
        unet(sample, 500, text)
    return flops[0], time.perf_counter() - start


def flops_law(unet, text_width, sides=(8, 16, 24)):
    """FLOPs(n) = c + a·n + b·n² as a function of n, from counts at three sizes."""
    n = np.array([side * side for side in sides], float)
    counted = [step(unet, side, text_width)[0] for side in sides]
    c, a, b = np.linalg.solve(np.stack([np.ones(3), n, n * n], axis=1), counted)
    return lambda side: float(c + a * side**2 + b * side**4)


unet_config = {key: value for key, value in pipe.unet.config.__dict__.items()}
embedded_text = pipe.text_encoder.config.hidden_size
speed = {}
latent_side, pixel_side = size // (size // latents[0].shape[1]), size
for name, (config, text_width, sides) in {
    "embedded model": (unet_config, embedded_text, (latent_side, pixel_side)),
    "SD 1.5": (SD1["unet"], SD1["text_encoder"]["hidden_size"], (64, 512)),
}.items():
    on_latents, on_pixels = unet_with(config, 4), unet_with(config, 3)
    entry = {
        "sides": sides,
        "latent_flops": flops_law(on_latents, text_width)(sides[0]),
        "pixel_flops": flops_law(on_pixels, text_width)(sides[1]),
    }
    if name == "embedded model":  # small enough to run on pixels too: count and time both
        (entry["counted_latent_flops"], entry["latent_seconds"]) = step(on_latents, sides[0], text_width)
        (entry["counted_pixel_flops"], entry["pixel_seconds"]) = step(on_pixels, sides[1], text_width)
    else:  # too big to time on pixels: this CPU's rate on a 32x32 step of the real UNet prices both
        flops, seconds = step(on_latents, 32, text_width)
        entry["rate"] = flops / seconds
        entry["latent_seconds"] = entry["latent_flops"] / entry["rate"]
        entry["pixel_seconds"] = entry["pixel_flops"] / entry["rate"]
    speed[name] = entry
    ratio = entry["pixel_flops"] / entry["latent_flops"]
    print(
        f"{name}: a step on {sides[0]}² latents {entry['latent_flops'] / 1e9:.2f} GFLOP, on {sides[1]}² pixels "
        f"{entry['pixel_flops'] / 1e9:.1f} GFLOP: {ratio:.0f}× more work"
    )

# %%
# Figure 2: FLOPs and time of a step, on latents and on pixels
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
names = list(speed)
on_latents, on_pixels = tr("on latents"), tr("on pixels")
for offset, (key, label, colour) in zip(
    (-0.2, 0.2), (("latent_flops", on_latents, "tab:green"), ("pixel_flops", on_pixels, "tab:red"))
):
    values = [speed[name][key] / 1e9 for name in names]
    bars = left.bar(np.arange(len(names)) + offset, values, 0.4, label=label, color=colour)
    left.bar_label(bars, [tr.number(v, ",.1f" if v < 100 else ",.0f") for v in values], fontsize=8)
left.set_yscale("log")
model_name = {"embedded model": tr("embedded model"), "SD 1.5": tr.literal("SD 1.5")}
sides = [
    tr("{latent}² latents / {pixel}² pixels", latent=speed[n]["sides"][0], pixel=speed[n]["sides"][1]) for n in names
]
left.set_xticks(range(len(names)), [f"{model_name[n]}\n{side}" for n, side in zip(names, sides)])
left.set_ylabel(tr("GFLOP per step with guidance (log scale)"))
left.set_title(tr("Work of one UNet step"))
left.legend()
for offset, (key, label, colour) in zip(
    (-0.2, 0.2), (("latent_seconds", on_latents, "tab:green"), ("pixel_seconds", on_pixels, "tab:red"))
):
    values = [speed[name][key] for name in names]
    bars = right.bar(np.arange(len(names)) + offset, values, 0.4, label=label, color=colour)
    right.bar_label(
        bars, [tr("{v:.2g} s", v=v) if v < 3600 else tr("{h:.0f} h", h=v / 3600) for v in values], fontsize=8
    )
right.set_yscale("log")
sd_rate = speed["SD 1.5"]["rate"] / 1e9
ticks = [
    tr("embedded model\n(both timed)"),
    tr("SD 1.5\n(its FLOPs at {rate:.0f} GFLOP/s, this CPU's rate)", rate=sd_rate),
]
right.set_xticks(range(len(names)), ticks)
right.set_ylabel(tr("seconds per step (log scale)"))
right.set_title(tr("Time of one UNet step on this CPU"))
right.legend()
fig.suptitle(tr("The speed boost: the same UNet on latents and on the picture's pixels (3 channels in and out)"))
common.save_figure(fig, args, "05_speed")

# %%
common.save_facts(
    args,
    "05_latent_space",
    {
        "speed": speed,
        "combinations": combinations,
        "compression": compression,
        "psnr_db": psnrs,
        "picture_shape": list(originals[0].shape),
        "latent_shape": list(latents[0].shape),
    },
)
