"""The errors minisd raises for files it cannot use, each saying what to do, and the JSON reader
every config and tokenizer file goes through.

Both are ValueErrors: a caller that catches ValueError (the command line does) catches them.
Their messages name the file, what was found there, and what is allowed.
"""

import json
from pathlib import Path


class WeightsError(ValueError):
    """A model folder or file that minisd cannot read, with what to do about it."""


class ConfigError(WeightsError):
    """A config file (config.json, scheduler_config.json, ...) with a value minisd cannot use."""


def read_json(path):
    """The JSON object in file `path`; a WeightsError naming the file if it is not one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise WeightsError(f"{path} is not valid JSON ({reason}): restore the file from the model's download") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must hold a JSON object, not a {type(value).__name__}")
    return value
