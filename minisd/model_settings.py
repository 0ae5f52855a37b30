"""What a model folder may add in its own minisd.json: generation defaults and a preview map.

    {"defaults": {"steps": 20, "guidance": 1.5, "height": 64, "width": 64},
     "preview": {"factors": [[...] x 4], "bias": [...]}}      (see preview.py)

Both are checked as they are read: a ConfigError names the file and what is wrong.
"""

import numpy

from .errors import ConfigError, read_json
from .module import fits, known_fields
from .options import Options


def read_model_settings(folder):
    """(defaults, preview map) from a model folder's minisd.json, each None where it gives none."""
    path = folder / "minisd.json"
    if not path.exists():
        return None, None
    settings = read_json(path)
    return checked_defaults(path, settings.get("defaults", {})), checked_preview(path, settings.get("preview"))


def checked_defaults(path, defaults):
    """Generation defaults ({"steps": ..., "guidance": ..., "height": ..., "width": ...}), checked."""
    allowed = {"steps", "guidance", "height", "width"}
    if not isinstance(defaults, dict) or not set(defaults) <= allowed:
        raise ConfigError(f"{path}: defaults must be an object of {', '.join(sorted(allowed))}, got {defaults!r:.80}")
    known_fields(Options, defaults, path)  # their types
    return defaults


def checked_preview(path, preview):
    """The preview map ({"factors": 4 rows of 3 numbers, "bias": 3 numbers}) as arrays, or None."""
    if preview is None:
        return None
    if isinstance(preview, dict):
        factors, bias = (numpy.asarray(preview.get(key), dtype=object) for key in ("factors", "bias"))
        if factors.shape == (4, 3) and bias.shape == (3,) and all(fits(v, float) for v in (*factors.flat, *bias)):
            return factors.astype(numpy.float32), bias.astype(numpy.float32)
    raise ConfigError(f"{path}: preview must hold factors, 4 rows of 3 numbers, and bias, 3 numbers")
