"""Every CUDA kernel compiles to PTX for sm_80 (A100) and sm_90 (H100/H200) on any machine.

NVRTC (through cupy.cuda.nvrtc, with nvidia-cuda-nvrtc-cu12) compiles without a GPU, so a
kernel that does not build fails here, in CI, before any GPU session spends time on it.
"""

import re
from pathlib import Path

import pytest

from cuda_emulator import entry_points

KERNELS = sorted((Path(__file__).parent.parent / "kernels").glob("*.cu"))
REASON = "compiling kernels needs CuPy and NVRTC: pip install -e '.[test]' (cupy-cuda12x, nvidia-cuda-nvrtc-cu12)"


def nvrtc_compile(source, name, arch, *options):
    """The NVRTC program of `source` compiled for `arch` (compute_XX: to PTX; sm_XX: on through
    ptxas to the GPU's own code), or a failed test with the compiler's log."""
    pytest.importorskip("cupy", reason=REASON)
    from cupy.cuda import nvrtc

    try:
        program = nvrtc.createProgram(source, name, [], [])
    except Exception as error:  # libnvrtc missing
        pytest.skip(f"{REASON} ({error})")
    try:
        nvrtc.compileProgram(program, [f"--gpu-architecture={arch}", "-std=c++17", *options])
    except nvrtc.NVRTCError:
        pytest.fail(f"{name} does not compile for {arch}:\n{nvrtc.getProgramLog(program)}")
    return program


def nvrtc_ptx(source, name, arch):
    program = nvrtc_compile(source, name, arch)
    from cupy.cuda import nvrtc  # there: nvrtc_compile has skipped the test otherwise

    return nvrtc.getPTX(program).decode()


def test_kernels_exist():
    assert [path.name for path in KERNELS] == ["attention.cu", "attention_tc.cu", "fused.cu", "im2col.cu"]


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("path", KERNELS, ids=[path.name for path in KERNELS])
def test_compiles_to_ptx(path, arch):
    from minisd import cuda

    ptx = nvrtc_ptx(cuda.kernel_source(path.stem), path.name, arch)  # as minisd compiles it: after common.cuh
    assert f".target sm_{arch[-2:]}" in ptx
    declared = set(entry_points(path.read_text()))
    entries = set(re.findall(r"\.entry (\w+)\(", ptx))
    assert declared and declared <= entries


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", KERNELS, ids=[path.name for path in KERNELS])
def test_assembles_without_spills(path, arch):
    """NVRTC also runs ptxas, down to the GPU's own code: every kernel assembles (shared memory
    within the 48 KB a block may declare, registers within the launch bounds) and keeps all its
    values in registers, none spilled to memory."""
    from minisd import cuda

    program = nvrtc_compile(cuda.kernel_source(path.stem), path.name, arch, "--ptxas-options=-v")
    from cupy.cuda import nvrtc  # there: nvrtc_compile has skipped the test otherwise

    log = nvrtc.getProgramLog(program)
    compiled = re.findall(r"Compiling entry function '(\w+)'", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert set(entry_points(path.read_text())) <= set(compiled) and len(spills) == len(compiled)
    assert all(stores == loads == "0" for stores, loads in spills), log


def test_attention_entry_points_cover_the_python_dispatch():
    """Every (dtype, head dim) that minisd/cuda.py sends to the kernel has an entry point."""
    from minisd import cuda

    source = cuda.kernel_source("attention")
    for dtype in cuda.DTYPE_NAMES.values():
        for head_dim in cuda.ATTENTION_HEAD_DIMS:
            assert f"ENTRY(attention_{dtype}_d{head_dim}," in source
    tensor_cores = cuda.kernel_source("attention_tc")
    for head_dim in cuda.ATTENTION_HEAD_DIMS:
        assert f"ENTRY(attention_tc_d{head_dim}," in tensor_cores


def test_fused_entry_points_cover_the_python_dispatch():
    """Every kernel minisd/cuda.py launches from kernels/fused.cu exists for every dtype it sends."""
    from minisd import cuda

    source = cuda.kernel_source("fused")
    for dtype in cuda.DTYPE_NAMES.values():
        for kernel in ("group_norm", "layer_norm", "geglu", "silu"):
            assert f"{kernel.upper()}({kernel}_{dtype}," in source
