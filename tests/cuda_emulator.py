"""Run kernels/*.cu on the CPU: compile them with g++ after tests/cuda_emulator.h and call them
as minisd/cuda.py calls CuPy's kernels.

`EmulatedModule(name)` stands where `cupy.RawModule` stands in minisd/cuda.py: its
`get_function(entry)` returns a kernel called as `kernel(grid, block, args)`, with NumPy arrays
where CuPy would take device arrays (passed as pointers) and NumPy scalars passed by value.
So the tests run minisd.cuda's own launch code, grid and arguments included, on NumPy arrays.
"""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy

from minisd import cuda

HEADER = Path(__file__).with_name("cuda_emulator.h")
SCALARS = {
    numpy.dtype("int32"): ctypes.c_int32,
    numpy.dtype("int64"): ctypes.c_int64,
    numpy.dtype("float32"): ctypes.c_float,
}


def entry_points(source):
    """The kernels a .cu file defines: the names in its ENTRY(name, ...)-style macro lines."""
    return re.findall(r"^[A-Z][A-Z0-9_]*\((\w+),", source, re.MULTILINE)


class EmulatedModule:
    def __init__(self, name, build_folder):
        if shutil.which("g++") is None:
            raise RuntimeError("the CUDA emulator needs g++ (apt install g++)")
        source = cuda.kernel_source(name)
        program = Path(build_folder) / f"{name}.cpp"
        program.write_text(
            f'#include "{HEADER}"\n{source}\n' + "".join(f"EMULATE({entry})\n" for entry in entry_points(source))
        )
        library = program.with_suffix(".so")
        command = [
            "g++",
            "-std=c++20",
            "-O2",
            "-fno-strict-aliasing",
            "-shared",
            "-fPIC",
            "-pthread",
            str(program),
            "-o",
            str(library),
        ]
        built = subprocess.run(command, capture_output=True, text=True, check=False)
        if built.returncode != 0:
            raise RuntimeError(f"kernels/{name}.cu does not build for the CPU emulator:\n{built.stderr}")
        self.library = ctypes.CDLL(str(library))
        self.launched = set()  # the entry points called so far

    def get_function(self, entry):
        function = getattr(self.library, f"emulate_{entry}")
        function.argtypes = [ctypes.c_uint] * 6 + [ctypes.POINTER(ctypes.c_void_p)]

        def kernel(grid, block, args):
            self.launched.add(entry)
            values = argument_values(args)
            pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(value) for value in values))
            function(*padded(grid), *padded(block), pointers)  # values stay alive until it returns

        return kernel


def padded(dims):
    return (*dims, *(1,) * (3 - len(dims)))


def argument_values(args):
    """Each argument as a C value: an array as the pointer to its data, a NumPy scalar as itself."""
    values = []
    for arg in args:
        if isinstance(arg, numpy.ndarray):
            assert arg.flags.c_contiguous, "kernels take contiguous arrays"
            values.append(ctypes.c_void_p(arg.ctypes.data))
        else:
            values.append(SCALARS[numpy.asarray(arg).dtype](arg))
    return values
