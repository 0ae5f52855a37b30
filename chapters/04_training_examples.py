# %% [markdown]
# # 4. How training examples are made
#
# *The Illustrated Stable Diffusion*, section **"How does diffusion work?"**.
#
# The noise predictor is trained on made-up examples: take a picture, draw random noise, add it at
# a chosen level, and ask the model to find the noise again. The levels come from the *noise
# schedule*: at training timestep t (0 … 999) the noisy sample is
#
#     x_t = sqrt(ᾱ_t) · x_0 + sqrt(1 − ᾱ_t) · noise,
#
# where ᾱ_t (alpha-bar) falls from about 1 (clean) to about 0 (nothing but noise). The article draws
# five levels, 0 to 4; we pick five timesteps evenly spread over the schedule.
#
# Stable Diffusion does this to the *latents* of the picture (chapter 5), not to its pixels; we
# show both: the pixels because they are easy to look at, the latents because that is what the
# UNet sees. Then we ask the trained UNet for the noise it thinks was added, and compare.

# %%
import matplotlib.pyplot as plt
import numpy as np

import common
from minisd.schedulers import make_scheduler
from minisd.schedulers.schedule import predict_x0_and_noise

args = common.options("Chapter 4: noise levels, training examples, and the noise predictor's error")
pipe = common.load_model(args)
size = pipe.default_size
scheduler = make_scheduler("ddim", pipe.scheduler_config)  # the model's noise schedule; add_noise is x_t above
alpha_bar = scheduler.alphas_cumprod  # (1000,) ᾱ_t, float32
T = len(alpha_bar)
levels = np.linspace(0, T - 1, 5).round().astype(int)  # noise levels 0..4 -> timesteps 0 … 999
rng = np.random.default_rng(0)
print("levels 0..4 are timesteps", levels, "with sqrt(ᾱ) =", np.sqrt(alpha_bar[levels]).round(3))

# %%
# 1. Noise levels on a picture, in pixel space
colour, shape, background = "red", "circle", "white"
caption = common.shapes.caption(colour, shape, background)
image = common.picture(colour, shape, background, size, seed=1)
x0 = common.pixels(image) * 2 - 1  # (H, W, 3) in [-1, 1], as the autoencoder sees pictures
pixel_noise = rng.standard_normal(x0.shape).astype(np.float32)
noisy_pixels = [scheduler.add_noise(x0, pixel_noise, t) for t in levels]  # x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·noise
added_std = [float(np.std(noisy - np.sqrt(alpha_bar[t]) * x0)) for noisy, t in zip(noisy_pixels, levels)]
print("std of the noise added at each level:", np.round(added_std, 3))

# %%
# 2. The same in latent space: what the UNet is trained on
mean, _ = pipe.encode_image(image)  # the autoencoder's latents of the picture, (1, 4, h, w)
latents = common.host(pipe, mean) * pipe.vae.config.scaling_factor  # scaled to unit variance for the UNet
latent_noise = rng.standard_normal(latents.shape).astype(np.float32)
noisy_latents = [scheduler.add_noise(latents, latent_noise, t) for t in levels]  # the same formula
text = pipe.encode_prompt(caption, guidance=1)  # (1, 77, D): the caption, no guidance


def predicted_noise(noisy, t, text):
    """Ask the UNet for the noise in `noisy` (B, 4, h, w) at timestep t, given the captions' vectors.

    Models trained with v-prediction (like the embedded one, or SD 2.1) output v = sqrt(ᾱ)·noise −
    sqrt(1 − ᾱ)·x_0 rather than the noise itself; the scheduler's formula turns either into noise.
    """
    output = common.host(pipe, pipe.unet(pipe.backend.asarray(noisy), t, text))
    _, noise = predict_x0_and_noise(scheduler.config.prediction_type, output, noisy, alpha_bar[t])
    return noise


predictions = [predicted_noise(noisy, t, text) for noisy, t in zip(noisy_latents, levels)]

# %%
# Figure 1: the training examples, the noise the UNet must find in them, and what it finds
fig, axes = plt.subplots(5, len(levels), figsize=(12, 12.5), layout="constrained")
rows = [
    "picture + noise\n(pixels)",
    "latents + noise\n(what the UNet sees)",
    "noise to find\n(the truth)",
    "noise the UNet\npredicts",
    "prediction error\n(predicted − truth)",
]
for column, t in enumerate(levels):
    axes[0, column].imshow((noisy_pixels[column].clip(-1, 1) + 1) / 2)
    axes[0, column].set_title(
        f"level {column}: t = {t}\nsqrt(ᾱ) = {np.sqrt(alpha_bar[t]):.2f}, noise × {np.sqrt(1 - alpha_bar[t]):.2f}",
        fontsize=9,
    )
    latent_panels = [noisy_latents[column], latent_noise, predictions[column], predictions[column] - latent_noise]
    for row, panel in enumerate(latent_panels, start=1):
        shown = axes[row, column].imshow(common.channel_mosaic(panel[0]), cmap="RdBu_r", vmin=-3, vmax=3)
for ax, label in zip(axes[:, 0], rows):
    ax.set_ylabel(label, fontsize=10)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(shown, ax=axes[1:, -1], shrink=0.5, label="latent value")
fig.suptitle(
    f'Training examples from one picture ("{caption}") at noise levels 0 … 4,\n'
    "and the noise the trained UNet finds in them (latents: the 4 channels tiled 2 × 2)"
)
common.save_figure(fig, args, "04_training_examples")

# %%
# 3. The predictor's error against the timestep, over several pictures and noise draws
combinations = common.shapes.COMBINATIONS[:: 9 if args.quick else 3]  # 6 or 18 pictures
batch = [common.picture(*combination, size, seed=index) for index, combination in enumerate(combinations)]
clean = np.concatenate([common.host(pipe, pipe.encode_image(picture)[0]) for picture in batch])
clean *= pipe.vae.config.scaling_factor  # (N, 4, h, w)
texts = pipe.text_encoder(
    pipe.backend.asarray(pipe.tokenizer.encode([common.shapes.caption(*c) for c in combinations]), dtype="int64")
)
timesteps = np.linspace(0, T - 1, 6 if args.quick else 21).round().astype(int)
errors = []
for t in timesteps:
    noise = rng.standard_normal(clean.shape).astype(np.float32)
    predicted = predicted_noise(scheduler.add_noise(clean, noise, t), t, texts)
    errors.append(float(np.mean((predicted - noise) ** 2)))  # mean squared error per latent value
    print(f"t = {t:4d}: mean squared error of the predicted noise {errors[-1]:.4f}")

# %%
# Figure 2: the noise schedule, and the predictor's error against the timestep
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
left.plot(np.sqrt(alpha_bar), label="sqrt(ᾱ_t): how much picture is left")
left.plot(np.sqrt(1 - alpha_bar), label="sqrt(1 − ᾱ_t): how much noise is mixed in")
left.scatter(levels, np.sqrt(1 - alpha_bar[levels]), color="black", zorder=3, label="levels 0 … 4")
left.set_xlabel("training timestep t")
left.set_ylabel("weight in x_t")
left.set_title("The noise schedule")
left.legend(loc="center right")
shown = [(t, error) for t, error in zip(timesteps, errors) if error > 0]  # a log axis has no 0
right.plot(*zip(*shown), "o-")
right.set_yscale("log")  # the error spans decades
if len(shown) < len(errors):
    right.annotate(
        "exactly 0 at the last level\n(pure noise: nothing to guess)",
        (0.98, 0.9),
        xycoords="axes fraction",
        ha="right",
        fontsize=8,
    )
right.set_xlabel("training timestep t (how much noise was added)")
right.set_ylabel("mean squared error of the predicted noise (log scale)")
right.set_title(f"The trained noise predictor's error ({len(batch)} pictures per point)")
for ax in (left, right):
    ax.grid(alpha=0.3)
common.save_figure(fig, args, "04_noise_prediction_error")

# %% [markdown]
# What the error curve says: with little noise (small t) the noise is a faint, hard-to-see part
# of the input, and the predictor mostly guesses; but that guess is multiplied by sqrt(1 − ᾱ_t),
# close to 0 there, so it barely moves the picture. With much noise, the input is mostly noise
# and the prediction is accurate. (With a zero-terminal-SNR schedule, like the embedded model's,
# the last level is pure noise: the noise *is* the input, and the error is exactly 0.)

# %%
common.save_facts(
    args,
    "04_training_examples",
    {
        "levels": levels.tolist(),
        "alpha_bar": alpha_bar[levels].tolist(),
        "added_noise_std": added_std,
        "timesteps": timesteps.tolist(),
        "errors": errors,
    },
)
