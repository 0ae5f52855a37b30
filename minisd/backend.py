"""The array seam: every layer computes with `xp`, which is NumPy (CPU) or CuPy (GPU).

Layers never import numpy or cupy themselves. They ask `array_module(x)` for the module
that owns an array, exactly like `cupy.get_array_module`, so one line of code
(`xp.exp(x)`, `x @ w.T`) runs on either device. A `Backend` decides where weights live
and in which dtype; initial noise is always drawn on the CPU and then moved with
`backend.asarray`, so a seed means the same picture on every backend.
"""

import numpy

BACKENDS = ("numpy", "cupy")
DTYPES = ("float32", "float16")


def array_module(x):
    """The module (numpy or cupy) that owns array `x`."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return numpy


def on_gpu(x):
    """Whether `x` lives on the GPU (a CuPy array)."""
    return array_module(x) is not numpy


class Backend:
    """Where arrays live (`xp`) and the dtype weights and activations use."""

    def __init__(self, name="numpy", dtype="float32"):
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        self.name = name
        self.xp = _import_cupy() if name == "cupy" else numpy
        self.dtype = self.xp.dtype(dtype)

    def asarray(self, host_array, dtype=None):
        """Move a host (NumPy) array to this backend, cast to `dtype` (default: the backend's)."""
        return self.xp.asarray(host_array, dtype=dtype or self.dtype)

    def with_dtype(self, dtype):
        """The same device with another dtype (e.g. a float32 VAE beside a float16 UNet)."""
        return Backend(self.name, dtype)

    def to_host(self, array):
        """Bring an array back to the CPU as a NumPy array."""
        return array.get() if self.name == "cupy" else numpy.asarray(array)

    def __repr__(self):
        return f"Backend({self.name!r}, {self.dtype.name!r})"


def _import_cupy():
    try:
        import cupy
    except ImportError as error:
        raise ImportError(
            "backend='cupy' needs CuPy and an NVIDIA GPU: pip install 'minisd[gpu]' "
            "(cupy-cuda12x), or use backend='numpy'"
        ) from error
    return cupy
