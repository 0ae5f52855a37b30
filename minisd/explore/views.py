"""What the page shows of a run, as JSON events with PNG pictures (data URLs).

A run yields a "prompt" event (the prompt's BPE pieces and ids, its text vectors as a heatmap),
then one "step" event per denoising step, as the step is computed: the latents decoded, the
clean picture x̂₀ they predict, the predicted noise, the four latent channels, the timestep and
noise level, guidance taken apart, and each token's cross-attention map.
"""

import base64
import io

import numpy
from matplotlib import colormaps
from PIL import Image

from ..schedulers import make_scheduler
from ..watch import alpha_bar, clean_and_noise, token_maps, watch_unet


def run_events(pipe, prompt, options):
    """The events of one generation of `prompt` with `options` (an Options), as they are computed."""
    yield prompt_event(pipe, prompt)
    scheduler = make_scheduler(options.scheduler, pipe.scheduler_config)  # to read each step's noise level
    scheduler.set_timesteps(options.steps)
    calls = []
    with watch_unet(pipe.unet, calls.append):
        for step in pipe.denoise(prompt, options):
            yield step_event(pipe, prompt, scheduler, step, calls.pop())


def prompt_tokens(tokenizer, prompt):
    """The positions the text encoder reads, up to the end token ({"piece", "id"} each), and the
    words cut off past 75 tokens (None when nothing is)."""
    pieces = ["<start>", *tokenizer.tokenize(prompt)[: tokenizer.max_length - 2], "<end>"]
    ids = tokenizer.encode(prompt)[0]  # (77,): start, pieces, end, padding
    tokens = [{"piece": piece, "id": int(token)} for piece, token in zip(pieces, ids)]
    return {"tokens": tokens, "cut": tokenizer.truncated_words(prompt)}


def prompt_event(pipe, prompt):
    text = host(pipe, pipe.encode_prompt(prompt, guidance=1, prompt_weights=False))[0]  # (77, D)
    return {
        "type": "prompt",
        **prompt_tokens(pipe.tokenizer, prompt),
        "embeddings": picture(diverging(text)),
        "shape": list(text.shape),
    }


def step_event(pipe, prompt, scheduler, step, call):
    """One denoising `step` and the UNet `call` it made, as pictures."""
    count = len(step.latents)  # images: the prompt's rows are the last `count` of a guided call
    sample = call.sample[-count:]  # x_t, (1, 4, h, w)
    x0, noise = clean_and_noise(scheduler, step.index, step.count, sample, step.noise_pred)
    a = float(alpha_bar(scheduler, step.index, step.count))
    event = {
        "type": "step",
        "index": step.index,
        "count": step.count,
        "timestep": float(step.timestep),
        "noise_level": (1 - a) ** 0.5,  # √(1 − ᾱ): the share of noise in the latents the UNet saw
        "latents": picture(pipe.decode(step.latents)),
        "x0": picture(pipe.decode(x0)),
        "noise": picture(channels(host(pipe, noise))),
        "channels": picture(channels(host(pipe, step.latents))),
        "attention": attention_pictures(pipe, prompt, call.attention[-1]),
    }
    if len(call.output) > count:  # guided: the UNet ran without and with the prompt
        event["guidance"] = guidance_pictures(pipe, scheduler, step, sample, call.output, noise)
    return event


def guidance_pictures(pipe, scheduler, step, sample, output, guided):
    """ε without the prompt (the negative prompt), with it, their difference and the guided ε."""
    without, with_prompt = (
        host(pipe, clean_and_noise(scheduler, step.index, step.count, sample, half)[1])
        for half in (output[: len(sample)], output[len(sample) :])
    )  # each (1, 4, h, w)
    guided = host(pipe, guided)
    scale = max(abs(x).max() for x in (without, with_prompt, guided))  # one colour scale for the three
    difference = with_prompt - without
    return {
        "without": picture(channels(without, scale)),
        "with": picture(channels(with_prompt, scale)),
        "difference": picture(channels(difference)),
        "difference_range": float(abs(difference).max()),
        "guided": picture(channels(guided, scale)),
        "range": float(scale),
    }


def attention_pictures(pipe, prompt, attention):
    """Each token's (h, w) cross-attention map, on one colour scale shared by the tokens: up to the
    largest weight a word of the prompt gets (the start and end tokens, which soak up most of the
    attention, saturate on it)."""
    maps = token_maps(pipe.tokenizer, prompt, host(pipe, attention))
    top = max(float(heat.max()) for _, heat in maps[1:-1] or maps)
    return {
        "scale": top,
        "tokens": [
            {"token": token, "share": float(heat.mean()), "map": picture(heatmap(heat, top))} for token, heat in maps
        ],
    }


# ---------------------------------------------------------------- arrays -> pictures


def host(pipe, array):
    return pipe.backend.to_host(array).astype(numpy.float32)


def colours(name):
    """A matplotlib colour map as a (256, 3) uint8 table."""
    return (colormaps[name](numpy.linspace(0, 1, 256))[:, :3] * 255).round().astype(numpy.uint8)


INFERNO, RED_BLUE = colours("inferno"), colours("RdBu_r")


def heatmap(values, top):
    """(h, w) values in [0, top] -> (h, w, 3) uint8, dark to bright (inferno)."""
    return INFERNO[(numpy.clip(values / max(top, 1e-12), 0, 1) * 255).round().astype(numpy.int64)]


def diverging(values, scale=None):
    """Values in [-scale, scale] (default: their largest magnitude) -> colours, blue, white, red."""
    scale = float(abs(values).max()) if scale is None else scale
    return RED_BLUE[(numpy.clip(values / max(scale, 1e-12) / 2 + 0.5, 0, 1) * 255).round().astype(numpy.int64)]


def channels(latents, scale=None):
    """(1, C, h, w) -> (h, C·(w + 1) − 1, 3): the C channels side by side, one pixel apart, on one scale."""
    tiles = [diverging(channel, scale if scale is not None else abs(latents).max()) for channel in latents[0]]
    gap = numpy.full((latents.shape[2], 1, 3), 255, dtype=numpy.uint8)
    return numpy.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


def picture(image):
    """A PIL image or an (h, w, 3) uint8 array -> "data:image/png;base64,..."."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
