"""GPU tier: the CuPy backend against the NumPy backend (skipped, with the reason, without a GPU).

Same weights, same inputs: CuPy float32 within 1e-5 relative L2 of NumPy float32 per component
and the same picture for the same seed; CuPy float16 within 3e-3 at the full SD sizes, no
NaN/Inf, and pictures within PSNR 35 dB; the attention kernel against a float64 reference.
"""

from pathlib import Path

import numpy as np
import pytest

import kernel_checks
import minisd
from helpers import relative_error
from minisd import cuda, ops
from minisd.backend import Backend
from minisd.clip import CLIPTextConfig, CLIPTextModel
from minisd.random_model import place, random_weights
from minisd.unet import UNet2DConditionModel, UNetConfig
from minisd.vae import AutoencoderKL, VAEConfig
from minisd.weights import load_component

pytestmark = pytest.mark.gpu

cupy = pytest.importorskip("cupy", reason="GPU tier needs CuPy and an NVIDIA GPU: pip install -e '.[gpu]'")
try:
    cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError as error:
    pytest.skip(f"GPU tier needs an NVIDIA GPU: {error}", allow_module_level=True)

FOLDER = Path(__file__).parent / "fixtures" / "tiny-sd"
CPU, GPU, GPU16 = Backend("numpy", "float32"), Backend("cupy", "float32"), Backend("cupy", "float16")
SD2_UNET = dict(attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, cross_attention_dim=1024)


def on_both(name, call, *inputs):
    """Run `call(component, *inputs)` with the component loaded on each backend; host results."""
    results = []
    for backend in (CPU, GPU):
        component = load_component(FOLDER, name, backend)
        output = call(component, *(backend.asarray(x, x.dtype) for x in inputs))
        results.append(backend.to_host(output))
    return results


def test_text_encoder():
    ids = minisd.load(FOLDER).tokenizer.encode(["a red circle on a white background", ""])
    ours, theirs = on_both("text_encoder", lambda model, ids: model(ids), ids)
    assert relative_error(theirs, ours) <= 1e-5


def test_unet():
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 6, 10), dtype=np.float32)
    context = rng.standard_normal((2, 77, 32), dtype=np.float32)
    cpu, gpu = on_both("unet", lambda model, s, c: model(s, 501, c), sample, context)
    assert relative_error(gpu, cpu) <= 1e-5


def test_vae():
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 6), dtype=np.float32)
    cpu, gpu = on_both("vae", lambda model, z: model.decode(z), latents)
    assert relative_error(gpu, cpu) <= 1e-5
    images = np.random.default_rng(2).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32)
    cpu, gpu = on_both("vae", lambda model, x: model.encode(x)[0], images)
    assert relative_error(gpu, cpu) <= 1e-5


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
def test_same_seed_same_picture(scheduler):
    options = dict(steps=8, seed=11, scheduler=scheduler, eta=0.5 if scheduler == "ddim" else 0.0, progress=False)
    cpu = np.asarray(minisd.load(FOLDER, "numpy")("a blue square", **options), np.int16)
    gpu = np.asarray(minisd.load(FOLDER, "cupy")("a blue square", **options), np.int16)
    assert np.abs(gpu - cpu).max() <= 1


# ---------------------------------------------------------------- full SD sizes, fp32 and fp16


def compare_full_size(module, inputs, call, backend):
    """Run `call(module, *inputs)` with random weights on NumPy fp32 and on `backend`."""
    weights = random_weights(module)
    reference = call(place(module, weights, CPU), *inputs)
    device_inputs = [backend.asarray(x, backend.dtype if x.dtype == np.float32 else x.dtype) for x in inputs]
    result = backend.to_host(call(place(module, weights, backend), *device_inputs)).astype(np.float32)
    assert np.isfinite(result).all(), "NaN or Inf in the GPU result"
    return relative_error(result, reference)


@pytest.mark.parametrize("backend, tolerance", [(GPU, 1e-5), (GPU16, 3e-3)], ids=["fp32", "fp16"])
@pytest.mark.parametrize("config", [{}, SD2_UNET], ids=["sd1", "sd2"])
def test_full_size_unet_64x64(backend, tolerance, config):
    """SD 1.5 / SD 2 UNets (random weights), one guidance step at 512×512 (batch 2)."""
    config = UNetConfig(**config)
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((2, 4, 64, 64), dtype=np.float32)
    context = rng.standard_normal((2, 77, config.cross_attention_dim), dtype=np.float32)
    error = compare_full_size(UNet2DConditionModel(config), (sample, context), lambda m, s, c: m(s, 981, c), backend)
    assert error <= tolerance


@pytest.mark.parametrize("backend, tolerance", [(GPU, 1e-5), (GPU16, 3e-3)], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "config",
    [
        {},
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu"),
    ],
    ids=["sd1", "sd2"],
)
def test_full_size_text_encoder(backend, tolerance, config):
    ids = np.random.default_rng(4).integers(0, 49408, (2, 77))
    error = compare_full_size(CLIPTextModel(CLIPTextConfig(**config)), (ids,), lambda m, i: m(i), backend)
    assert error <= tolerance


@pytest.mark.parametrize("backend, tolerance", [(GPU, 1e-5), (GPU16, 3e-3)], ids=["fp32", "fp16"])
def test_full_size_vae(backend, tolerance):
    rng = np.random.default_rng(5)
    latents = rng.standard_normal((1, 4, 32, 32), dtype=np.float32)
    images = rng.uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    vae = AutoencoderKL(VAEConfig())
    assert compare_full_size(vae, (latents,), lambda m, z: m.decode(z), backend) <= tolerance
    assert compare_full_size(vae, (images,), lambda m, x: m.encode(x)[0], backend) <= tolerance


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse) if mse else np.inf


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
def test_fp16_picture_close_to_numpy(scheduler):
    options = dict(steps=10, seed=12, scheduler=scheduler, progress=False)
    cpu = minisd.load(FOLDER, "numpy")("a green triangle on a black background", **options)
    gpu = minisd.load(FOLDER, "cupy", "float16")("a green triangle on a black background", **options)
    assert psnr(gpu, cpu) >= 35


# ---------------------------------------------------------------- the attention kernel


# every head dim at the short lengths; 4096 tokens (a slow float64 reference) for head dims 40 and 64
SHAPES = [(d, lengths) for d in cuda.ATTENTION_HEAD_DIMS for lengths in [(300, 77), (77, 77), (33, 130)]]
SHAPES += [(40, (4096, 4096)), (64, (4096, 4096))]


@pytest.mark.parametrize(
    "dtype, tolerance, tensor_cores",
    [("float32", 1e-5, False), ("float16", 2e-3, False), ("float16", 2e-3, True)],
    ids=["float32", "float16", "float16-tensor-cores"],
)
@pytest.mark.parametrize("head_dim, lengths", SHAPES, ids=[f"d{d}-{q}x{k}" for d, (q, k) in SHAPES])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_attention_kernel_against_float64(dtype, tolerance, tensor_cores, head_dim, lengths, masked):
    if tensor_cores and not cuda.has_tensor_cores():
        pytest.skip("kernels/attention_tc.cu needs an Ampere (sm_80) or later GPU")
    kernel_checks.check_attention(cupy, dtype, tolerance, head_dim, lengths, masked, tensor_cores)


def test_float16_attention_picks_tensor_cores():
    """On Ampere and later, float16 attention runs kernels/attention_tc.cu: the same result as
    asking for it by name, bit for bit."""
    rng = np.random.default_rng(5)
    q, k, v = (cupy.asarray(rng.standard_normal((2, 100, 2 * 40)), dtype=cupy.float16) for _ in range(3))
    chosen = ops.attention(q, k, v, heads=2)
    named = cuda.attention(q, k, v, 2, tensor_cores=cuda.has_tensor_cores())
    assert bool((chosen == named).all())


def test_uncovered_head_dim_uses_plain_cupy():
    """Head dim 16 (the tiny model's) is not in the kernel: ops.attention runs nn.attention in CuPy."""
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal((1, 50, 32)).astype(np.float32) for _ in range(3))
    assert not cuda.attention_supported(cupy.asarray(q), cupy.asarray(k), 2)
    result = ops.attention(*(cupy.asarray(x) for x in (q, k, v)), heads=2).get()
    assert relative_error(result, kernel_checks.reference_attention(q, k, v, 2, None)) <= 1e-5


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 3e-3)])
def test_fused_kernels_against_numpy(dtype, tolerance):
    """kernels/fused.cu's GroupNorm, LayerNorm, GEGLU, SiLU and quick GELU at SD 1.5 sizes."""
    kernel_checks.check_fused(cupy, dtype, tolerance, channels=640, pixels=32, tokens=300)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_im2col_kernel_against_numpy(dtype):
    """kernels/im2col.cu at SD sizes: a 3×3 convolution's columns, stride 1 and 2 (downsampling)."""
    kernel_checks.check_im2col(cupy, dtype, (2, 320, 64, 64), 3, 1, 1)
    kernel_checks.check_im2col(cupy, dtype, (2, 640, 32, 32), 3, 2, 1)
