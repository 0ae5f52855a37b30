"""Our CUDA kernels, run on the CPU: kernels/*.cu compiled with g++ under tests/cuda_emulator.h
and launched by minisd.cuda's own code on NumPy arrays, checked as the GPU tier checks them
(tests/kernel_checks.py), at smaller sizes; then whole models down the GPU code path (every
dispatch to a kernel taken, the kernels emulated) against the plain NumPy path. A kernel's
indexing, tiling, tensor-core fragments, synchronisation and online softmax, and ops.py's choice
of them, are thus tested on every CI run; speed, CuPy and a GPU's own behaviour only on a GPU
(tests/test_gpu.py).
"""

import shutil

import numpy as np
import pytest

import kernel_checks
from cuda_emulator import EmulatedModule
from minisd import cuda, ops
from minisd.backend import Backend
from minisd.clip import CLIPTextConfig, CLIPTextModel
from minisd.random_model import place, random_weights
from minisd.unet import UNet2DConditionModel, UNetConfig
from minisd.vae import AutoencoderKL, VAEConfig

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


@pytest.mark.parametrize(
    "dtype, tolerance, tensor_cores",
    [("float32", 1e-5, False), ("float16", 2e-3, False), ("float16", 2e-3, True)],
    ids=["float32", "float16", "float16-tensor-cores"],
)
@pytest.mark.parametrize("head_dim", cuda.ATTENTION_HEAD_DIMS)
@pytest.mark.parametrize("lengths", [(77, 77), (33, 130)], ids=lambda lengths: f"{lengths[0]}x{lengths[1]}")
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
@pytest.mark.parametrize(
    "shape, kernel_size, stride, padding",
    [((2, 3, 9, 7), 3, 1, 1), ((2, 5, 9, 8), 3, 2, 1), ((1, 4, 6, 6), 3, 2, 0), ((2, 2, 5, 5), 2, 1, 0)],
)
def test_im2col(on_cpu, dtype, shape, kernel_size, stride, padding):
    kernel_checks.check_im2col(np, dtype, shape, kernel_size, stride, padding)


# Small models whose attention head dims the kernels cover: 40 and 80 in the UNet, 64 in CLIP
# and in the VAE's single head.
SMALL_UNET = UNetConfig(
    block_out_channels=(80, 160),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    norm_num_groups=16,
    attention_head_dim=2,
    cross_attention_dim=128,
)
SMALL_TEXT = CLIPTextConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
SMALL_VAE = VAEConfig(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=16,
)


def take_gpu_code_path(patch):
    """NumPy arrays down the GPU code path (with on_cpu, to the emulated kernels): on_gpu says
    yes, and the GPU has tensor cores (float16 attention takes kernels/attention_tc.cu)."""
    patch.setattr(cuda, "has_tensor_cores", lambda: True)
    patch.setattr(ops, "on_gpu", lambda x: True)


MODELS = {  # name: (model, its inputs, the call, the kernels it must launch, its attention head dims)
    "unet": (
        lambda: UNet2DConditionModel(SMALL_UNET),
        lambda rng: (
            rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
            rng.standard_normal((2, 77, 128), dtype=np.float32),
        ),
        lambda m, sample, context: m(sample, 981, context),
        {"im2col", "group_norm", "layer_norm", "silu", "geglu"},
        (40, 80),
    ),
    "text": (
        lambda: CLIPTextModel(SMALL_TEXT),
        lambda rng: (rng.integers(0, 49408, (2, 77)),),
        lambda m, ids: m(ids),
        {"layer_norm", "silu"},
        (64,),
    ),
    "vae": (
        lambda: AutoencoderKL(SMALL_VAE),
        lambda rng: (rng.standard_normal((1, 4, 8, 8), dtype=np.float32),),
        lambda m, latents: m.decode(latents),
        {"im2col", "group_norm", "silu"},
        (64,),
    ),
}


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 3e-3)])
@pytest.mark.parametrize("name", MODELS)
def test_models_down_the_gpu_code_path(on_cpu, emulated, monkeypatch, name, dtype, tolerance):
    """Each model with every kernel dispatch taken (emulated) against the plain NumPy float32
    path, as tests/test_gpu.py compares CuPy with NumPy: within 1e-5 in float32, 3e-3 in float16;
    and the kernels it must use were launched."""
    build, make_inputs, call, kernels, head_dims = MODELS[name]
    module, inputs = build(), make_inputs(np.random.default_rng(6))
    weights = random_weights(module)
    reference = call(place(module, weights, Backend("numpy", "float32")), *inputs)
    backend = Backend("numpy", dtype)
    inputs = [backend.asarray(x) if x.dtype == np.float32 else x for x in inputs]
    for kernel_module in emulated.values():
        kernel_module.launched.clear()
    with monkeypatch.context() as patch:
        take_gpu_code_path(patch)
        result = call(place(module, weights, backend), *inputs)
    assert result.dtype == dtype and np.isfinite(result).all()
    assert kernel_checks.relative_error(result, reference) <= tolerance
    suffix = cuda.DTYPE_NAMES[np.dtype(dtype)]
    attention = {f"attention_{'tc' if dtype == 'float16' else suffix}_d{head_dim}" for head_dim in head_dims}
    launched = set().union(*(kernel_module.launched for kernel_module in emulated.values()))
    assert launched == {f"{kernel}_{suffix}" for kernel in kernels} | attention
