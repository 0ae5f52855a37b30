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
#
# Last, the real thing: one batch of training examples made by the code that trained the embedded
# model, `unet_batch` in weights/training/train.py (each step of `train_unet` calls it and computes
# its loss). Each example is a picture's latents x_0 (drawn from the autoencoder's posterior, so
# the same picture never gives exactly the same latents twice), a caption (the full one 60% of
# the time, the short one, without the background, 30%, the empty one 10%, which is what lets
# guidance compare "with" and "without" text), a timestep t drawn uniformly from 0 … 999, the noise,
# the noisy latents x_t, and the target. The embedded model is trained with *v-prediction*: its
# target is v = sqrt(ᾱ_t) · noise − sqrt(1 − ᾱ_t) · x_0 (mostly the noise at small t, mostly minus
# the picture's latents at large t), and the loss is the mean squared difference between the UNet's output and
# v. That part needs PyTorch, as the script does (`pip install -e '.[reference]'`).

# %%
import textwrap

import matplotlib.pyplot as plt
import numpy as np

import common
import minisd
from minisd.schedulers import make_scheduler
from minisd.schedulers.schedule import predict_x0_and_noise

args = common.options("Chapter 4: noise levels, training examples, and the noise predictor's error")
tr = args.tr
pipe = common.load_model(args)
size = pipe.default_size
sizes = common.sizes(pipe)
model_sizes, article_sizes = sizes.values()  # the embedded model's tensors and SD 1.5's, side by side
for name, tensors in sizes.items():
    print(f"{name}: pictures {common.shape(tensors['image'])}, latents {common.shape(tensors['latents'])}")
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
def label_rows(axes, rows, fontsize):
    """A grid of pictures: each row's label on its left, no ticks anywhere."""
    for ax, label in zip(axes[:, 0], rows):
        ax.set_ylabel(label, fontsize=fontsize)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])


# %%
# Figure 1: the training examples, the noise the UNet must find in them, and what it finds
fig, axes = plt.subplots(5, len(levels), figsize=(12, 12.5), layout="constrained")
rows = [
    tr(
        "picture + noise\n(pixels, {ours};\nSD 1.5: {sd15})",
        ours=common.shape(model_sizes["image"]),
        sd15=common.shape(article_sizes["image"]),
    ),
    tr("latents + noise\n(what the UNet sees)"),
    tr("noise to find\n(the truth)"),
    tr("noise the UNet\npredicts"),
    tr("prediction error\n(predicted − truth)"),
]
for column, t in enumerate(levels):
    axes[0, column].imshow((noisy_pixels[column].clip(-1, 1) + 1) / 2)
    axes[0, column].set_title(
        tr("level {level}: t = {t}", level=column, t=t)
        + "\n"
        + tr(
            "sqrt(ᾱ) = {picture:.2f}, noise × {noise:.2f}",
            picture=np.sqrt(alpha_bar[t]),
            noise=np.sqrt(1 - alpha_bar[t]),
        ),
        fontsize=9,
    )
    latent_panels = [noisy_latents[column], latent_noise, predictions[column], predictions[column] - latent_noise]
    for row, panel in enumerate(latent_panels, start=1):
        shown = axes[row, column].imshow(common.channel_mosaic(panel[0]), cmap="RdBu_r", vmin=-3, vmax=3)
label_rows(axes, rows, fontsize=10)
fig.colorbar(shown, ax=axes[1:, -1], shrink=0.5, label=tr("latent value"))
fig.suptitle(
    tr('Training examples from one picture ("{caption}") at noise levels 0 … 4,', caption=caption)
    + "\n"
    + tr(
        "and the noise the trained UNet finds in them (latents {ours}, SD 1.5: {sd15}; the 4 channels tiled 2 × 2)",
        ours=common.shape(model_sizes["latents"]),
        sd15=common.shape(article_sizes["latents"]),
    )
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
left.plot(np.sqrt(alpha_bar), label=tr("sqrt(ᾱ_t): how much picture is left"))
left.plot(np.sqrt(1 - alpha_bar), label=tr("sqrt(1 − ᾱ_t): how much noise is mixed in"))
left.scatter(levels, np.sqrt(1 - alpha_bar[levels]), color="black", zorder=3, label=tr("levels 0 … 4"))
left.set_xlabel(tr("training timestep t"))
left.set_ylabel(tr("weight in x_t"))
left.set_title(tr("The noise schedule"))
left.legend(loc="center right")
shown = [(t, error) for t, error in zip(timesteps, errors) if error > 0]  # a log axis has no 0
right.plot(*zip(*shown), "o-")
right.set_yscale("log")  # the error spans decades
if len(shown) < len(errors):
    right.annotate(
        tr("exactly 0 at the last level\n(pure noise: nothing to guess)"),
        (0.98, 0.9),
        xycoords="axes fraction",
        ha="right",
        fontsize=8,
    )
right.set_xlabel(tr("training timestep t (how much noise was added)"))
right.set_ylabel(tr("mean squared error of the predicted noise (log scale)"))
right.set_title(tr("The trained noise predictor's error ({n} pictures per point)", n=len(batch)))
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
# 4. One real training batch, made by the training script's own code, and its loss
trained = pipe if args.weights is None else minisd.load(minisd.default_model_folder(), backend=args.backend)
if trained is not pipe:
    print("the training batch is the embedded model's (train.py trained it): this part uses it")


def training_batch(model):
    """One batch as weights/training/train.py's unet_batch draws it at each training step, from one
    picture of each combination (the script's make_dataset) encoded by `model`'s autoencoder;
    with the batch's captions."""
    train = common.training_script()
    import torch  # there with train.py's other needs

    labels, pictures = train.make_dataset(per_combination=1)  # (54, 3, 64, 64) in [-1, 1]
    mean, logvar = model.vae.encode(model.vae_backend.asarray(pictures.numpy()))  # each (54, 4, h, w), unscaled
    std = np.exp(0.5 * common.host(model, logvar))  # the posterior's standard deviation
    table = train.caption_table(train.MAIN_RUN.combinations)  # the captions train_unet embeds, "" included
    order = torch.Generator().manual_seed(6)  # train_unet seeds its data order with 6 too
    batch = train.unet_batch(
        torch.from_numpy(common.host(model, mean)),
        torch.from_numpy(std),
        labels,
        table,
        train.noise_schedule(),
        model.vae.config.scaling_factor,
        order,
    )
    return batch, [table[row] for row in batch.rows]


def caption_form(text):
    """Which of the three forms a training caption takes: empty (10%), short (30%) or full (60%)."""
    return "empty" if not text else "full" if text.endswith("background") else "short"


examples, captions = training_batch(trained)
x0, noise, noisy, v_target = (
    tensor.numpy() for tensor in (examples.x0, examples.noise, examples.noisy, examples.v_target)
)  # (B, 4, h, w) each
t = examples.t.numpy()  # (B,) one timestep per example
ids = trained.backend.asarray(trained.tokenizer.encode(captions), dtype="int64")  # (B, 77)
v_predicted = common.host(trained, trained.unet(trained.backend.asarray(noisy), t, trained.text_encoder(ids)))
squared_errors = ((v_predicted - v_target) ** 2).mean(axis=(1, 2, 3))  # (B, 4, h, w) -> (B,): each example's loss
loss = float(squared_errors.mean())  # the batch's loss: F.mse_loss(prediction, v_target) in train_unet's loss_fn
forms = [caption_form(text) for text in captions]
print(f"a batch of {len(t)} examples; captions:", {form: forms.count(form) for form in ("full", "short", "empty")})
print(f"the trained UNet's loss on it (mean squared error of v): {loss:.4f}")

# %%
# Figure 3: the first examples of the batch (sorted by t), and every example's loss
displayed = sorted(range(6 if args.quick else 8), key=lambda i: t[i])
fig = plt.figure(figsize=(12, 12.5), layout="constrained")
top, bottom = fig.subfigures(2, 1, height_ratios=[3.4, 1])
axes = top.subplots(5, len(displayed))
rows = [
    tr("the picture:\nx₀ decoded"),
    tr("noise ε"),
    tr("noisy latents\nx_t = √ᾱ·x₀ + √(1 − ᾱ)·ε\n(the UNet's input)"),
    tr("target\nv = √ᾱ·ε − √(1 − ᾱ)·x₀"),
    tr("the trained UNet's\noutput v̂"),
]
headings = {"full": tr("full caption:"), "short": tr("short caption:"), "empty": tr("empty caption:")}
for column, i in enumerate(displayed):
    axes[0, column].imshow(common.pixels(trained.decode(x0[i : i + 1])))
    axes[0, column].set_title(
        tr("t = {t}, √ᾱ = {root:.2f}", t=t[i], root=np.sqrt(alpha_bar[t[i]]))
        + "\n"
        + headings[forms[i]]
        + "\n"
        + tr.literal(textwrap.fill(f'"{captions[i]}"', 18)),
        fontsize=8,
        loc="left",
    )
    for row, panel in enumerate((noise, noisy, v_target, v_predicted), start=1):
        latent_image = axes[row, column].imshow(common.channel_mosaic(panel[i]), cmap="RdBu_r", vmin=-3, vmax=3)
    axes[-1, column].set_xlabel(tr("loss {loss:.3f}", loss=squared_errors[i]), fontsize=9)
label_rows(axes, rows, fontsize=9)
top.colorbar(latent_image, ax=axes[1:, -1], shrink=0.6, label=tr("latent value"))
top.suptitle(
    tr(
        "One training batch, made by {function} in {script}, which {caller} calls at every step",
        function="unet_batch()",
        script="weights/training/train.py",
        caller="train_unet()",
    )
    + "\n"
    + tr(
        "{count} of its {n} examples; latents {ours} (SD 1.5: {sd15}), the 4 channels tiled 2 × 2",
        count=len(displayed),
        n=len(t),
        ours=common.shape(model_sizes["latents"]),
        sd15=common.shape(article_sizes["latents"]),
    )
)
scatter = bottom.subplots()
legend = {
    "full": tr("full caption ({n})", n=forms.count("full")),
    "short": tr("short caption ({n})", n=forms.count("short")),
    "empty": tr("empty caption ({n})", n=forms.count("empty")),
}
for (form, label), marker in zip(legend.items(), "osx"):
    chosen = [i for i, f in enumerate(forms) if f == form]
    scatter.scatter(t[chosen], squared_errors[chosen], marker=marker, label=label)
scatter.axhline(loss, color="black", linestyle="--", label=tr("the batch's loss (the mean): {loss:.4f}", loss=loss))
scatter.set_xlabel(tr("the example's timestep t"))
scatter.set_ylabel(tr("its loss: mean of (v̂ − v)²"))
scatter.set_title(tr("All {n} examples of the batch: what one training step averages", n=len(t)))
scatter.legend(fontsize=8)
scatter.grid(alpha=0.3)
common.save_figure(fig, args, "04_training_batch")

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
        "batch": {
            "picks": examples.picks.tolist(),
            "captions": captions,
            "t": t.tolist(),
            "x0": x0.tolist(),
            "noise": noise.tolist(),
            "example_losses": squared_errors.tolist(),
            "loss": loss,
        },
    },
)
