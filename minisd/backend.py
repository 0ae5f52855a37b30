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
    """Where arrays live (`xp`) and the dtype activations use (`dtype`).

    The weight matrices and convolution kernels (nearly all the bytes) are kept in
    `weights_dtype`, by default the same. Backend("numpy", "float32", weights_dtype="float16")
    keeps them in half the memory and computes in float32: each layer widens its weights for
    its own matrix product (NumPy does this by itself when it multiplies float32 by float16).
    """

    def __init__(self, name="numpy", dtype="float32", weights_dtype=None):
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
        for what, value in (("dtype", dtype), ("weights_dtype", weights_dtype or dtype)):
            if value not in DTYPES:
                raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(DTYPES)}")
        self.name = name
        self.xp = _import_cupy() if name == "cupy" else numpy
        self.dtype = self.xp.dtype(dtype)
        self.weights_dtype = self.xp.dtype(weights_dtype or dtype)

    def asarray(self, host_array, dtype=None):
        """Move a host (NumPy) array to this backend, cast to `dtype` (default: the backend's)."""
        return self.xp.asarray(host_array, dtype=dtype or self.dtype)

    def with_dtype(self, dtype):
        """The same device with another dtype (e.g. a float32 VAE beside a float16 UNet)."""
        return Backend(self.name, dtype, self.weights_dtype.name if self.weights_dtype != self.dtype else None)

    def to_host(self, array):
        """Bring an array back to the CPU as a NumPy array."""
        return array.get() if self.name == "cupy" else numpy.asarray(array)

    def __repr__(self):
        weights = f", weights_dtype={self.weights_dtype.name!r}" if self.weights_dtype != self.dtype else ""
        return f"Backend({self.name!r}, {self.dtype.name!r}{weights})"


def _import_cupy():
    try:
        import cupy
    except ImportError as error:
        raise ImportError(
            "backend='cupy' needs CuPy and an NVIDIA GPU: pip install 'minisd[gpu]' "
            "(cupy-cuda12x), or use backend='numpy'"
        ) from error
    return cupy
