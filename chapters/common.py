"""What every chapter shares: its options, the model, the pictures of shapes, saving figures.

Every chapter takes the same options:

    --weights PATH   a Stable Diffusion model folder or .safetensors file (default: the embedded model)
    --backend NAME   numpy (CPU, the default) or cupy (NVIDIA GPU)
    --out DIR        where figures go (default: chapters/out/, ignored by git)
    --quick          fewer steps, seeds and pictures (what the tests run)
    --lang en|fr     the language of the figures' words (words.py; the French is in french.py)

Opened as a notebook (Jupyter through jupytext, VS Code), a chapter takes the defaults.
"""

import argparse
import io
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

import minisd
from minisd.presets import SD1

HERE = Path(__file__).resolve().parent
# The embedded model's world (one coloured shape on a plain background) is drawn by its training
# data generator: weights/training/shapes.py.
sys.path.insert(0, str(HERE.parent / "weights" / "training"))
import shapes  # noqa: E402
from words import Words  # noqa: E402

DPI = 100  # figure inches × DPI = PNG pixels


def options(description):
    """The chapter's command-line options (unknown ones, like a notebook kernel's, are ignored)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--weights", help="model folder or .safetensors file (default: the embedded model)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--out", type=Path, default=HERE / "out", help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="fewer steps and seeds (for the tests)")
    parser.add_argument("--lang", default="en", choices=["en", "fr"], help="language of the figures' words")
    args, _ = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.tr = Words(args.lang)
    return args


def load_model(args):
    """The pipeline the options name; prints what it is and its generation defaults."""
    pipe = minisd.load(args.weights or minisd.default_model_folder(), backend=args.backend)
    print(f"model {pipe.name} on {pipe.backend}; defaults {pipe.defaults}")
    return pipe


def training_script():
    """weights/training/train.py, the script that trained the embedded model, as a module: chapters
    call its own functions to show how training made its examples. It needs PyTorch, diffusers and
    transformers (the `reference` extra)."""
    try:
        import train
    except ImportError as error:
        raise SystemExit(
            f"this part of the chapter runs weights/training/train.py's own code, which needs {error.name or error}: "
            "pip install -e '.[reference]'"
        ) from error
    return train


def host(pipe, array):
    """A backend array (NumPy or CuPy) as a NumPy float32 array, for printing and plotting."""
    return pipe.backend.to_host(array).astype(np.float32)


def picture(colour, shape, background, size, seed=0):
    """A PIL picture of one shape from the embedded model's training world, `size` pixels square."""
    return Image.fromarray(shapes.draw(colour, shape, background, np.random.default_rng(seed), size))


def pixels(image):
    """PIL image -> (H, W, 3) float array in [0, 1], what matplotlib shows."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of two pictures in [0, 1]: 10·log10(1 / mean squared error)."""
    return float(10 * np.log10(1 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


@contextmanager
def timed(label, times):
    """Measure the `with` block's wall time into times[label] (seconds)."""
    start = time.perf_counter()
    yield
    times[label] = time.perf_counter() - start


def save_figure(fig, args, name):
    """Write the figure as out/NAME.png, in full colour (a palette would band every colour scale),
    and return the path. Its size in pixels is figsize × DPI. Refuses a figure with words that did
    not come through args.tr (they would stay English in the French edition)."""
    path = args.out / f"{name}.png"
    rendered = io.BytesIO()
    fig.savefig(rendered, dpi=DPI, format="png")  # drawing fills in the tick labels the check reads
    if missing := args.tr.untranslated(fig):
        raise ValueError(f"{name}: figure words not passed through tr() or tr.literal(): {missing}")
    Image.open(rendered).convert("RGB").save(path, optimize=True)
    print(f"wrote {path}")
    return path


def save_facts(args, name, facts):
    """Write the numbers a chapter computed as out/NAME.json (the tests check them)."""
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(facts, indent=2))
    return path


def channel_mosaic(latents):
    """(4, h, w) latents -> (2h, 2w): the four channels tiled 2 × 2, to show them as one picture."""
    _, h, w = latents.shape
    return latents.reshape(2, 2, h, w).transpose(0, 2, 1, 3).reshape(2 * h, 2 * w)


def sizes(pipe):
    """The tensors passed between the components, for the model in use and for SD 1.5 (the article's
    numbers), each as a shape tuple without the batch: token embeddings (77, D), latents (4, h, w),
    image (3, H, W). Read from the configs."""

    def shapes(tokens, width, latent_channels, vae_levels, image_size):
        factor = 2 ** (vae_levels - 1)  # each VAE level but the last halves the height and width
        side = image_size // factor
        return {
            "token embeddings": (tokens, width),
            "latents": (latent_channels, side, side),
            "image": (3, image_size, image_size),
        }

    text, vae = pipe.text_encoder.config, pipe.vae.config
    model = shapes(
        text.max_position_embeddings,
        text.hidden_size,
        vae.latent_channels,
        len(vae.block_out_channels),
        pipe.defaults["height"],
    )
    article = shapes(
        SD1["text_encoder"]["max_position_embeddings"],
        SD1["text_encoder"]["hidden_size"],
        SD1["vae"]["latent_channels"],
        len(SD1["vae"]["block_out_channels"]),
        SD1["image_size"],
    )
    return {pipe.name: model, "SD 1.5": article}


def shape(dims):
    """(4, 64, 64) -> "4×64×64", as the article writes shapes."""
    return "×".join(str(d) for d in dims)
