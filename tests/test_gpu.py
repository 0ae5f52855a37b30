"""GPU tier: the CuPy backend against the NumPy backend (skipped, with the reason, without a GPU).

Same weights, same inputs, float32 on both sides: relative L2 error <= 1e-5 per component, and
the same picture for the same seed.
"""

from pathlib import Path

import numpy as np
import pytest

import minisd
from minisd.backend import Backend
from minisd.bench import place, random_unet
from minisd.unet import UNetConfig
from minisd.weights import load_component

cupy = pytest.importorskip("cupy", reason="GPU tier needs CuPy and an NVIDIA GPU: pip install -e '.[gpu]'")
try:
    cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError as error:
    pytest.skip(f"GPU tier needs an NVIDIA GPU: {error}", allow_module_level=True)

FOLDER = Path(__file__).parent / "fixtures" / "tiny-sd"
CPU, GPU = Backend("numpy", "float32"), Backend("cupy", "float32")


def relative_error(actual, reference):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(actual - reference) / np.linalg.norm(reference)


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


def test_full_size_unet_64x64():
    """SD 1.5's UNet (random weights), one guidance step at 512×512: CuPy fp32 == NumPy fp32."""
    config = UNetConfig()
    unet, weights = random_unet(config)
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((2, 4, 64, 64), dtype=np.float32)
    context = rng.standard_normal((2, 77, 768), dtype=np.float32)
    cpu = place(unet, weights, CPU)(sample, 981, context)
    gpu = place(unet, weights, GPU)(GPU.asarray(sample), 981, GPU.asarray(context))
    assert relative_error(GPU.to_host(gpu), cpu) <= 1e-5
