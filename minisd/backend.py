"""The array seam: every layer computes with `xp`, which is NumPy (CPU) or CuPy (GPU).

Layers never import numpy or cupy themselves. They ask `array_module(x)` for the module
that owns an array, exactly like `cupy.get_array_module`, so one line of code
(`xp.exp(x)`, `x @ w.T`) runs on either device. A `Backend` decides where weights live
and in which dtype; initial noise is always drawn on the CPU and then moved with
`backend.asarray`, so a seed means the same picture on every backend.
"""

import ctypes
import functools
import os

import numpy
from threadpoolctl import ThreadpoolController

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
        if name == "numpy":
            keep_freed_memory()
            let_idle_blas_threads_sleep()
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


@functools.cache
def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for the next array instead of giving it back.

    By default an array over 128 KB is mapped fresh from the kernel and unmapped when freed, so
    every new activation pays a page fault per 4 KB page (the kernel zeroes each one): some
    35,000 faults and about 7% of a CPU UNet step, and a 200 MB array (a large layer's
    Winograd kernels) 0.1–0.3 s, five times its computation. These settings never map memory
    for an array: every one comes from the heap, where freed memory is reused, and the heap
    stays at its high-water mark (measured peaks: +0.07 GB for a whole 512×512 generation,
    +0.34 GB for a tiled 1024×1024 decode). This changes malloc for the whole process, once; on
    a C library other than glibc (macOS, Windows, musl) nothing happens.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_top_pad, 64 * 2**20)


# After a multi-threaded matrix product, OpenBLAS keeps its worker threads spinning for the
# next one for 2^28 CPU cycles (~0.1 s). minisd's own block workers (parallel.py) run the norms,
# activations and attention in exactly those gaps, and a spinning thread takes a core from them:
# inside a UNet step, the attention over 1024 tokens took 75 ms instead of 39 ms and a LayerNorm
# 6 ms instead of 3 (the whole 64x64 step 8.7 s instead of 9.5 s). With 2^4 cycles the idle threads
# sleep at once; waking them costs microseconds per product, and SD's products take milliseconds.
BLAS_THREAD_TIMEOUT = "4"  # OpenBLAS's OPENBLAS_THREAD_TIMEOUT: log2 of the cycles


def let_idle_blas_threads_sleep():
    """Set OPENBLAS_THREAD_TIMEOUT (unless the user has) in every OpenBLAS NumPy has loaded.

    OpenBLAS reads its environment when it loads, with NumPy, before minisd can set anything.
    So it is asked to read it again (`openblas_read_env`) and to stop its threads
    (`blas_thread_shutdown_`, what it does before a fork); the next product starts them again
    with the new timeout. A build without these two functions keeps its own setting. It runs
    once per process, when the first NumPy backend is made: the variable then stays set (child
    processes inherit it and read it as they load).
    """
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = BLAS_THREAD_TIMEOUT
    for blas in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        library = ctypes.CDLL(blas.filepath)
        if hasattr(library, "openblas_read_env") and hasattr(library, "blas_thread_shutdown_"):
            library.openblas_read_env()
            library.blas_thread_shutdown_()


def _import_cupy():
    try:
        import cupy
    except ImportError as error:
        raise ImportError(
            "backend='cupy' needs CuPy and an NVIDIA GPU: pip install 'minisd[gpu]' "
            "(cupy-cuda12x), or use backend='numpy'"
        ) from error
    return cupy
