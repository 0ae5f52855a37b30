"""Files that ship with minisd: CUDA kernels and the embedded model.

In the repository they live in top-level folders (kernels/, weights/); an installed minisd
carries them as the packages minisd.kernels and minisd.models. `shipped_folder` finds them
either way, so a checkout used through PYTHONPATH works too.
"""

from importlib import resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def shipped_folder(package, checkout_folder):
    """The folder of `package` (e.g. "minisd.kernels"), or `checkout_folder` of a source tree."""
    try:
        return resources.files(package)
    except ModuleNotFoundError:  # minisd imported from a checkout on PYTHONPATH, not installed
        return CHECKOUT / checkout_folder
