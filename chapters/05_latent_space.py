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

# %%
import matplotlib.pyplot as plt
import numpy as np

import common

args = common.options("Chapter 5: the autoencoder's latents, the compression factor, the round trip's PSNR")
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
    axes[row, 5].set_xlabel(f"PSNR {score:.1f} dB")
titles = ["picture", *(f"latent channel {c}" for c in range(4)), "decoded", "|difference|, 0 … 0.25"]
for ax, title in zip(axes[0], titles):
    ax.set_title(title)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(shown, ax=axes[:, 4], shrink=0.8, label="latent value")
(h, w), (H, W) = latents[0].shape[1:], originals[0].shape[:2]
fig.suptitle(
    f"The autoencoder: a {H}×{W}×3 picture becomes 4×{h}×{w} latents ({compression:.0f}× fewer numbers); "
    "the decoder paints it back"
)
common.save_figure(fig, args, "05_latent_space")

common.save_facts(
    args,
    "05_latent_space",
    {
        "combinations": combinations,
        "compression": compression,
        "psnr_db": psnrs,
        "picture_shape": list(originals[0].shape),
        "latent_shape": list(latents[0].shape),
    },
)
