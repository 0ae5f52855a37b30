"""Text to image (and image to image): the three components wired together.

1. The text encoder turns the prompt (and the negative prompt) into 77 token vectors each.
2. The image information creator starts from random latents and, step by step, asks the UNet
   for the noise in them and lets the scheduler remove a little of it (`Pipeline.denoise`).
3. The image decoder (the VAE) paints the final latents into pixels.

Guidance runs the UNet twice per step, without and with the text, and pushes the prediction
away from the unconditional one: ε = ε_uncond + s·(ε_text − ε_uncond).

SDXL (a folder with a second text encoder) is this same loop: only what the UNet is told
changes (sdxl.py, `Pipeline.condition`).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy
from PIL import Image
from tqdm.auto import tqdm

from . import inpaint
from .backend import Backend
from .embeddings import add_embedding
from .errors import read_json
from .images import from_pil, open_image, to_pil
from .lora import LoRAs
from .model_settings import read_model_settings
from .ops import fast_paths
from .options import Options
from .preview import SD_FACTORS, SDXL_BIAS, SDXL_FACTORS, preview
from .prompt_weights import emphasize, has_weights, parse, weighted_chunks
from .rng import TorchGenerator
from .schedulers import check_config as check_scheduler_config
from .schedulers import make_scheduler, scheduler_name
from .sdxl import SDXLText, time_ids
from .single_file import read_single_file
from .unet import guidance_embedding
from .weights import check_model_folder, load_component, load_tokenizer


@dataclass
class Step:
    """One denoising step, as the generator `Pipeline.denoise` yields it."""

    index: int  # 0-based step number
    count: int  # how many steps the loop makes
    timestep: int | float  # the scheduler's t for this step (999 … 0; fractional for some samplers)
    latents: object  # the latents after this step, (N, 4, h, w) on the backend, N images
    noise_pred: object  # the guided noise prediction ε at this step, (N, 4, h, w)


def load(path, backend="numpy", dtype="float32", config=None, weights_dtype=None, fast=True):
    """Load a Stable Diffusion model into a Pipeline: a diffusers-layout folder, or one
    single-file .safetensors checkpoint in the original layout (minisd.single_file).

    config (single files only) corrects what detection guesses: {"family": "sd1" | "sd2",
    "prediction_type": "epsilon" | "v_prediction", "image_size": 512}.
    weights_dtype="float16" with dtype="float32" keeps the weight matrices in half the memory
    and computes in float32 (see Backend).
    fast=False runs every layer on the plain equations of nn.py (ops.py): slow, but what a
    debugger steps into is the textbook code; the picture is the same to rounding.
    """
    backend = Backend(backend, dtype, weights_dtype)
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        parts = read_single_file(path, backend, _vae_backend(backend, force_upcast=True), config)
        return Pipeline(**parts, fast=fast)
    if config is not None:
        raise ValueError(
            "config= overrides the detection of a single-file checkpoint; a model folder "
            "carries its own config.json files"
        )
    return Pipeline.from_folder(path, backend, fast)


def _sdxl_text(folder, tokenizer, text_encoder, backend):
    """SDXL's two tokenizers and text encoders (the first ones are SD's), when model_index.json
    names a second; else None."""
    index = read_json(folder / "model_index.json")
    if (index.get("text_encoder_2") or [None])[0] is None:  # SDXL: ["transformers", "CLIPTextModelWithProjection"]
        return None
    return SDXLText(
        (tokenizer, load_tokenizer(folder, "tokenizer_2")),
        (text_encoder, load_component(folder, "text_encoder_2", backend)),
        backend,
        index.get("force_zeros_for_empty_prompt", True) is True,
    )


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
    def __init__(
        self,
        tokenizer,
        text_encoder,
        unet,
        vae,
        scheduler_config,
        backend,
        name="model",
        vae_backend=None,
        defaults=None,
        fast=True,
        preview_map=None,
        sdxl=None,
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.backend = backend
        self.vae_backend = vae_backend or backend
        self.name = name
        self.sdxl = sdxl  # SDXL's second tokenizer and text encoder (sdxl.SDXLText), None in SD 1/2
        self.fast = fast  # False: the plain equations of nn.py only
        # (factors (4, 3), bias (3,)): the folder's own, else those published for SD's or SDXL's latents
        self.preview_map = preview_map or ((SDXL_FACTORS, SDXL_BIAS) if sdxl else (SD_FACTORS, (0.0, 0.0, 0.0)))
        encoders = {"text_encoder": text_encoder} | ({"text_encoder_2": sdxl.text_encoders[1]} if sdxl else {})
        self.loras = LoRAs({"unet": unet, **encoders}, backend)
        self.vae_scale_factor = vae.scale_factor  # 8 in SD
        # what an option left at None means: the model folder's minisd.json, else SD's usual values
        self.defaults = {
            "steps": 50,
            "guidance": 5.0 if sdxl else 7.5,  # diffusers' defaults
            "height": self.default_size,
            "width": self.default_size,
            **(defaults or {}),
        }

    @classmethod
    def from_folder(cls, path, backend, fast=True):
        check_model_folder(path)
        folder = Path(path)
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        scheduler_config = read_json(scheduler_file)
        check_scheduler_config(scheduler_config, scheduler_file)
        defaults, preview_map = read_model_settings(folder)
        vae_backend = _vae_backend(backend, read_json(folder / "vae" / "config.json").get("force_upcast", True))
        tokenizer, text_encoder = load_tokenizer(folder), load_component(folder, "text_encoder", backend)
        return cls(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=load_component(folder, "unet", backend),
            vae=load_component(folder, "vae", vae_backend),
            scheduler_config=scheduler_config,
            backend=backend,
            name=folder.resolve().name,
            vae_backend=vae_backend,
            defaults=defaults,
            fast=fast,
            preview_map=preview_map,
            sdxl=_sdxl_text(folder, tokenizer, text_encoder, backend),
        )

    @property
    def default_size(self):
        """The training resolution: the UNet's latent sample size times 8 (512 for SD 1.5)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    # ------------------------------------------------------------ public API

    def __call__(self, prompt, negative_prompt=None, *, progress=True, **options):
        """Text to image: a PIL image, or with num_images > 1 a list of them, denoised together
        as one batch through the UNet (their noise drawn at once, as diffusers'
        num_images_per_prompt does). `options`: the fields of `Options`."""
        images = self.generate(prompt, self.options(negative_prompt=negative_prompt, **options), progress)
        return images[0] if len(images) == 1 else images

    def img2img(self, prompt, image, strength=0.8, *, progress=True, **options):
        """Image to image: noise `image` up to `strength` (0 < strength <= 1), then denoise."""
        return self.generate(prompt, self.options(image=image, strength=strength, **options), progress)[0]

    def inpaint(self, prompt, image, mask, strength=1.0, *, progress=True, **options):
        """Inpainting (inpaint.py): repaint `image` where `mask` is white, keep the rest; with an
        inpainting UNet (9 channels) or any other (the known part put back after every step)."""
        return self.generate(prompt, self.options(image=image, mask=mask, strength=strength, **options), progress)[0]

    def generate(self, prompt, options, progress=True, on_step=None):
        """The list of PIL images that `options` (an `Options`, see `options`) describe;
        `on_step(step)` is called after every denoising step (the command line's --preview)."""
        latents = self._run(self.denoise(prompt, options), progress, on_step)  # (N, 4, h, w)
        return [self.decode(latents[i : i + 1], options.vae_tiling) for i in range(len(latents))]

    def options(self, **given):
        """An `Options` from keywords, what was left at None filled from the model's defaults, checked."""
        options = Options(**given)
        options.check_types()
        for name in ("image", "mask"):
            if isinstance(getattr(options, name), (str, Path)):
                setattr(options, name, open_image(getattr(options, name)))
        options.steps = self.defaults["steps"] if options.steps is None else options.steps
        options.guidance = self.defaults["guidance"] if options.guidance is None else options.guidance
        options.height, options.width = self._check_size(options.height, options.width, options.image)
        options.scheduler = options.scheduler or scheduler_name(self.scheduler_config)
        options.check()
        given_sizes = [name for name in ("original_size", "target_size") if getattr(options, name) is not None]
        if not self.sdxl and (given_sizes or tuple(options.crop_top_left) != (0, 0)):
            raise ValueError(
                f"{', '.join(given_sizes) or 'crop_top_left'} conditions SDXL's UNet; {self.name} is not an SDXL model"
            )
        return options

    def denoise(self, prompt, options=None, **given):
        """The denoising loop as a generator of `Step`s (what __call__ and img2img consume).

        Takes an `Options`, or its fields as keywords. Text to image starts from pure noise (or
        the given `latents`); with `image`, it starts from the image's latents noised up to
        `strength` and runs only that part of the schedule.
        """
        if not isinstance(prompt, str):
            raise ValueError(f"the prompt must be a string, not {type(prompt).__name__}")
        if options is None:
            options = self.options(**given)
        elif given:
            raise TypeError("denoise takes an Options or keywords, not both")
        scheduler = make_scheduler(options.scheduler, self.scheduler_config)
        scheduler.set_timesteps(options.steps)
        generator = TorchGenerator(options.seed)
        context, added = self.condition(prompt, options)
        timesteps, inpainting = scheduler.timesteps, None
        if options.image is None:
            latents = self._initial_latents(generator, options) * scheduler.init_noise_sigma
        else:
            timesteps = _img2img_timesteps(scheduler.timesteps, options.steps, options.strength, scheduler.order)
            scheduler.set_begin_index(len(scheduler.timesteps) - len(timesteps))
        if options.image is not None and options.mask is None:
            latents = self._noised_image_latents(generator, options, scheduler, timesteps[0])
        elif options.mask is not None:
            image, strength_max = sized(options.image, options), options.strength == 1.0
            latents, inpainting = inpaint.start(
                self, generator, image, options.mask, scheduler, timesteps, strength_max
            )
        for index, t in enumerate(timesteps):
            # fresh noise for this step (DDIM with eta > 0, Euler a, DDPM), drawn in diffusers' order
            noise = self._noise_like(generator, latents) if scheduler.needs_noise(t, options.eta) else None
            extra = inpainting.extra if inpainting else None
            noise_pred = self.predict_noise(
                scheduler.scale_model_input(latents, t), t, context, options.guidance, extra, added
            )
            latents = scheduler.step(noise_pred, t, latents, eta=options.eta, noise=noise)
            if inpainting:
                latents = inpainting.keep_known(latents, scheduler, timesteps, index)
            yield Step(index, len(timesteps), t.item(), latents, noise_pred)

    def condition(self, prompt, options):
        """What the UNet is told besides the latents and t, each with a row per image:
        the text vectors ([N negatives;] N prompts, 77, D), and a dict of the inputs some UNets add
        (SDXL's pooled text `text_embeds` and `time_ids`; LCM's guidance embedding `timestep_cond`)."""
        xp, added = self.backend.xp, {}
        if self.sdxl:
            self._check_sdxl_text(prompt, options)
            context, added["text_embeds"] = self.sdxl.encode(
                prompt, options.negative_prompt, self.guided(options.guidance), options.clip_skip, self.fast
            )
            added["time_ids"] = xp.asarray(numpy.stack([time_ids(options)] * len(context)))  # ([1;] 1, 6)
        else:
            guidance = options.guidance if self.guided(options.guidance) else 1
            context = self.encode_prompt(
                prompt,
                options.negative_prompt,
                guidance,
                options.clip_skip,
                options.long_prompt,
                options.prompt_weights,
            )
        if self.unet.config.time_cond_proj_dim is not None:  # LCM: the guidance scale is an input
            w = xp.full((1,), options.guidance - 1, dtype="float32")
            added["timestep_cond"] = guidance_embedding(w, self.unet.config.time_cond_proj_dim)  # (1, dim)
        repeat = options.num_images
        return xp.repeat(context, repeat, axis=0), {name: xp.repeat(v, repeat, axis=0) for name, v in added.items()}

    def guided(self, guidance):
        """Whether classifier-free guidance runs: guidance > 1, unless the UNet takes the guidance
        scale as an input (LCM's distilled UNets), as diffusers decides."""
        return guidance > 1 and self.unet.config.time_cond_proj_dim is None

    def _check_sdxl_text(self, prompt, options):
        if options.prompt_weights or options.long_prompt == "chunk":
            raise ValueError(
                "prompt weights and long_prompt='chunk' are not implemented for SDXL's two text encoders; "
                "use prompt_weights=False (--prompt-weights off) and long_prompt='truncate'"
            )
        if options.prompt_weights is None and any(map(has_weights, (prompt, options.negative_prompt or ""))):
            warnings.warn("SDXL: brackets and BREAK are read literally (no prompt weights)", stacklevel=4)
        _warn_if_truncated(self.tokenizer, prompt)

    def encode_prompt(
        self, prompt, negative_prompt="", guidance=7.5, clip_skip=0, long_prompt="truncate", prompt_weights=None
    ):
        """Prompt -> text embeddings (1, 77, D); with guidance > 1, [negative; prompt] (2, 77, D)
        (SD 1/2; SDXL's two encoders are `condition`'s). A negative prompt of None is "".

        clip_skip = k takes the prompt's vectors k layers before the last; like diffusers, not the
        negative prompt's. long_prompt="chunk" encodes a prompt of more than 75 tokens in chunks of
        75, each with its own BOS/EOS, and concatenates them: (.., 77 * chunks, D); the default
        "truncate" keeps the first 75 tokens (with a warning), as diffusers does.
        prompt_weights: AUTOMATIC1111's (word:1.3) syntax (prompt_weights.py), in both texts; None
        reads it where a text has brackets or BREAK, False never. Weighted texts are chunked as
        AUTOMATIC1111 chunks them, whatever long_prompt says.
        """
        texts = (negative_prompt or "", prompt)
        if prompt_weights or (prompt_weights is None and any(map(has_weights, texts))):
            pieces = [parse(text) for text in texts]
            count = max(len(weighted_chunks(self.tokenizer, text_pieces)[0]) for text_pieces in pieces)
            ids, weights = zip(*(weighted_chunks(self.tokenizer, text_pieces, count) for text_pieces in pieces))
        elif long_prompt == "truncate":
            _warn_if_truncated(self.tokenizer, prompt)
            ids, weights = [self.tokenizer.encode(text) for text in texts], (None, None)
        elif long_prompt == "chunk":
            count = max(len(self.tokenizer.encode_chunks(text)) for text in texts)
            ids, weights = [self.tokenizer.encode_chunks(text, count) for text in texts], (None, None)
        else:
            raise ValueError(f"long_prompt must be 'truncate' or 'chunk', got {long_prompt!r}")
        text = self._text_vectors(ids[1], clip_skip, weights[1])
        if guidance <= 1:
            return text
        return self.backend.xp.concatenate([self._text_vectors(ids[0], 0, weights[0]), text])

    def _text_vectors(self, ids, clip_skip=0, weights=None):
        """(chunks, 77) token ids -> (1, 77 * chunks, D) text vectors, emphasized by `weights`
        (chunks, 77) when given (prompt_weights.emphasize)."""
        with fast_paths(self.fast):
            vectors = self.text_encoder(self.backend.asarray(ids, dtype="int64"), clip_skip)  # (chunks, 77, D)
        if weights is not None:
            vectors = emphasize(vectors, weights)
        return vectors.reshape(1, -1, vectors.shape[-1])

    def predict_noise(self, latents, t, context, guidance, extra=None, added=None):
        """The UNet's noise estimate for latents (N, 4, h, w), with classifier-free guidance when
        the context has 2N rows (N negative, then N prompt); `added`: the UNet's added inputs, with
        the context's rows (`condition`).

        The UNet runs in the backend's dtype; latents and noise stay float32 for the scheduler.
        """
        sample = latents.astype(self.backend.dtype, copy=False)
        if extra is not None:  # an inpainting UNet also sees the mask and the masked picture: (N, 9, h, w)
            sample = self.backend.xp.concatenate([sample, extra.astype(sample.dtype)], axis=1)
        xp, guided = self.backend.xp, context.shape[0] != sample.shape[0]
        added = {name: value.astype(sample.dtype, copy=False) for name, value in (added or {}).items()}
        with fast_paths(self.fast):
            noise = self.unet(xp.concatenate([sample, sample]) if guided else sample, t, context, **added)
        noise = noise.astype("float32", copy=False)
        if not guided:
            return noise
        noise_uncond, noise_text = xp.split(noise, 2)  # each (N, 4, h, w)
        return noise_uncond + guidance * (noise_text - noise_uncond)

    def decode(self, latents, vae_tiling=False):
        """Latents (1, 4, h, w) -> PIL image, through the VAE decoder; with vae_tiling, latents
        larger than the model's size are decoded in blended tiles of that size (AutoencoderKL.decode):
        a 1024x1024 image from SD 1.5 then needs the memory of a 512x512 one."""
        latents = self.vae_backend.asarray(latents / self.vae.config.scaling_factor)
        with fast_paths(self.fast):
            images = self.vae.decode(latents, tiled=vae_tiling)  # (1, 3, H, W) in [-1, 1]
        return to_pil(self.vae_backend.to_host(images).astype(numpy.float32))

    def load_lora(self, path, scale=1.0):
        """LoRA (lora.py): the file's low-rank update, times `scale`, fused into the UNet and the text
        encoder; several add up, `unload_loras` gives the weights back as they were."""
        self.loras.load(path, scale)

    def unload_loras(self):
        self.loras.unload()

    def load_embedding(self, path, token=None):
        """Textual inversion (embeddings.py): the file's vectors under `token` (default: the file's
        own, the file's name for AUTOMATIC1111's), usable in prompts from now on; returns the token."""
        if self.sdxl:  # its two tokenizers and tables (clip_l, clip_g) would both have to learn the token
            raise ValueError("textual inversion is not implemented for SDXL's two text encoders yet")
        return add_embedding(self.tokenizer, self.text_encoder, self.backend, path, token)

    def preview(self, latents):
        """A step's latents (N, 4, h, w) as a small RGB picture of the first image, (h, w) pixels:
        each latent pixel's colour by a linear map (preview.py), no VAE. The map is the model
        folder's (minisd.json), else the one published for SD 1.x/2.x or SDXL latents."""
        return preview(self.backend.to_host(latents), *self.preview_map)

    def encode_image(self, image):
        """PIL image -> posterior mean and log-variance of its latents (unscaled)."""
        pixels = self.vae_backend.asarray(from_pil(image))  # (1, 3, H, W) in [-1, 1]
        with fast_paths(self.fast):
            return self.vae.encode(pixels)

    # ------------------------------------------------------------ helpers

    def _run(self, loop, progress, on_step=None):
        step = None
        with tqdm(loop, desc="denoising", unit="step", disable=not progress) as bar:
            for step in bar:
                if bar.total is None:
                    bar.total = step.count
                    bar.refresh()
                if on_step:
                    on_step(step)
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

    def _initial_latents(self, generator, options):
        factor = self.vae_scale_factor
        shape = (options.num_images, self.unet.config.in_channels, options.height // factor, options.width // factor)
        if options.latents is None:
            return self.backend.asarray(randn(generator, shape), dtype="float32")
        if tuple(options.latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} for a {options.width}x{options.height} image, "
                f"got {tuple(options.latents.shape)}"
            )
        return self.backend.asarray(options.latents, dtype="float32")

    def _noised_image_latents(self, generator, options, scheduler, t_start):
        latents = self.sample_latents(generator, from_pil(sized(options.image, options)))
        return scheduler.add_noise(latents, self._noise_like(generator, latents), t_start)

    def sample_latents(self, generator, pixels):
        """Pixels (1, 3, H, W) in [-1, 1] -> latents drawn from the VAE's posterior, scaled for the UNet."""
        with fast_paths(self.fast):
            moments = self.vae.encode(self.vae_backend.asarray(pixels))
        mean, logvar = (x.astype("float32", copy=False) for x in moments)
        sample = mean + self.backend.xp.exp(0.5 * logvar) * self._noise_like(generator, mean)
        return sample * self.vae.config.scaling_factor

    def _noise_like(self, generator, array):
        return self.backend.asarray(randn(generator, array.shape), dtype="float32")


def sized(image, options):
    """The picture in RGB at the options' size (Lanczos resampling, as diffusers)."""
    image = image.convert("RGB")
    size = (options.width, options.height)
    return image if image.size == size else image.resize(size, Image.LANCZOS)


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
