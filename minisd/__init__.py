"""minisd: Stable Diffusion written out layer by layer, in NumPy (CPU) or CuPy (GPU).

import minisd
pipe = minisd.load("path/to/stable-diffusion-v1-5")   # a diffusers-layout folder
image = pipe("a red circle on a white background", steps=25, seed=0)
"""

from .backend import Backend
from .errors import ConfigError, WeightsError
from .ops import fast_paths
from .pipeline import Options, Pipeline, Step, load
from .weights import default_model_folder

__all__ = ["Backend", "ConfigError", "Options", "Pipeline", "Step", "WeightsError", "fast_paths", "generate", "load"]
__version__ = "0.1.0"


def generate(prompt, weights=None, backend="numpy", dtype="float32", fast=True, **options):
    """One call from prompt to PIL image. `options` are those of `Pipeline.__call__` (`Options`)."""
    return load(weights or default_model_folder(), backend, dtype, fast=fast)(prompt, **options)
