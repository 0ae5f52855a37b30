# %% [markdown]
# # 11. The samplers, and the negative prompt as a direction
#
# *The Illustrated Stable Diffusion* names the **scheduler** (sampler) that turns the UNet's
# noise prediction into a step, without comparing them. Every scheduler of minisd walks from the
# same noise to a picture along the same model's predictions; they differ in how they step:
# PNDM and DDIM predict the clean picture and put it back a little less noisy, DDPM and Euler a
# add fresh noise at every step, Euler, Heun, LMS and DPM-Solver++ solve an equation in noise
# levels (σ), LCM jumps to a clean picture and noises it back. Here the same prompt and seed go
# through each of them at several step counts; each picture gets its time and its distance to a
# many-step reference (the model's own scheduler at 100 steps).
#
# What the figures show, on the embedded model: the deterministic samplers (PNDM, DDIM, Euler,
# DPM-Solver++) come within a few hundredths of the reference by 10 steps; DDIM and Euler give
# the same picture (on this v-prediction model DDIM's step *is* Euler's step in σ), and so do
# DDPM and Euler a (both add the same fresh noise); those and LCM land on another picture, not a
# worse one: their distance does not shrink with more steps. PNDM at 4 steps and DPM-Solver++ on
# Karras σs at 4 and 10 steps still draw the circle blue (the model's usual miss): with few steps
# on those schedules the colour is decided before the prompt has had its say. LMS and Heun refuse
# this model: its schedule reaches zero signal (σ = ∞), which their σ-space steps cannot start from.
#
# Then the negative prompt, which chapter 8 shows turning purple red. Guidance computes
#
#     ε = ε_negative + s · (ε_prompt − ε_negative) = ε_prompt + (s − 1) · (ε_prompt − ε_negative):
#
# the prompt's prediction, pushed further along the **direction** from the negative prompt to
# the prompt. With "a blue circle" as the negative prompt, that direction points away from blue.
# The third figure takes one step of that run apart: the clean picture x̂₀ each prediction implies
# (1: the prompt alone, a green guess at this noise level; 2: pushed away from the empty text, far
# past anything the model saw; 3: pushed along the direction, orange), then the finished pictures
# without and with the negative prompt: purple, and orange. Away from blue is towards red and
# yellow; the bars count it (less blue, more red).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import common
from minisd.schedulers import SCHEDULERS, make_scheduler
from minisd.watch import clean_and_noise

args = common.options("Chapter 11: every scheduler at several step counts; the negative prompt as a direction")
tr = args.tr
pipe = common.load_model(args)
prompt = "a purple circle on a white background"
negative = "a blue circle on a white background"
seed = 2
counts = [4, 10] if args.quick else [4, 10, 25]
guidance = pipe.defaults["guidance"]
own = pipe.options().scheduler  # the model's own scheduler (its scheduler_config.json)
reference = common.pixels(pipe(prompt, steps=100, seed=seed, progress=False))

# %%
# 1. Every scheduler at every step count: the picture, its time, its distance to the reference
results = {}  # name -> [(picture or None, seconds, distance or the reason it was refused)]
for name in SCHEDULERS:
    results[name] = []
    for count in counts:
        start = time.perf_counter()
        try:
            picture = common.pixels(pipe(prompt, steps=count, seed=seed, scheduler=name, progress=False))
        except ValueError as refusal:  # a scheduler that cannot run this model's schedule says why
            results[name].append((None, 0.0, str(refusal).split(":")[0]))
            continue
        seconds = time.perf_counter() - start
        distance = float(np.sqrt(np.mean((picture - reference) ** 2)))
        results[name].append((picture, seconds, distance))
    summary = [
        f"{c}: {r[2]:.3f} in {r[1]:.2f} s" if r[0] is not None else f"{c}: refused"
        for c, r in zip(counts, results[name])
    ]
    print(f"{name:16s}", "; ".join(summary))

# %%
# Figure 1: rows = schedulers, columns = step counts
fig, axes = plt.subplots(
    len(SCHEDULERS), len(counts), figsize=(2.4 * len(counts) + 1.4, 1.75 * len(SCHEDULERS)), layout="constrained"
)
for row, (name, runs) in enumerate(results.items()):
    for column, (picture, seconds, distance) in enumerate(runs):
        ax = axes[row, column]
        ax.set_xticks([])
        ax.set_yticks([])
        header = tr("{count} steps", count=counts[column]) + "\n" if row == 0 else ""
        if picture is None:
            reason = tr("the model's zero-SNR\nschedule") if "zero_snr" in distance else tr.literal(distance[:40])
            ax.text(0.5, 0.5, tr("refused:") + "\n" + reason, ha="center", va="center", fontsize=8)
            ax.set_facecolor("0.92")
            ax.set_title(header, fontsize=9)
        else:
            ax.imshow(picture)
            score = tr("{seconds:.2f} s, distance {distance:.3f}", seconds=seconds, distance=distance)
            ax.set_title(header + score, fontsize=7 if not header else 8)
    axes[row, 0].set_ylabel(tr.literal(name) + ("\n" + tr("(the model's)") if name == own else ""), fontsize=9)
fig.suptitle(
    tr(
        '"{prompt}", seed {seed}, guidance {guidance}\ndistance: RMS to the 100-step {own} picture',
        prompt=prompt,
        seed=seed,
        guidance=guidance,
        own=own,
    ),
    fontsize=9,
)
common.save_figure(fig, args, "11_samplers")

# %%
# Figure 2: distance to the reference against steps, one line per scheduler that runs
fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
for name, runs in results.items():
    done = [(count, distance) for count, (picture, _, distance) in zip(counts, runs) if picture is not None]
    if done:
        ax.plot(*zip(*done), "o-", label=tr.literal(name))
ax.set_xscale("log")
ax.set_xticks(counts, [str(c) for c in counts])
ax.minorticks_off()
ax.set_xlabel(tr("denoising steps (log scale)"))
ax.set_ylabel(tr("RMS distance to the 100-step picture (pixels in [0, 1])"))
ax.set_title(tr("Distance to the 100-step picture (DDIM and Euler coincide, so do DDPM and Euler a)"), fontsize=10)
ax.legend(fontsize=8, ncol=2)
ax.grid(alpha=0.3)
common.save_figure(fig, args, "11_sampler_distances")

# %%
# 2. The negative prompt as a direction, inside one step. Take the latents a guided run has
# reached two thirds of the way down, and ask the UNet three times, with the empty text, the negative
# prompt and the prompt; guidance combines them. x̂₀, the clean picture each prediction implies
# (watch.clean_and_noise), shows what each one pushes towards.
scale = 5.0
steps = 6 if args.quick else pipe.defaults["steps"]
index = 2 * steps // 3
run = list(pipe.denoise(prompt, negative_prompt=negative, steps=steps, seed=seed, guidance=scale))
scheduler = make_scheduler(own, pipe.scheduler_config)
scheduler.set_timesteps(steps)
t = scheduler.timesteps[index]
sample = scheduler.scale_model_input(run[index - 1].latents, t)  # the latents entering step `index`
texts = {"empty": "", "negative": negative, "prompt": prompt}
eps = {name: pipe.predict_noise(sample, t, pipe.encode_prompt(text, guidance=1), 1) for name, text in texts.items()}
direction = eps["prompt"] - eps["negative"]  # where the prompt differs from the negative prompt
predictions = {  # label -> the noise prediction whose x̂₀ is shown
    "prompt alone": eps["prompt"],
    "guided away from the empty text": eps["empty"] + scale * (eps["prompt"] - eps["empty"]),
    "guided along the direction": eps["prompt"] + (scale - 1) * direction,
}
pictures = {
    label: common.pixels(pipe.decode(clean_and_noise(scheduler, index, steps, sample, output)[0]))
    for label, output in predictions.items()
}
finals = {
    'final, negative ""': common.pixels(pipe(prompt, "", steps=steps, guidance=scale, seed=seed, progress=False)),
    "final, negative blue": common.pixels(pipe.decode(run[-1].latents)),
}
colours = {label: picture.reshape(-1, 3).mean(axis=0) for label, picture in {**pictures, **finals}.items()}
for label, rgb in colours.items():
    print(f"{label:44s} mean R, G, B = {np.round(rgb, 3)}")

# %%
# Figure 3: x̂₀ of each prediction at step `index`, the two final pictures, and their mean colours
fig = plt.figure(figsize=(13, 3.8), layout="constrained")
row, plot = fig.subfigures(1, 2, width_ratios=[3.2, 1])
axes = row.subplots(1, len(colours))
titles = [
    tr("1. prompt alone\n(s = 1)"),
    tr('2. guided away from ""\n(s = {scale:g})', scale=scale),
    tr("3. guided along the direction\n(s = {scale:g})", scale=scale),
    tr('4. final, negative ""'),
    tr("5. final, negative blue"),
]
for ax, title, picture in zip(axes, titles, {**pictures, **finals}.values()):
    ax.imshow(picture)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
row.suptitle(
    tr(
        'x̂₀ at step {step} of {steps} (t = {t}), then the finished pictures; negative: "{negative}"',
        step=index + 1,
        steps=steps,
        t=int(t),
        negative=negative,
    ),
    fontsize=9,
)
ax = plot.subplots()
positions = np.arange(len(colours))
for offset, (channel, colour, label) in zip((-0.2, 0.2), ((0, "tab:red", tr("red")), (2, "tab:blue", tr("blue")))):
    ax.bar(positions + offset, [rgb[channel] for rgb in colours.values()], 0.4, color=colour, label=label)
ax.set_xticks(positions, [f"{k + 1}" for k in range(len(colours))])
ax.set_xlabel(tr("picture (left to right)"))
ax.set_ylabel(tr("mean over the picture (0..1)"))
ax.set_title(tr("Red and blue in each picture"), fontsize=10)
ax.set_ylim(0, 1.05)
ax.legend(fontsize=8)
common.save_figure(fig, args, "11_negative_direction")

# %%
common.save_facts(
    args,
    "11_samplers",
    {
        "prompt": prompt,
        "negative": negative,
        "seed": seed,
        "counts": counts,
        "own": own,
        "guidance": guidance,
        "distances": {name: [r[2] for r in runs] for name, runs in results.items()},
        "seconds": {name: [r[1] for r in runs] for name, runs in results.items()},
        "scale": scale,
        "steps": steps,
        "index": index,
        "colours": {label: rgb.tolist() for label, rgb in colours.items()},
    },
)
