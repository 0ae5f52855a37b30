# %% [markdown]
# # 3. Diffusion, step by step: painting a picture by removing noise
#
# *The Illustrated Stable Diffusion*, sections **"What is diffusion anyway?"** and **"How does
# diffusion work?"** (generation: subtracting the predicted noise step by step).
#
# The image information creator starts from random latents x_T and takes the same step again
# and again (the embedded model: 20 steps, its default). At each step the UNet looks at the
# latents x_t and the text and predicts the noise ε̂ in them. Read with the noise schedule, that
# prediction also names the clean latents x̂₀ under the noise, since x_t = √ᾱ·x̂₀ + √(1 − ᾱ)·ε̂
# (the embedded model's UNet outputs v rather than ε, chapter 4; ε̂ and x̂₀ are read from v alike).
# Then the scheduler removes part of the noise. DDIM (the embedded model's scheduler) keeps x̂₀
# and puts back only the next timestep's share of ε̂: x_next = √ᾱ_next·x̂₀ + √(1 − ᾱ_next)·ε̂.
#
# Figure `03_diffusion_steps` shows, at every step, the latents x_t the UNet sees, decoded by the
# image decoder; the clean picture x̂₀ it predicts, decoded too; and the noise ε̂ it predicts (the
# 4 latent channels tiled 2 × 2). Below: the final picture, and how far each step's two pictures
# are from it. On "a red circle on a white background":
#
# - x̂₀ is a soft blob in the middle from step 1, where ᾱ = 0 and x_t holds no trace of a picture
#   (the model's average answer for the prompt). Its colour goes from yellow through orange to
#   red by step 9 (t = 599); from there it is within 0.08 (RMS) of the final picture, and only its
#   outline still moves: an oval at steps 9 and 10, round from step 11.
# - The decoded latents x_t show coloured blobs for the first half. Red appears around step 10,
#   green patches stay beside it until about step 16, and the circle stands alone from step 17.
#   Between steps 4 and 7 they even move away from the final picture: the decoder paints mixtures
#   of noise and picture in its own way.
# - The predicted noise barely changes: at every step its cosine with the random latents x_T is
#   above 0.96. The UNet keeps finding the noise the loop started from, and each step takes more
#   of it away.
#
# The article says the outline appears in steps 2 to 4 (SD 1.x, 50 steps). The embedded model's
# decoded latents show it much later, in the last third of the steps. Its predicted clean picture
# x̂₀, though, has the shape's place from step 1 and its colour before the middle: what the model
# settles early shows in x̂₀, not in x_t.
#
# Figure `03_one_step` takes one step (step 7 of 20) apart with the pipeline's own pieces: the
# UNet's prediction without text (the empty prompt) and with the prompt; what the text adds (small
# in ε̂ and gathered where the circle goes, but in x̂₀ it turns a yellow blob orange); guidance
# ε = ε_empty + g·(ε_text − ε_empty); the scheduler's step. The result equals the latents that
# `pipe.denoise` computed. Under the panels is the loop itself, read from the source of
# `Pipeline.denoise` by `inspect`, so it is the code that ran.
#
# Sizes: the embedded model's latents are 4×8×8 and its pictures 3×64×64; SD 1.5's, the article's
# numbers, are 4×64×64 and 3×512×512.

# %%
import inspect
import textwrap

import matplotlib.pyplot as plt
import numpy as np

import common
from minisd.pipeline import Pipeline
from minisd.schedulers import make_scheduler
from minisd.watch import alpha_bar, clean_and_noise, watch_unet

args = common.options("Chapter 3: the denoising loop, every step and one step taken apart")
tr = args.tr
pipe = common.load_model(args)
prompt = "a red circle on a white background"
seed = 0
sizes = common.sizes(pipe)
x_T = np.random.default_rng(seed).standard_normal((1, *sizes[pipe.name]["latents"]), dtype=np.float32)  # (1, 4, h, w)
options = pipe.options(steps=6 if args.quick else None, latents=x_T)  # the rest: the model's defaults
for name, size in sizes.items():
    print(f"{name}: latents {common.shape(size['latents'])} -> picture {common.shape(size['image'])}")

# %%
# 1. Run the loop, recording what the UNet sees and predicts at every step (minisd.watch). A twin of
# the loop's scheduler reads each step's noise level ᾱ.
calls = []
with watch_unet(pipe.unet, calls.append):
    run = list(pipe.denoise(prompt, options))
scheduler = make_scheduler(options.scheduler, pipe.scheduler_config)
scheduler.set_timesteps(options.steps)
count = len(run)
timesteps = [step.timestep for step in run]
alpha_bars = [float(alpha_bar(scheduler, index, count)) for index in range(count)]


def decoded(latents):
    """Latents (1, 4, h, w) -> the picture (H, W, 3) in [0, 1] that the image decoder paints from them."""
    return common.pixels(pipe.decode(latents))


def mosaic(latents):
    """Latents (1, 4, h, w) on the backend -> their 4 channels tiled 2 × 2, (2h, 2w) on the host."""
    return common.channel_mosaic(common.host(pipe, latents)[0])


def cosine(a, b):
    """The cosine of the angle between two arrays, read as vectors: 1 when they point the same way."""
    return float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))


# Each step's UNet input x_t, split as x_t = √ᾱ·x̂₀ + √(1 − ᾱ)·ε̂ by the (guided) prediction
seen, clean, noise, cosines = [], [], [], []
for step, call in zip(run, calls):
    x_t = call.sample[-1:]  # (1, 4, h, w): the prompt's row of guidance's doubled batch
    x0, eps = clean_and_noise(scheduler, step.index, count, x_t, step.noise_pred)
    seen.append(decoded(x_t))
    clean.append(decoded(x0))
    noise.append(mosaic(eps))
    cosines.append(cosine(common.host(pipe, eps), x_T))
final = decoded(run[-1].latents)


def distance(picture):
    """RMS distance to the final picture (pixels in [0, 1])."""
    return float(np.sqrt(np.mean((picture - final) ** 2)))


distances = {"x_t": [distance(p) for p in seen], "x0": [distance(p) for p in clean]}
for index, t in enumerate(timesteps):
    print(
        f"step {index + 1}/{count}: t = {t}, ᾱ = {alpha_bars[index]:.4f}, distance to the final picture: "
        f"x_t {distances['x_t'][index]:.3f}, x̂₀ {distances['x0'][index]:.3f}; cosine of ε̂ with x_T {cosines[index]:.4f}"
    )


# %%
# Figure 1: every step, in blocks of up to 10 columns; then the final picture and the distances
def sizes_line():
    """The latents' and the pictures' sizes, this model's beside SD 1.5's."""
    model, article = sizes[pipe.name], sizes["SD 1.5"]
    return tr(
        "latents {latents} (SD 1.5: {sd_latents}), decoded to pictures {image} (SD 1.5: {sd_image})",
        latents=common.shape(model["latents"]),
        sd_latents=common.shape(article["latents"]),
        image=common.shape(model["image"]),
        sd_image=common.shape(article["image"]),
    )


ROWS = (
    tr("$x_t$: the latents\nthe UNet sees"),
    tr("x̂₀: the clean\npicture it predicts"),
    tr("ε̂: the predicted\nnoise, 4 channels"),
)
columns = min(count, 10)
blocks = -(-count // columns)
limit = max(float(np.abs(n).max()) for n in noise)  # one symmetric colour scale for every ε̂
fig = plt.figure(figsize=(12, 3.9 * blocks + 3.3), layout="constrained")
strip, bottom = fig.subfigures(2, 1, height_ratios=[3.9 * blocks, 3.3])
axes = strip.subplots(3 * blocks, columns, squeeze=False)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_frame_on(False)
for index in range(count):
    block, column = divmod(index, columns)
    top, middle, low = axes[3 * block : 3 * block + 3, column]
    top.imshow(seen[index])
    top.set_title(
        tr("step {k}\nt = {t}\nᾱ = {a:.3f}", k=index + 1, t=timesteps[index], a=alpha_bars[index]), fontsize=8
    )
    middle.imshow(clean[index])
    shown = low.imshow(noise[index], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
for block in range(blocks):
    for row, label in enumerate(ROWS):
        axes[3 * block + row, 0].set_ylabel(label, fontsize=7)
    strip.colorbar(shown, ax=axes[3 * block + 2, :], label=tr("ε̂ value"), shrink=0.9, pad=0.01)
strip.suptitle(
    "\n".join(
        [
            tr(
                '"{prompt}": {count} steps of {scheduler}, guidance {g}, random latents of seed {seed}',
                prompt=prompt,
                count=count,
                scheduler=type(scheduler).__name__,
                g=options.guidance,
                seed=seed,
            ),
            tr("each column: $x_t$ = √ᾱ · x̂₀ + √(1 − ᾱ) · ε̂"),
            tr(
                "the cosine of ε̂ with the random latents $x_T$ the loop started from: {low:.3f} to {high:.3f}",
                low=min(cosines),
                high=max(cosines),
            ),
            sizes_line(),
        ]
    ),
    fontsize=9,
)
last, plot = bottom.subplots(1, 2, width_ratios=[1, 3.6])
last.imshow(final)
last.set_axis_off()
last.set_title(tr("the final picture:\nthe latents after step {k}, decoded", k=count), fontsize=8)
steps_axis = range(1, count + 1)
plot.plot(steps_axis, distances["x_t"], "o-", label=tr("$x_t$ (what the UNet sees), decoded"))
plot.plot(steps_axis, distances["x0"], "s-", label=tr("x̂₀ (the clean picture it predicts), decoded"))
plot.set_xlabel(tr("denoising step"))
plot.set_ylabel(tr("RMS distance to\nthe final picture"))
plot.set_xticks(list(steps_axis))
plot.legend(fontsize=8)
plot.grid(alpha=0.3)
common.save_figure(fig, args, "03_diffusion_steps")

# %%
# 2. One step taken apart, with the pipeline's own pieces: step k + 1 starts from the latents after step k.
# A multistep scheduler (PNDM, DPM-Solver++, LMS) remembers the earlier steps' predictions, so
# ours takes the first k steps again, as the loop did (DDIM, the embedded model's, forgets them).
index = count // 3
starts = [pipe.backend.asarray(x_T) * scheduler.init_noise_sigma] + [step.latents for step in run]  # each step's input
for step, latents in zip(run[:index], starts):
    scheduler.step(step.noise_pred, scheduler.timesteps[step.index], latents, eta=options.eta)
x_t, t = starts[index], scheduler.timesteps[index]  # (1, 4, h, w)
sample = scheduler.scale_model_input(x_t, t)  # the UNet's input (x_t itself for DDIM and PNDM)
context, _ = pipe.condition(prompt, options)  # the text vectors [empty prompt; prompt], (2, 77, D)
output = {
    "without": pipe.predict_noise(sample, t, context[:1], guidance=1),  # the UNet once per text: (1, 4, h, w)
    "with": pipe.predict_noise(sample, t, context[1:], guidance=1),
}
output["guided"] = output["without"] + options.guidance * (output["with"] - output["without"])  # guidance
next_latents = scheduler.step(output["guided"], t, x_t, eta=options.eta)  # the scheduler removes some noise
gap = float(np.abs(common.host(pipe, next_latents) - common.host(pipe, run[index].latents)).max())
print(f"step {index + 1}: the latents from the pieces differ from pipe.denoise's by at most {gap:.1e}")
split = {name: clean_and_noise(scheduler, index, count, sample, out) for name, out in output.items()}  # (x̂₀, ε̂) each

# %%
# 3. The loop itself, read from the source of Pipeline.denoise (so it is the code that ran above)
lines, first = inspect.getsourcelines(Pipeline.denoise)
start = next(number for number, line in enumerate(lines) if line.lstrip().startswith("for "))
loop = textwrap.dedent("".join(lines[start:])).splitlines()
where = {"file": f"{Pipeline.__module__.replace('.', '/')}.py", "first": first + start, "last": first + len(lines) - 1}
print("The denoising loop ({file}, lines {first}-{last}):".format(**where) + "\n" + "\n".join(loop))


# %%
# Figure 2: one step, panel by panel, above the loop that runs it
def show_latents(ax, latents):
    """The 4 channels of latents (1, 4, h, w), on the colour scale shared by the top row."""
    return ax.imshow(mosaic(latents), cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")


def show_code(ax):
    """The loop's lines in monospace, the two calls the panels take apart marked."""
    ax.set_axis_off()
    height = 1 / (len(loop) + 1)
    notes = {
        "predict_noise(": tr("← panels 2–5: the UNet without and with the text, guidance (inside predict_noise)"),
        "scheduler.step(": tr("← panel 6"),
    }
    for number, line in enumerate(loop):
        y = 1 - (number + 1) * height
        ax.text(0, y, tr.literal(line), family="monospace", fontsize=8, va="center")
        for call, note in notes.items():
            if call in line:
                ax.text(0.62, y, note, fontsize=8, va="center", ha="left", color="tab:red")
    ax.set_title(
        tr("The denoising loop that ran these steps, read from {file}, lines {first}–{last}", **where),
        fontsize=9,
        loc="left",
    )


def prediction_note():
    """What the UNet outputs, and how the panels read ε̂ and x̂₀ from it."""
    a = alpha_bars[index]
    if scheduler.config.prediction_type == "v_prediction":
        return tr(
            "the UNet predicts v,\nnot ε: ε̂ and x̂₀ are\nread from v at ᾱ = {a:.3f};\n"
            "guidance mixes v,\nthe same mix of ε̂",
            a=a,
        )
    return tr("the UNet predicts ε̂;\nx̂₀ is read from it\nat ᾱ = {a:.3f}", a=a)


shown_latents = (x_t, split["without"][1], split["with"][1], split["guided"][1], next_latents)
scale = max(float(np.abs(common.host(pipe, latents)).max()) for latents in shown_latents)  # one colour scale
difference = split["with"][1] - split["without"][1]  # ε̂ with the text − ε̂ without: small, so magnified
zoom = int(scale / float(np.abs(common.host(pipe, difference)).max()))
panels = [  # (title, top: latents or ε̂, bottom: what is decoded, if anything)
    (tr("1. $x_t$: the latents step {k}\nstarts from (t = {t})", k=index + 1, t=timesteps[index]), x_t, x_t),
    (tr('2. UNet without text\n(empty prompt "")'), split["without"][1], split["without"][0]),
    (tr("3. UNet with the text"), split["with"][1], split["with"][0]),
    (tr("4. what the text adds: 3 − 2,\nmagnified ×{zoom}", zoom=zoom), zoom * difference, None),
    (tr("5. guidance:\n2 + g · (3 − 2), g = {g}", g=options.guidance), split["guided"][1], split["guided"][0]),
    (
        tr(
            "6. {call} ({scheduler}):\nthe latents after step {k}",
            call="scheduler.step",
            scheduler=type(scheduler).__name__,
            k=index + 1,
        ),
        next_latents,
        next_latents,
    ),
]
fig = plt.figure(figsize=(12, 8), layout="constrained")
upper, lower = fig.subfigures(2, 1, height_ratios=[5, 3])
axes = upper.subplots(2, len(panels))
for (title, top, bottom), (top_ax, bottom_ax) in zip(panels, axes.T):
    shown = show_latents(top_ax, top)
    top_ax.set_title(title, fontsize=8)
    if bottom is not None:
        bottom_ax.imshow(decoded(bottom))
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
axes[1, 3].set_axis_off()
axes[1, 3].text(0.5, 0.5, prediction_note(), fontsize=8, ha="center", va="center", transform=axes[1, 3].transAxes)
axes[0, 0].set_ylabel(tr("latents or ε̂:\nthe 4 channels"), fontsize=8)
axes[1, 0].set_ylabel(tr("decoded: the latents,\nor the x̂₀ of a prediction"), fontsize=8)
upper.colorbar(shown, ax=axes[0, :], label=tr("value (latents and ε̂)"), shrink=0.9, pad=0.01)
upper.suptitle(
    "\n".join(
        [
            tr("One denoising step taken apart: step {k} of {count}", k=index + 1, count=count),
            tr.literal(f'"{prompt}"'),
            sizes_line(),
        ]
    ),
    fontsize=9,
)
show_code(lower.subplots())
common.save_figure(fig, args, "03_one_step")

common.save_facts(
    args,
    "03_diffusion_steps",
    {
        "prompt": prompt,
        "seed": seed,
        "steps": count,
        "guidance": options.guidance,
        "timesteps": timesteps,
        "alpha_bars": alpha_bars,
        "distances": distances,
        "noise_cosines": cosines,
        "sizes": sizes,
        "one_step": {
            "index": index,
            "timestep": timesteps[index],
            "without": common.host(pipe, output["without"]).tolist(),
            "with": common.host(pipe, output["with"]).tolist(),
            "next_latents": common.host(pipe, next_latents).tolist(),
        },
        "loop": {"first_line": first + start, "source": loop},
    },
)
