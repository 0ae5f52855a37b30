# %% [markdown]
# # 8. Guidance
#
# A figure the article implies: **classifier-free guidance**, and the **negative prompt**.
#
# At every step the UNet runs twice: once with the empty prompt (or the *negative* prompt), once
# with the prompt. The pipeline then pushes the prediction away from the first, towards the second:
#
#     noise = noise_negative + s · (noise_prompt − noise_negative)
#
# At scale s = 1 this is just the prompt's prediction (the negative prompt has no effect at all);
# larger scales follow the prompt more closely, at the cost of variety and, when too large, of
# natural colours. A negative prompt replaces the empty prompt: the image is pushed away from it.
#
# The embedded model sometimes draws purple shapes blue (its model card counts these misses), so
# we ask for purple and give a blue shape as the negative prompt. What the figure shows: without a
# negative prompt, guidance keeps the purple circle and only sharpens and squares its edge; with
# "a blue circle" as the negative prompt, guidance pushes the colour away from blue, through a
# muddy purple at 1.5 to red at 3 and orange from 5 on, which is why that row's change from s = 1
# is two to three times larger. Pushing away from blue is not pushing towards purple: chapter 11
# takes this apart (the negative prompt is a direction, ε_prompt − ε_negative, and it points at
# red and yellow).

# %%
import matplotlib.pyplot as plt
import numpy as np

import common

args = common.options("Chapter 8: one seed at several guidance scales, with and without a negative prompt")
tr = args.tr
pipe = common.load_model(args)
prompt = "a purple circle on a white background"
negative = "a blue circle on a white background"
scales = [1, 3, 8] if args.quick else [1, 1.5, 3, 5, 8]
steps = 6 if args.quick else pipe.defaults["steps"]
seed = 2

# %%
# 1. The same seed at every scale, without and with the negative prompt
rows = {"": [], negative: []}
for negative_prompt, images in rows.items():
    for scale in scales:
        images.append(
            common.pixels(pipe(prompt, negative_prompt, steps=steps, guidance=scale, seed=seed, progress=False))
        )

# %%
# 2. How much does each image differ from the unguided one (s = 1)? Root mean square over pixels
changes = {
    name: [float(np.sqrt(np.mean((image - images[0]) ** 2))) for image in images] for name, images in rows.items()
}
for name, values in changes.items():
    print(f"negative prompt {name!r}: change from s = 1:", np.round(values, 3))

# %%
# Figure: rows = without / with the negative prompt, columns = guidance scales; and the change
fig = plt.figure(figsize=(12, 5.4), layout="constrained")
grid, plot = fig.subfigures(1, 2, width_ratios=[2.1, 1])
axes = grid.subplots(2, len(scales), squeeze=False)
for row, images in enumerate(rows.values()):
    for column, (scale, image) in enumerate(zip(scales, images)):
        axes[row, column].imshow(image)
        axes[row, column].set_xticks([])
        axes[row, column].set_yticks([])
        axes[0, column].set_title(tr("guidance {scale}", scale=scale))
axes[0, 0].set_ylabel(tr("negative prompt:\n(none)"))
axes[1, 0].set_ylabel(tr('negative prompt:\n"{negative}"', negative=negative), fontsize=8)
grid.suptitle(tr('"{prompt}", seed {seed}, {steps} steps', prompt=prompt, seed=seed, steps=steps))
ax = plot.subplots()
for name, values in changes.items():
    ax.plot(scales, values, "o-", label=tr('negative: "{name}"', name=name) if name else tr("no negative prompt"))
ax.set_xlabel(tr("guidance scale s"))
ax.set_ylabel(tr("RMS change from the image at s = 1"))
ax.set_title(tr("The change grows with guidance"))
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
common.save_figure(fig, args, "08_guidance")

common.save_facts(
    args,
    "08_guidance",
    {
        "prompt": prompt,
        "negative": negative,
        "scales": scales,
        "steps": steps,
        "seed": seed,
        "change_without_negative": changes[""],
        "change_with_negative": changes[negative],
    },
)
