# %% [markdown]
# # 9. Text + image: image to image
#
# *The Illustrated Stable Diffusion*, section **"What does Stable Diffusion do?"** (text plus an
# image to a changed image), with a figure the article implies.
#
# Image to image starts from a picture instead of pure noise: the picture is encoded into latents,
# noised up to a level set by **strength** (0 … 1), and then only that last part of the denoising
# schedule is run, with the prompt. Low strength keeps the picture and changes details; strength 1
# starts from pure noise and ignores the picture. With N steps, it runs int(N · strength) of them.
#
# What the figure shows, going from a red circle on white to the prompt "a blue square on a black
# background": with this small model, already at strength 0.2 the shape and the colour have moved
# (a dark rounded square where the circle was), and at 0.4 it is a blue square; the background is
# the last to go. Between 0.4 and 0.6 it flips from white to black, the large jump in the distance
# curve: the background is most of the picture's pixels. From 0.6 on the input hardly matters.

# %%
import matplotlib.pyplot as plt
import numpy as np

import common

args = common.options("Chapter 9: image to image at several strengths")
tr = args.tr
pipe = common.load_model(args)
size = pipe.default_size
source_caption = common.shapes.caption("red", "circle", "white")
prompt = "a blue square on a black background"
strengths = [0.3, 0.9] if args.quick else [0.2, 0.4, 0.6, 0.8, 1.0]
steps = 6 if args.quick else pipe.defaults["steps"]
seed = 0
image = common.picture("red", "circle", "white", size, seed=3)  # the input picture

# %%
# 1. The same picture and prompt at every strength; count the steps each one runs
outputs, steps_run = [], []
for strength in strengths:
    run = list(pipe.denoise(prompt, steps=steps, seed=seed, image=image, strength=strength))  # one Step per step run
    steps_run.append(len(run))
    outputs.append(common.pixels(pipe.decode(run[-1].latents)))
    print(
        f"strength {strength}: {len(run)} of {steps} steps, from timestep {run[0].timestep} down to {run[-1].timestep}"
    )

# %%
# 2. How far each output is from the input picture (root mean square over pixels)
source = common.pixels(image)
distances = [float(np.sqrt(np.mean((output - source) ** 2))) for output in outputs]
print("distance from the input:", np.round(distances, 3))

# %%
# Figure: the input, the outputs at each strength, and the distance from the input
fig = plt.figure(figsize=(12, 3.6), layout="constrained")
row, plot = fig.subfigures(1, 2, width_ratios=[2.4, 1])
axes = row.subplots(1, len(strengths) + 1)
axes[0].imshow(source)
axes[0].set_title(tr("input picture"), fontsize=10)
for ax, strength, output, count in zip(axes[1:], strengths, outputs, steps_run):
    ax.imshow(output)
    ax.set_title(
        tr("strength {strength}\n{count} of {steps} steps", strength=strength, count=count, steps=steps), fontsize=10
    )
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
row.suptitle(tr('Input: "{source}"; prompt: "{prompt}"', source=source_caption, prompt=prompt), fontsize=10)
ax = plot.subplots()
ax.plot(strengths, distances, "o-")
ax.set_xlabel(tr("strength"))
ax.set_ylabel(tr("RMS distance from the input"))
ax.set_title(tr("Higher strength, further from the input"), fontsize=10)
ax.grid(alpha=0.3)
common.save_figure(fig, args, "09_img2img")

common.save_facts(
    args,
    "09_img2img",
    {
        "prompt": prompt,
        "strengths": strengths,
        "steps": steps,
        "seed": seed,
        "steps_run": steps_run,
        "distances": distances,
    },
)
