"""Text to image (and image to image): the three components wired together.

1. The text encoder turns the prompt (and the negative prompt) into 77 token vectors each.
2. The image information creator starts from random latents and, step by step, asks the UNet
   for the noise in them and lets the scheduler remove a little of it (`Pipeline.denoise`).
3. The image decoder (the VAE) paints the final latents into pixels.

Guidance runs the UNet twice per step, without and with the text, and pushes the prediction
away from the unconditional one: ε = ε_uncond + s·(ε_text − ε_uncond).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy
from PIL import Image
from tqdm.auto import tqdm

from .backend import Backend
from .rng import TorchGenerator
from .samplers import make_scheduler
from .single_file import read_single_file
from .weights import check_model_folder, load_component, load_tokenizer, read_json


@dataclass
class Step:
    """One denoising step, as the generator `Pipeline.denoise` yields it."""

    index: int  # 0-based step number
    count: int  # how many steps the loop makes
    timestep: int | float  # the scheduler's t for this step (999 … 0; fractional for some samplers)
    latents: object  # the latents after this step, (N, 4, h, w) on the backend, N images
    noise_pred: object  # the guided noise prediction ε at this step, (N, 4, h, w)


def load(path, backend="numpy", dtype="float32", config=None, weights_dtype=None):
    """Load a Stable Diffusion model into a Pipeline: a diffusers-layout folder, or one
    single-file .safetensors checkpoint in the original layout (minisd.single_file).

    config (single files only) corrects what detection guesses: {"family": "sd1" | "sd2",
    "prediction_type": "epsilon" | "v_prediction", "image_size": 512}.
    weights_dtype="float16" with dtype="float32" keeps the weight matrices in half the memory
    and computes in float32 (see Backend).
    """
    backend = Backend(backend, dtype, weights_dtype)
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        return Pipeline(**read_single_file(path, backend, _vae_backend(backend, force_upcast=True), config))
    if config is not None:
        raise ValueError("config= overrides the detection of a single-file checkpoint; a model folder "
                         "carries its own config.json files")  # fmt: skip
    return Pipeline.from_folder(path, backend)


def _vae_backend(backend, force_upcast):
    """The VAE's backend: float32 when the rest runs in float16, as diffusers does (it overflows)."""
    return backend.with_dtype("float32") if backend.dtype == numpy.float16 and force_upcast else backend


def randn(generator, shape):
    """Standard normal noise drawn on the CPU, so one seed gives one picture on every backend.

    The generator is PyTorch's, repeated in NumPy (minisd.rng): seed s gives the noise that
    diffusers draws with torch.Generator("cpu").manual_seed(s), so the same picture.
    """
    return generator.standard_normal(shape, dtype=numpy.float32)


class Pipeline:
    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler_config, backend, name="model",
                 vae_backend=None, defaults=None):  # fmt: skip
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.backend = backend
        self.vae_backend = vae_backend or backend
        self.name = name
        self.vae_scale_factor = vae.scale_factor  # 8 in SD
        # what an option left at None means: the model folder's minisd.json, else SD's usual values
        self.defaults = {"steps": 50, "guidance": 7.5, "height": self.default_size,
                         "width": self.default_size, **(defaults or {})}  # fmt: skip

    @classmethod
    def from_folder(cls, path, backend):
        check_model_folder(path)
        folder = Path(path)
        vae_backend = _vae_backend(backend, read_json(folder / "vae" / "config.json").get("force_upcast", True))
        return cls(
            tokenizer=load_tokenizer(folder),
            text_encoder=load_component(folder, "text_encoder", backend),
            unet=load_component(folder, "unet", backend),
            vae=load_component(folder, "vae", vae_backend),
            scheduler_config=read_json(folder / "scheduler" / "scheduler_config.json"),
            backend=backend,
            name=folder.resolve().name,
            vae_backend=vae_backend,
            defaults=_folder_defaults(folder),
        )

    @property
    def default_size(self):
        """The training resolution: the UNet's latent sample size times 8 (512 for SD 1.5)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    # ------------------------------------------------------------ public API

    def __call__(self, prompt, negative_prompt="", steps=None, guidance=None, seed=0, height=None,
                 width=None, scheduler=None, eta=0.0, latents=None, progress=True, vae_tiling=False,
                 num_images=1, **text_options):  # fmt: skip
        """Text to image: returns a PIL image, or with num_images > 1 a list of them, denoised
        together as one batch through the UNet (their noise drawn at once, as diffusers'
        num_images_per_prompt does). text_options: clip_skip, long_prompt (encode_prompt).
        vae_tiling=True decodes images larger than the model's size in tiles (see decode)."""
        loop = self.denoise(prompt, negative_prompt, steps, guidance, seed, height, width, scheduler, eta, latents,
                            num_images=num_images, **text_options)  # fmt: skip
        latents = self._run(loop, progress)  # (N, 4, h, w)
        images = [self.decode(latents[i : i + 1], vae_tiling) for i in range(num_images)]
        return images[0] if num_images == 1 else images

    def img2img(self, prompt, image, strength=0.8, negative_prompt="", steps=None, guidance=None, seed=0,
                height=None, width=None, scheduler=None, eta=0.0, progress=True, vae_tiling=False,
                **text_options):  # fmt: skip
        """Image to image: noise `image` up to `strength` (0 < strength <= 1), then denoise."""
        loop = self.denoise(prompt, negative_prompt, steps, guidance, seed, height, width, scheduler, eta,
                            image=image, strength=strength, **text_options)  # fmt: skip
        return self.decode(self._run(loop, progress), vae_tiling)

    def denoise(self, prompt, negative_prompt="", steps=None, guidance=None, seed=0, height=None, width=None,
                scheduler=None, eta=0.0, latents=None, image=None, strength=1.0, clip_skip=0,
                long_prompt="truncate", num_images=1):  # fmt: skip
        """The denoising loop as a generator of `Step`s (what __call__ and img2img consume).

        Text to image starts from pure noise (or the given `latents`); with `image`, it starts
        from the image's latents noised up to `strength` and runs only that part of the schedule.
        clip_skip and long_prompt choose how the prompt is encoded (see encode_prompt).
        num_images (text to image) denoises that many latents in one batch.
        """
        image = Image.open(image) if isinstance(image, (str, Path)) else image
        steps = self.defaults["steps"] if steps is None else steps
        guidance = self.defaults["guidance"] if guidance is None else guidance
        height, width = self._check_size(height, width, image)
        _check_options(steps, eta, strength, image, num_images)
        scheduler = make_scheduler(scheduler, self.scheduler_config)
        scheduler.set_timesteps(steps)
        generator = TorchGenerator(seed)
        context = self.encode_prompt(prompt, negative_prompt, guidance, clip_skip, long_prompt)
        context = self.backend.xp.repeat(context, num_images, axis=0)  # ([N negatives;] N prompts, 77, D)
        if image is None:
            timesteps = scheduler.timesteps
            latents = self._initial_latents(generator, latents, height, width, num_images)
            latents = latents * scheduler.init_noise_sigma
        else:
            timesteps = _img2img_timesteps(scheduler.timesteps, steps, strength, scheduler.order)
            scheduler.set_begin_index(len(scheduler.timesteps) - len(timesteps))
            latents = self._noised_image_latents(generator, image, height, width, scheduler, timesteps[0])
        for index, t in enumerate(timesteps):
            # fresh noise for this step (DDIM with eta > 0, Euler a, DDPM), drawn in diffusers' order
            noise = self._noise_like(generator, latents) if scheduler.needs_noise(t, eta) else None
            noise_pred = self.predict_noise(scheduler.scale_model_input(latents, t), t, context, guidance)
            latents = scheduler.step(noise_pred, t, latents, eta=eta, noise=noise)
            yield Step(index, len(timesteps), t.item(), latents, noise_pred)

    def encode_prompt(self, prompt, negative_prompt="", guidance=7.5, clip_skip=0, long_prompt="truncate"):
        """Prompt -> text embeddings (1, 77, D); with guidance > 1, [negative; prompt] (2, 77, D).

        clip_skip = k takes the prompt's vectors k layers before the last; like diffusers, not the
        negative prompt's. long_prompt="chunk" encodes a prompt of more than 75 tokens in chunks of
        75, each with its own BOS/EOS, and concatenates them: (.., 77 * chunks, D); the default
        "truncate" keeps the first 75 tokens (with a warning), as diffusers does.
        """
        if long_prompt == "truncate":
            _warn_if_truncated(self.tokenizer, prompt)
            ids = [self.tokenizer.encode(text) for text in (negative_prompt, prompt)]
        elif long_prompt == "chunk":
            count = max(len(self.tokenizer.encode_chunks(text)) for text in (negative_prompt, prompt))
            ids = [self.tokenizer.encode_chunks(text, count) for text in (negative_prompt, prompt)]
        else:
            raise ValueError(f"long_prompt must be 'truncate' or 'chunk', got {long_prompt!r}")
        negative_ids, prompt_ids = ids
        text = self._text_vectors(prompt_ids, clip_skip)
        if guidance <= 1:
            return text
        return self.backend.xp.concatenate([self._text_vectors(negative_ids), text])

    def _text_vectors(self, ids, clip_skip=0):
        """(chunks, 77) token ids -> (1, 77 * chunks, D) text vectors."""
        vectors = self.text_encoder(self.backend.asarray(ids, dtype="int64"), clip_skip)
        return vectors.reshape(1, -1, vectors.shape[-1])

    def predict_noise(self, latents, t, context, guidance):
        """The UNet's noise estimate for latents (N, 4, h, w), with classifier-free guidance when
        the context has 2N rows (N negative, then N prompt).

        The UNet runs in the backend's dtype; latents and noise stay float32 for the scheduler.
        """
        sample = latents.astype(self.backend.dtype, copy=False)
        if context.shape[0] == sample.shape[0]:
            return self.unet(sample, t, context).astype("float32", copy=False)
        xp = self.backend.xp
        noise = self.unet(xp.concatenate([sample, sample]), t, context).astype("float32", copy=False)
        noise_uncond, noise_text = xp.split(noise, 2)  # each (N, 4, h, w)
        return noise_uncond + guidance * (noise_text - noise_uncond)

    def decode(self, latents, vae_tiling=False):
        """Latents (1, 4, h, w) -> PIL image, through the VAE decoder; with vae_tiling, latents
        larger than the model's size are decoded in blended tiles of that size (AutoencoderKL.decode):
        a 1024x1024 image from SD 1.5 then needs the memory of a 512x512 one."""
        latents = self.vae_backend.asarray(latents / self.vae.config.scaling_factor)
        images = self.vae.decode(latents, tiled=vae_tiling)  # (1, 3, H, W) in [-1, 1]
        return to_pil(self.vae_backend.to_host(images).astype(numpy.float32))

    def encode_image(self, image):
        """PIL image -> posterior mean and log-variance of its latents (unscaled)."""
        pixels = self.vae_backend.asarray(from_pil(image))  # (1, 3, H, W) in [-1, 1]
        return self.vae.encode(pixels)

    # ------------------------------------------------------------ helpers

    def _run(self, loop, progress):
        step = None
        with tqdm(loop, desc="denoising", unit="step", disable=not progress) as bar:
            for step in bar:
                if bar.total is None:
                    bar.total = step.count
                    bar.refresh()
        return step.latents

    def _check_size(self, height, width, image):
        if image is not None and height is None and width is None:
            width, height = (size - size % self.vae_scale_factor for size in image.size)
        height = self.defaults["height"] if height is None else height
        width = self.defaults["width"] if width is None else width
        factor = self.vae_scale_factor
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(
                f"height and width must be positive multiples of {factor} (the VAE's downsampling), "
                f"got {width}x{height}; try {max(factor, width // factor * factor)}x"
                f"{max(factor, height // factor * factor)}"
            )
        return height, width

    def _latent_shape(self, height, width, count):
        factor = self.vae_scale_factor
        return (count, self.unet.config.in_channels, height // factor, width // factor)

    def _initial_latents(self, generator, latents, height, width, count):
        shape = self._latent_shape(height, width, count)
        if latents is None:
            return self.backend.asarray(randn(generator, shape), dtype="float32")
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} for a {width}x{height} image, got {tuple(latents.shape)}")
        return self.backend.asarray(latents, dtype="float32")

    def _noised_image_latents(self, generator, image, height, width, scheduler, t_start):
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        mean, logvar = (x.astype("float32", copy=False) for x in self.encode_image(image))
        sample = mean + self.backend.xp.exp(0.5 * logvar) * self._noise_like(generator, mean)
        latents = sample * self.vae.config.scaling_factor
        return scheduler.add_noise(latents, self._noise_like(generator, latents), t_start)

    def _noise_like(self, generator, array):
        return self.backend.asarray(randn(generator, array.shape), dtype="float32")


def _folder_defaults(folder):
    """Generation defaults a model folder may carry in minisd.json ({"defaults": {"steps": ...}})."""
    path = folder / "minisd.json"
    return read_json(path).get("defaults") if path.exists() else None


def _check_options(steps, eta, strength, image, num_images):
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if image is not None and num_images != 1:
        raise ValueError("num_images applies to text to image; img2img makes one image per call")
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 is deterministic DDIM), got {eta}")
    if image is not None and not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1 ignores the image entirely), got {strength}")
    if image is not None and int(steps * strength) < 1:
        raise ValueError(
            f"strength {strength} with {steps} steps leaves no denoising step (int(steps*strength) = 0): "
            "raise strength or steps"
        )


def _img2img_timesteps(timesteps, steps, strength, order):
    """The tail of the schedule that starts at noise level `strength`, as diffusers cuts it."""
    start = steps - min(int(steps * strength), steps)
    return timesteps[start * order :]


def _warn_if_truncated(tokenizer, prompt):
    dropped = tokenizer.truncated_words(prompt)
    if dropped:
        warnings.warn(
            f"The following part of your input was truncated because CLIP can only handle sequences "
            f"up to {tokenizer.max_length} tokens: {dropped!r}",
            stacklevel=4,
        )


def from_pil(image):
    """PIL RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    pixels = numpy.asarray(image.convert("RGB"), dtype=numpy.float32) / 255.0  # (H, W, 3)
    return (pixels * 2 - 1).transpose(2, 0, 1)[None]


def to_pil(images):
    """(1, 3, H, W) in [-1, 1] -> PIL image, rounding as diffusers does."""
    pixels = ((images[0] / 2 + 0.5).clip(0, 1) * 255).round().astype(numpy.uint8)
    return Image.fromarray(pixels.transpose(1, 2, 0))  # (H, W, 3)
