"""What a model folder may add in its own minisd.json: generation defaults and a preview map.

    {"defaults": {"steps": 20, "guidance": 1.5, "height": 64, "width": 64},
     "preview": {"factors": [[...] x 4], "bias": [...]}}      (see preview.py)

Both are checked as they are read: a ConfigError names the file and what is wrong.
"""

import numpy

from .errors import ConfigError, read_json
from .module import fits, known_fields
from .options import Options


def folder_defaults(folder):
    """Generation defaults a model folder may carry in minisd.json ({"defaults": {"steps": ...}})."""
    path = folder / "minisd.json"
    if not path.exists():
        return None
    defaults = read_json(path).get("defaults", {})
    allowed = {"steps", "guidance", "height", "width"}
    if not isinstance(defaults, dict) or not set(defaults) <= allowed:
        raise ConfigError(f"{path}: defaults must be an object of {', '.join(sorted(allowed))}, got {defaults!r:.80}")
    known_fields(Options, defaults, path)  # their types
    return defaults


def folder_preview(folder):
    """The preview map a model folder may carry in minisd.json ({"preview": {"factors", "bias"}})."""
    path = folder / "minisd.json"
    settings = read_json(path).get("preview") if path.exists() else None
    if settings is None:
        return None
    factors, bias = (numpy.asarray(settings.get(key), dtype=object) for key in ("factors", "bias"))
    if factors.shape != (4, 3) or bias.shape != (3,) or not all(map(fits_number, [*factors.flat, *bias])):
        raise ConfigError(f"{path}: preview must hold factors, 4 rows of 3 numbers, and bias, 3 numbers")
    return factors.astype(numpy.float32), bias.astype(numpy.float32)


def fits_number(value):
    return fits(value, float)
