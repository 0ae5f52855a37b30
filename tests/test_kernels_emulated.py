"""Our CUDA kernels, run on the CPU: kernels/*.cu compiled with g++ under tests/cuda_emulator.h
and launched by minisd.cuda's own code on NumPy arrays, checked as the GPU tier checks them
(tests/kernel_checks.py), at smaller sizes. A kernel's indexing, tiling, tensor-core fragments,
synchronisation and online softmax are thus tested on every CI run; its speed, and a GPU's own
behaviour, only on a GPU (tests/test_gpu.py).
"""

import shutil

import kernel_checks
import numpy as np
import pytest
from cuda_emulator import EmulatedModule

from minisd import cuda

if shutil.which("g++") is None:
    pytest.skip("the CUDA emulator compiles the kernels with g++: apt install g++", allow_module_level=True)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emulated-kernels")
    return {name: EmulatedModule(name, folder) for name in ("attention", "attention_tc", "fused", "im2col")}


@pytest.fixture
def on_cpu(emulated, monkeypatch):
    """minisd.cuda launching the emulated kernels instead of CuPy's."""
    monkeypatch.setattr(cuda, "_module", emulated.__getitem__)


@pytest.mark.parametrize("dtype, tolerance, tensor_cores",
                         [("float32", 1e-5, False), ("float16", 2e-3, False), ("float16", 2e-3, True)],
                         ids=["float32", "float16", "float16-tensor-cores"])  # fmt: skip
@pytest.mark.parametrize("head_dim", cuda.ATTENTION_HEAD_DIMS)
@pytest.mark.parametrize("lengths", [(77, 77), (33, 130)], ids=lambda l: f"{l[0]}x{l[1]}")
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_attention_kernels(on_cpu, dtype, tolerance, tensor_cores, head_dim, lengths, masked):
    kernel_checks.check_attention(np, dtype, tolerance, head_dim, lengths, masked, tensor_cores)


def test_tensor_cores_take_float16_only(on_cpu):
    q = np.zeros((1, 4, 80), np.float32)
    with pytest.raises(ValueError, match="float16 only"):
        cuda.attention(q, q, q, 2, tensor_cores=True)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 3e-3)])
def test_fused_kernels(on_cpu, dtype, tolerance):
    kernel_checks.check_fused(np, dtype, tolerance, channels=64, pixels=8, tokens=20)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape, kernel_size, stride, padding",
                         [((2, 3, 9, 7), 3, 1, 1), ((2, 5, 9, 8), 3, 2, 1), ((1, 4, 6, 6), 3, 2, 0), ((2, 2, 5, 5), 2, 1, 0)])  # fmt: skip
def test_im2col(on_cpu, dtype, shape, kernel_size, stride, padding):
    kernel_checks.check_im2col(np, dtype, shape, kernel_size, stride, padding)
