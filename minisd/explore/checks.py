"""What the page may ask for, checked on the server before anything runs.

Every field of a request is checked for its type and range, and refused with a `BadRequest`
that names the field, the value and what is allowed; the server answers it with a 4xx and that
message. An uploaded picture is decoded by Pillow only after its size in bytes and in pixels
(read from its header) are within bounds, and only as PNG, JPEG or WebP.
"""

import base64
import binascii
import io
import math

from PIL import Image

from ..pipeline import sized
from ..schedulers import SCHEDULERS, make_scheduler

MAX_BODY_BYTES = 8 * 2**20  # a request, the picture in base64 included
MAX_UPLOAD_BYTES = 4 * 2**20  # the picture's file
MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_PROMPT_CHARS = 500  # the text encoder reads 75 tokens anyway
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "width", "height", "image", "strength")


class BadRequest(ValueError):
    """A request the explorer refuses: `status` is the HTTP code (400, 413 or 429)."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def sizes(pipe):
    """The picture sizes the page offers: multiples of 8 from half the model's size to its size."""
    factor, top = pipe.vae_scale_factor, pipe.default_size
    return list(range(max(factor, top // 2 // factor * factor), top + 1, factor))


def run_request(body, pipe):
    """A run's JSON body -> (prompt, Options), or a BadRequest naming the first problem."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}: a run takes {', '.join(FIELDS)}")
    text_prompt, allowed_sizes = prompt(body), sizes(pipe)
    given = dict(
        negative_prompt=text(body, "negative_prompt", ""),
        seed=integer(body, "seed", 0, MAX_SEED, 0),
        steps=integer(body, "steps", 1, MAX_STEPS, pipe.defaults["steps"]),
        guidance=number(body, "guidance", 0.0, MAX_GUIDANCE, pipe.defaults["guidance"]),
        scheduler=choice(body, "scheduler", list(SCHEDULERS), None),
        width=choice(body, "width", allowed_sizes, pipe.defaults["width"]),
        height=choice(body, "height", allowed_sizes, pipe.defaults["height"]),
        prompt_weights=False,  # brackets are plain text: the tokens shown are the tokens encoded
    )
    if body.get("image") is not None:
        given.update(image=upload(body["image"]), strength=number(body, "strength", 0.0, 1.0, 0.8))
        if given["strength"] == 0:
            raise BadRequest("strength must be in (0, 1]: 0 would leave the picture as it is; try 0.6")
    try:
        options = pipe.options(**given)
        # a scheduler this model (or this many steps) cannot run says so now, not in the middle of the run
        make_scheduler(options.scheduler, pipe.scheduler_config).set_timesteps(options.steps)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    if options.image is not None:
        options.image = sized(options.image, options)  # a waiting run keeps the picture at the run's size only
    return text_prompt, options


def prompt(body):
    """The prompt of a request: a string of at most MAX_PROMPT_CHARS characters."""
    return text(body, "prompt", None)


def text(body, name, default):
    value = body.get(name, default)
    if value is None:
        raise BadRequest(f"{name} is missing: give it as a string")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise BadRequest(f"{name} has {len(value)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return value


def integer(body, name, low, high, default):
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, got {value!r:.40}")
    return value


def number(body, name, low, high, default):
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number from {low} to {high}, got {value!r:.40}")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be from {low} to {high}, got {value}")
    return float(value)


def choice(body, name, choices, default):
    value = body.get(name, default)
    if value != default and (isinstance(value, bool) or value not in choices):
        raise BadRequest(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r:.40}")
    return value


def upload(data_url):
    """An uploaded picture, "data:image/...;base64,..." -> a decoded RGB PIL image."""
    if not isinstance(data_url, str) or not data_url.startswith("data:") or ";base64," not in data_url:
        raise BadRequest("image must be a picture as a data URL (data:image/png;base64,...)")
    encoded = data_url.split(";base64,", 1)[1]
    if len(encoded) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise BadRequest(f"the picture is over {MAX_UPLOAD_BYTES // 2**20} MB; send a smaller one", 413)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image is not valid base64 after ';base64,'") from None
    return decode_picture(data)


def decode_picture(data):
    """A picture file's bytes -> RGB PIL image: PNG, JPEG or WebP, at most MAX_UPLOAD_PIXELS pixels,
    counted from its header before a pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise BadRequest("the picture has too many pixels (Pillow refuses it as a decompression bomb)", 413) from None
    except (OSError, SyntaxError, ValueError) as error:  # what Pillow raises for bytes it cannot read
        raise BadRequest(f"the picture is not a PNG, JPEG or WebP file Pillow can read: {error}") from None
    if image.width * image.height > MAX_UPLOAD_PIXELS:
        raise BadRequest(
            f"the picture has {image.width}x{image.height} pixels; at most {MAX_UPLOAD_PIXELS} are allowed: "
            "resize it first",
            413,
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise BadRequest(f"the picture's data is broken, Pillow cannot decode it: {error}") from None
    return image.convert("RGB")
