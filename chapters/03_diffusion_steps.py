# %% [markdown]
# # 3. Diffusion, step by step
#
# *The Illustrated Stable Diffusion*, section **"What is diffusion anyway?"**.
#
# The image information creator starts from random latents and refines them step by step; each
# step adds a little relevant information. The latents of every step can be sent through the image
# decoder, which shows the picture emerging from the noise: the outline appears in the first few
# steps, the last ones only clean it up.
#
# `pipe.denoise` is the denoising loop as a generator: it yields a `Step` (its index, timestep,
# latents and the UNet's prediction) after every step, so we can watch without copying the loop.

# %%
import matplotlib.pyplot as plt
import numpy as np

import common

args = common.options("Chapter 3: the latents of every denoising step, decoded")
pipe = common.load_model(args)
prompt = "a red circle on a white background"
steps = 6 if args.quick else pipe.defaults["steps"]
seed = 0

# %%
# 1. Run the loop, decoding the latents after every step
frames, timesteps = [], []
for step in pipe.denoise(prompt, steps=steps, seed=seed):
    frames.append(common.pixels(pipe.decode(step.latents)))  # latents (1, 4, h, w) -> picture (H, W, 3)
    timesteps.append(step.timestep)
    print(f"step {step.index + 1}/{step.count}: timestep {step.timestep}")

# %%
# 2. How far is each step's picture from the final one? (root mean square over pixels, 0..1 scale)
distances = [float(np.sqrt(np.mean((frame - frames[-1]) ** 2))) for frame in frames]
print("distance to the final picture:", np.round(distances, 3))

# %%
# Figure: the strip of decoded steps, and the distance to the final picture
columns = min(len(frames), 10)
rows = -(-len(frames) // columns)
fig = plt.figure(figsize=(12, 1.45 * rows + 3.2), layout="constrained")
strip, plot = fig.subfigures(2, 1, height_ratios=[1.45 * rows, 3.2])
axes = strip.subplots(rows, columns, squeeze=False)
for ax in axes.flat:
    ax.set_axis_off()
for index, (ax, frame) in enumerate(zip(axes.flat, frames)):
    ax.imshow(frame)
    ax.set_title(f"step {index + 1}\nt = {timesteps[index]}", fontsize=8)
strip.suptitle(f'"{prompt}": the latents after each of {steps} steps, decoded (seed {seed})')
ax = plot.subplots()
ax.plot(range(1, len(frames) + 1), distances, "o-")
ax.set_xlabel("denoising step")
ax.set_ylabel("RMS distance to the final picture")
ax.set_xticks(range(1, len(frames) + 1))
ax.grid(alpha=0.3)
common.save_figure(fig, args, "03_diffusion_steps")

common.save_facts(
    args,
    "03_diffusion_steps",
    {
        "prompt": prompt,
        "steps": steps,
        "seed": seed,
        "timesteps": timesteps,
        "distances": distances,
    },
)
