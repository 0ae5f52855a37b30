"""Watching a generation from inside: what chapter 7 and the explorer show of each step.

`watch_unet` records every call of the UNet while it is active: the latents it saw, what it
predicted (both halves of guidance's doubled batch, before guidance mixes them) and where each
latent pixel looked in the text (its cross-attention, averaged over the layers and their heads).
`clean_and_noise` turns a prediction into the clean latents x̂₀ and the noise ε̂ it implies, at
the noise level `alpha_bar` of the step; `token_maps` names the attention maps by the prompt's
tokens. Nothing here changes a number the pipeline computes (module.forward_hooks).
"""

from contextlib import contextmanager
from dataclasses import dataclass

from .module import forward_hooks
from .nn import attention_weights, upsample_nearest
from .schedulers.schedule import predict_x0_and_noise


@dataclass
class UNetCall:
    """One call of the UNet. B = N images, or 2N with guidance ([negative; prompt])."""

    sample: object  # the latents it saw, x_t = √ᾱ x₀ + √(1−ᾱ) ε: (B, 4, h, w)
    output: object  # what it predicted (ε, or v for a v-prediction model): (B, 4, h, w)
    attention: object  # each latent pixel's weights over the T text tokens: (B, h, w, T), summing to 1 over T


@contextmanager
def watch_unet(unet, on_call):
    """While the `with` block runs, call `on_call(UNetCall)` after every call of `unet`."""
    sample, maps = None, []  # this call's latents, and its cross-attention: one (B, h, w, T) per layer

    def record(key, module, inputs, output):
        nonlocal sample
        if key == "conv_in":  # the call begins
            sample = inputs[0].astype("float32")  # a copy: (B, 4, h, w)
            maps.clear()
        elif key.endswith("attn2"):
            pixels, text = inputs  # (B, h'·w', C) one token per latent pixel of this layer, (B, T, D)
            weights = attention_weights(module.to_q(pixels), module.to_k(text), module.heads)  # (B, heads, h'·w', T)
            maps.append(latent_grid(weights.mean(axis=1), sample.shape[2:]))
        elif key == "conv_out":  # the call ends
            attention = sum(maps) / len(maps) if maps else None
            on_call(UNetCall(sample, output.astype("float32"), attention))

    with forward_hooks(unet, record):
        yield


def latent_grid(weights, size):
    """(B, h'·w', T) weights of a layer at any resolution -> (B, h, w, T) at the latents' size (h, w)."""
    height, width = size
    factor = round((height * width / weights.shape[1]) ** 0.5)  # 1, 2, 4 … for deeper layers
    grid = weights.reshape(weights.shape[0], -(-height // factor), -(-width // factor), -1)  # (B, h', w', T)
    grid = upsample_nearest(grid.transpose(0, 3, 1, 2), size)  # (B, T, h, w)
    return grid.transpose(0, 2, 3, 1)


def alpha_bar(scheduler, index, count):
    """ᾱ of the latents the UNet sees at step `index` of `count` (the last `count` entries of the
    scheduler's timesteps, as image to image runs them): the schedule's ᾱ_t, or for a sampler in
    sigma space, whose UNet input is x / √(σ² + 1), ᾱ = 1 / (σ² + 1)."""
    position = len(scheduler.timesteps) - count + index
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:
        return scheduler.alphas_cumprod[int(scheduler.timesteps[position])]
    return 1 / (sigmas[position] ** 2 + 1)


def clean_and_noise(scheduler, index, count, sample, output):
    """The UNet's `output` for latents `sample` (x_t) at step `index` of `count` read as the clean
    latents x̂₀ and the noise ε̂ in x_t = √ᾱ x̂₀ + √(1−ᾱ) ε̂, whatever the model predicts (ε or v)."""
    a = alpha_bar(scheduler, index, count)
    return predict_x0_and_noise(scheduler.config.prediction_type, output, sample, a)


def token_maps(tokenizer, prompt, attention):
    """(h, w, T) attention -> [(token, (h, w) map)]: the start token, each BPE piece of the prompt
    (75 at most), then the end token and the padding after it together."""
    words = [piece.replace("</w>", "") for piece in tokenizer.tokenize(prompt)][: tokenizer.max_length - 2]
    end = len(words) + 1  # positions: 0 start, 1 … len(words) the words, then the end token and the padding
    heats = [attention[..., i] for i in range(end)] + [attention[..., end:].sum(axis=-1)]
    return list(zip(["<start>", *words, "<end> + padding"], heats))
