"""The embedded model's world: one coloured shape on a plain background, with its caption.

Pictures are drawn with PIL at 4× resolution and downsampled (anti-aliased edges), from a
seeded random generator. `judge` reads a picture back (background, object colour, shape) so
that generated images can be scored automatically. Needs only NumPy and Pillow.
"""

import math

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {  # close to everyday RGB values
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (135, 45, 175),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
COMBINATIONS = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]  # 54
# The composition experiment trains without these (each colour once, each shape and background
# twice) and then asks for them: words the model knows, in combinations it never saw.
HELD_OUT = [
    ("red", "triangle", "gray"),
    ("green", "square", "black"),
    ("blue", "circle", "white"),
    ("yellow", "square", "gray"),
    ("purple", "circle", "black"),
    ("orange", "triangle", "white"),
]


def caption(colour, shape, background=None):
    """'a red circle on a white background', or the short form 'a red circle'."""
    text = f"a {colour} {shape}"
    return f"{text} on a {background} background" if background else text


def draw(colour, shape, background, rng, size=SIZE):
    """A (size, size, 3) uint8 picture: the shape at a random place and size."""
    scale = 4
    big = size * scale
    image = Image.new("RGB", (big, big), BACKGROUNDS[background])
    radius = rng.uniform(0.2, 0.34) * big  # half the shape's extent
    cx, cy = (rng.uniform(radius + 0.06 * big, big - radius - 0.06 * big) for _ in range(2))
    pen = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        half = radius * 0.9
        pen.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:  # upright triangle, centred on its bounding box
        top, bottom = cy - radius, cy + radius * 0.9
        half_base = radius * 1.1
        pen.polygon([(cx, top), (cx - half_base, bottom), (cx + half_base, bottom)], fill=fill)
    return np.asarray(image.resize((size, size), Image.LANCZOS))


def judge(pixels):
    """(background, colour, shape) read from a picture, by the rules of the evaluation.

    background: the palette background nearest to the median border colour; object: pixels far
    from that background; colour: the palette colour nearest to the object's median colour;
    shape: from how much of its bounding box the object fills (square ≈ 1, circle ≈ π/4,
    triangle ≈ 1/2).
    """
    pixels = np.asarray(pixels, dtype=np.float64)[..., :3]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = nearest(np.median(border, axis=0), BACKGROUNDS)
    distance = np.linalg.norm(pixels - BACKGROUNDS[background], axis=-1)
    mask = distance > 60
    if mask.sum() < 20:
        return background, None, None
    colour = nearest(np.median(pixels[mask], axis=0), COLOURS)
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = mask.sum() / box
    shape = "square" if fill > 0.9 else "circle" if fill > 0.66 else "triangle"
    return background, colour, shape


def nearest(rgb, palette):
    return min(palette, key=lambda name: math.dist(rgb, palette[name]))
