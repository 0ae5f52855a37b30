"""Command line: minisd "a prompt" -o out.png [options]  (also python -m minisd).

`minisd explore [options]` starts the explorer instead (minisd/explore/); a prompt that is just
the word explore is written `minisd -- explore`.
"""

import argparse
import os
import sys
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import load
from .explore import main as explore
from .schedulers import SCHEDULERS
from .weights import WeightsError, default_model_folder


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="minisd", description="Generate an image from a text prompt.")
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("-o", "--output", default="minisd.png", help="PNG file to write (default: minisd.png)")
    parser.add_argument(
        "--negative", help='negative prompt: what to steer away from (none given: "", except SDXL\'s zeros)'
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's, 50 for SD)")
    parser.add_argument(
        "--guidance", type=float, help="classifier-free guidance scale (default: the model's, 7.5 for SD)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--num-images",
        type=int,
        default=1,
        help="images to make in one batch: NAME-1.png, NAME-2.png, ... (default: 1, written to the -o name itself)",
    )
    parser.add_argument("--size", type=parse_size, help="WxH in pixels, multiples of 8 (default: the model's)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="sampler (default: the model's own)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 = deterministic)")
    parser.add_argument(
        "--clip-skip",
        type=int,
        default=0,
        help="use the text encoder's output this many layers "
        "before the last, for the prompt (as diffusers' clip_skip; default: 0)",
    )
    parser.add_argument(
        "--long-prompt",
        choices=["truncate", "chunk"],
        default="truncate",
        help="a prompt over 75 tokens: cut it (default, as diffusers) or encode it in 75-token chunks",
    )
    parser.add_argument(
        "--prompt-weights",
        choices=["auto", "on", "off"],
        default="auto",
        help="AUTOMATIC1111's (word:1.3), (word), [word], BREAK in the prompts: read where a prompt has brackets "
        "or BREAK (auto, the default), always, or never (brackets are plain text)",
    )
    parser.add_argument(
        "--weights", help="diffusers-layout model folder or single-file .safetensors (see weights/README.md)"
    )
    parser.add_argument(
        "--config",
        action="append",
        type=parse_setting,
        metavar="KEY=VALUE",
        help="single-file checkpoints: correct what detection guesses, e.g. "
        "prediction_type=epsilon, image_size=512, family=sd2 (repeatable)",
    )
    parser.add_argument("--init-image", help="start from this image (img2img)")
    parser.add_argument(
        "--strength", type=float, help="img2img and inpainting: how much to change, (0, 1] (default 0.8; inpainting 1)"
    )
    parser.add_argument("--mask", help="inpainting: with --init-image, a picture white where to paint")
    parser.add_argument(
        "--original-size", type=parse_size, help="SDXL: the picture size to condition on, WxH (default: --size)"
    )
    parser.add_argument("--target-size", type=parse_size, help="SDXL: the target size to condition on, WxH")
    parser.add_argument(
        "--crop", type=parse_size, metavar="LEFTxTOP", help="SDXL: the crop's top-left corner to condition on (0x0)"
    )
    parser.add_argument(
        "--vae-tiling",
        action="store_true",
        help="decode images larger than the model's size "
        "in blended tiles (memory of one tile; slightly different pixels)",
    )
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument(
        "--weights-dtype",
        choices=["float32", "float16"],
        help="keep the weight matrices in this dtype (default: --dtype); float16 with "
        "--dtype float32 halves the weights' memory and computes in float32",
    )
    parser.add_argument(
        "--lora",
        action="append",
        metavar="FILE[:SCALE]",
        help="a LoRA .safetensors (kohya or diffusers/PEFT), fused at SCALE (default 1.0); repeatable",
    )
    parser.add_argument(
        "--embedding",
        action="append",
        metavar="FILE[:TOKEN]",
        help="a textual-inversion .safetensors, under TOKEN (default: the file's own token, or its name); repeatable",
    )
    parser.add_argument(
        "--preview",
        metavar="FILE",
        help="a PNG rewritten after every step with a quick picture of the latents (no VAE; see preview.py)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    return parser.parse_args(argv)


def parse_setting(text):
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"--config takes KEY=VALUE, got {text!r}")
    return key, int(value) if value.isdigit() else value


def parse_size(text):
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x512 (WxH), got {text!r}") from None
    return width, height


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["explore"]:  # the explorer's web server (minisd/explore/)
        return explore(argv[1:])
    args = parse_args(argv)
    outputs = output_paths(Path(args.output), args.num_images)
    try:
        if args.mask and not args.init_image:
            raise ValueError("--mask goes with --init-image: the picture to inpaint")
        if args.init_image and args.num_images != 1:
            raise ValueError("--num-images makes a batch from text only; with --init-image, one image per run")
        for output in outputs + ([Path(args.preview)] if args.preview else []):
            check_output(output, args.force)
        config = dict(args.config) if args.config else None
        pipe = load(args.weights or default_model_folder(), args.backend, args.dtype, config, args.weights_dtype)
        for lora in args.lora or []:
            pipe.load_lora(*split_lora(lora))
        for embedding in args.embedding or []:
            pipe.load_embedding(*split_embedding(embedding))
        options = pipe.options(**generation_options(args))
        on_step = (lambda step: write_preview(pipe, step, Path(args.preview), options)) if args.preview else None
        images = pipe.generate(args.prompt, options, on_step=on_step)
    except (WeightsError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"minisd: error: {error}", file=sys.stderr)
        return 2
    for index, (output, image) in enumerate(zip(outputs, images)):
        image.save(output, pnginfo=png_text(args, options, pipe, image, index))
        print(f"wrote {output}")
    return 0


def output_paths(output, count):
    """Where the images go: the -o name for one image, NAME-1.png ... NAME-count.png for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{index}{output.suffix}") for index in range(1, count + 1)]


def split_embedding(text):
    """FILE[:TOKEN] -> (file, token or None); a colon inside a path (C:\\...) is not a token's."""
    path, _, token = text.rpartition(":")
    return (path, token) if path and token and not any(sep in token for sep in "/\\") else (text, None)


def split_lora(text):
    """FILE[:SCALE] -> (file, scale), scale 1.0 when not given."""
    path, _, scale = text.rpartition(":")
    try:
        return (path, float(scale)) if path else (text, 1.0)
    except ValueError:
        return text, 1.0


def write_preview(pipe, step, path, options):
    """The step's preview, scaled up to the picture's size, written whole (a reader never sees half a file)."""
    picture = pipe.preview(step.latents).resize((options.width, options.height), Image.NEAREST)
    partial = path.with_name(path.name + ".partial")
    picture.save(partial, format="PNG")
    os.replace(partial, path)


def check_output(output, force):
    if output.suffix.lower() != ".png":
        raise ValueError(f"output {output} must end in .png (the image carries its parameters as PNG text)")
    if output.exists() and not force:
        raise ValueError(
            f"{output} already exists; choose another name (-o, --preview) or pass --force to overwrite it"
        )
    if not output.parent.is_dir():
        raise ValueError(f"folder {output.parent} does not exist; create it or choose another name (-o, --preview)")


def generation_options(args):
    """The pipeline's options (pipeline.Options) from the command line; what was not given stays
    None, for the pipeline to fill from the model's defaults."""
    width, height = args.size or (None, None)
    strength = args.strength if args.strength is not None else 1.0 if args.mask else 0.8
    image = {"image": args.init_image, "strength": strength, "mask": args.mask} if args.init_image else {}
    sizes = {  # SDXL's size conditioning: (height, width) pairs
        name: value and value[::-1]
        for name, value in (("original_size", args.original_size), ("target_size", args.target_size))
    }
    sizes["crop_top_left"] = args.crop[::-1] if args.crop else (0, 0)
    return dict(
        negative_prompt=args.negative,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        height=height,
        width=width,
        scheduler=args.scheduler,
        eta=args.eta,
        clip_skip=args.clip_skip,
        long_prompt=args.long_prompt,
        prompt_weights={"auto": None, "on": True, "off": False}[args.prompt_weights],
        num_images=args.num_images,
        vae_tiling=args.vae_tiling,
        **{name: value for name, value in sizes.items() if value is not None},
        **image,
    )


def png_text(args, options, pipe, image, index):
    """The generation parameters, stored in the PNG as text chunks; `index` is the image's place in
    its batch (0-based), recorded when the batch holds several: its noise is that batch's."""
    info = PngInfo()
    fields = {
        "prompt": args.prompt,
        "negative_prompt": options.negative_prompt or "",
        "seed": options.seed,
        "steps": options.steps,
        "scheduler": options.scheduler,
        "guidance": options.guidance,
        "eta": options.eta,
        "size": f"{image.width}x{image.height}",
        "model": pipe.name,
        "backend": f"{args.backend}/{args.dtype}",
        "software": "minisd",
    }
    if pipe.sdxl and options.negative_prompt is None:  # not "": SDXL then guides away from zeros
        fields.update(negative_prompt_given="no")
    for name in ("original_size", "target_size", "crop_top_left"):
        if getattr(options, name) not in (None, (0, 0)):
            fields[name] = "x".join(map(str, getattr(options, name)[::-1]))
    if options.num_images > 1:
        fields.update(num_images=options.num_images, image_index=index + 1)
    if args.weights_dtype:
        fields.update(weights_dtype=args.weights_dtype)
    if options.clip_skip:
        fields.update(clip_skip=options.clip_skip)
    if options.long_prompt != "truncate":
        fields.update(long_prompt=options.long_prompt)
    if args.lora:
        fields.update(loras=", ".join(args.lora))
    if args.embedding:
        fields.update(embeddings=", ".join(args.embedding))
    if args.prompt_weights != "auto":
        fields.update(prompt_weights=args.prompt_weights)
    if options.vae_tiling:
        fields.update(vae_tiling=True)
    if args.init_image:
        fields.update(init_image=Path(args.init_image).name, strength=options.strength)
    if args.mask:
        fields.update(mask=Path(args.mask).name)
    for key, value in fields.items():
        info.add_text(key, str(value))
    return info
