"""The CPU speed work checked against PyTorch: Winograd convolutions, attention in blocks of heads
and query rows, the blocked elementwise activations and norms, the work-sharing helper, and
tiled VAE decoding (against diffusers' own tiled decode). Each fast path is compared with
torch in float64 on shapes that make it split its work unevenly."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import minisd
from conftest import require_reference
from minisd import nn, parallel, winograd
from minisd.backend import Backend
from minisd.weights import load_component

from reference import TINY_VAE, randomize, relative_error, to_numpy

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def torch():
    require_reference()
    import torch

    return torch


def conv_case(rng, batch, channels, out_channels, height, width):
    x = rng.standard_normal((batch, channels, height, width), dtype=np.float32)
    weight = rng.standard_normal((out_channels, channels, 3, 3), dtype=np.float32) / np.float32(np.sqrt(9 * channels))
    return x, weight, rng.standard_normal(out_channels, dtype=np.float32)


@pytest.mark.parametrize("algorithm", [winograd.F2, winograd.F4], ids=["F2x2", "F4x4"])
def test_winograd_matrices_compute_a_correlation_exactly(algorithm):
    """Aᵀ [(G g) ⊙ (Bᵀ d)] is the 1-D correlation of a patch row d with a 3-tap kernel g: its
    outputs are d[i:i+3] · g (checked in float64, where only rounding separates the two)."""
    rng = np.random.default_rng(9)
    patch_t, kernel_t, output_t = (np.array(m) for m in (algorithm.patch_transform, algorithm.kernel_transform,
                                                          algorithm.output_transform))  # fmt: skip
    for _ in range(5):
        d, g = rng.standard_normal(algorithm.patch), rng.standard_normal(3)
        direct = [d[i : i + 3] @ g for i in range(algorithm.tile)]
        np.testing.assert_allclose(output_t @ ((kernel_t @ g) * (patch_t @ d)), direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", [winograd.F2, winograd.F4], ids=["F2x2", "F4x4"])
@pytest.mark.parametrize("strip_elements", [winograd.STRIP_ELEMENTS, 2 * 36 * 16 * 12],
                         ids=["whole-images", "row-strips"])  # fmt: skip
@pytest.mark.parametrize("shape", [(1, 3, 5, 2, 3), (3, 6, 7, 9, 13), (2, 16, 8, 33, 47), (1, 256, 32, 32, 40)],
                         ids=["tiny-odd", "batch3-odd", "odd-33x47", "256ch"])  # fmt: skip
def test_winograd_conv3x3_equals_torch(torch, monkeypatch, shape, strip_elements, algorithm):
    monkeypatch.setattr(winograd, "STRIP_ELEMENTS", strip_elements)  # small: a few tile rows of odd-33x47 per strip
    x, weight, bias = conv_case(np.random.default_rng(0), *shape)
    ours = winograd.conv3x3(x, winograd.transform_kernels(weight, algorithm), bias, algorithm)
    theirs = torch.nn.functional.conv2d(*(torch.from_numpy(a).double() for a in (x, weight, bias)), padding=1)
    assert ours.shape == theirs.shape
    assert relative_error(ours, theirs.numpy()) <= TOLERANCE


def spy_on_winograd(monkeypatch):
    """(kernels, algorithm) of each winograd.conv3x3 call, in call order."""
    received, conv3x3 = [], winograd.conv3x3

    def spied(x, u, bias, algorithm):
        received.append((u, algorithm))
        return conv3x3(x, u, bias, algorithm)

    monkeypatch.setattr(winograd, "conv3x3", spied)
    return received


def test_conv_layer_takes_winograd_where_it_pays(torch, monkeypatch):
    received = spy_on_winograd(monkeypatch)
    rng = np.random.default_rng(1)
    layer = nn.Conv2d(256, 16, 3, padding=1)
    cases = [((2, 32, 33), winograd.F4), ((2, 16, 16), winograd.F2), ((1, 16, 16), None), ((2, 8, 8), None)]
    for (batch, height, width), algorithm in cases:
        x, layer.weight, layer.bias = conv_case(rng, batch, 256, 16, height, width)
        assert nn.winograd_algorithm(x) is algorithm
        theirs = torch.nn.functional.conv2d(*(torch.from_numpy(a).double() for a in (x, layer.weight, layer.bias)),
                                            padding=1)  # fmt: skip
        assert relative_error(layer(x), theirs.numpy()) <= TOLERANCE
    assert [(u.shape, algorithm) for u, algorithm in received] == [((36, 16, 256), winograd.F4),
                                                                  ((16, 16, 256), winograd.F2)]  # fmt: skip
    assert nn.winograd_algorithm(np.zeros((2, 32, 64, 64), np.float32)) is None  # too few channels


@pytest.mark.parametrize("batch,heads,q_len,k_len,masked,scale",
                         [(2, 8, 300, 300, False, 1), (1, 1, 1030, 1030, False, 1), (3, 5, 77, 77, True, 1),
                          (2, 4, 513, 77, False, 1), (2, 4, 300, 77, False, 30)])  # fmt: skip
def test_attention_in_blocks_equals_torch(torch, monkeypatch, batch, heads, q_len, k_len, masked, scale):
    """scale 30: scores of several hundred, where exp overflows unless each row's max is subtracted
    (smaller ones let attention skip that pass)."""
    monkeypatch.setattr(nn, "ATTENTION_SCORES_CPU", 4096)  # many small query chunks per head
    rng = np.random.default_rng(2)
    q = scale * rng.standard_normal((batch, q_len, heads * 8), dtype=np.float32)
    k, v = (rng.standard_normal((batch, k_len, heads * 8), dtype=np.float32) for _ in range(2))
    k *= scale
    mask = np.triu(np.full((q_len, k_len), -np.inf, np.float32), 1) if masked else None
    ours = nn.attention(q, k, v, heads, mask)

    def heads_first(a):
        return torch.from_numpy(a).double().view(batch, a.shape[1], heads, 8).transpose(1, 2)

    theirs = torch.nn.functional.scaled_dot_product_attention(
        heads_first(q), heads_first(k), heads_first(v), is_causal=masked
    )  # fmt: skip
    assert relative_error(ours, theirs.transpose(1, 2).reshape(batch, q_len, -1).numpy()) <= TOLERANCE


def test_activations_and_norms_in_blocks_equal_torch(torch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 64, 33, 35), dtype=np.float32) * 4
    x.flat[:6] = [-30, -10, -5, 0, 5, 30]  # GELU's tails
    view = x[:, ::2]  # not contiguous: blocks are cut from strided rows
    weight, bias = 1 + 0.1 * rng.standard_normal(32, dtype=np.float32), rng.standard_normal(32, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(view)).double()
    functional = torch.nn.functional
    pairs = [
        (nn.gelu(view), functional.gelu(t)),
        (nn.silu(view), functional.silu(t)),
        (nn.quick_gelu(view), t * torch.sigmoid(1.702 * t)),
        (nn.group_norm(view, 8, weight, bias, 1e-5),
         functional.group_norm(t, 8, torch.from_numpy(weight).double(), torch.from_numpy(bias).double(), 1e-5)),
        (nn.geglu(view[..., :34]), view_halves_geglu(t[..., :34], functional)),
        (nn.layer_norm(view, weight[:1].repeat(35), bias[:1].repeat(35), 1e-5),
         functional.layer_norm(t, (35,), torch.from_numpy(weight[:1].repeat(35)).double(),
                               torch.from_numpy(bias[:1].repeat(35)).double(), 1e-5)),
    ]  # fmt: skip
    for ours, theirs in pairs:
        assert ours.shape == tuple(theirs.shape)
        assert relative_error(ours, theirs.numpy()) <= 1e-6
    tail = [-12.0, -10.0, -5.0]  # x·Φ(x) = x·½·erfc(-x/√2), tiny: torch's float64 1 + erf(x/√2) cancels to 0
    np.testing.assert_allclose(nn.gelu(np.array(tail, np.float32)), [x * 0.5 * math.erfc(-x / math.sqrt(2)) for x in tail],
                               rtol=1e-5, atol=0)  # fmt: skip


def view_halves_geglu(t, functional):
    """diffusers' GEGLU after its projection: the first half of the last axis times GELU(second)."""
    hidden, gate = t.chunk(2, dim=-1)
    return hidden * functional.gelu(gate)


def test_in_blocks_covers_every_item_once_and_reraises():
    seen = np.zeros(1001, int)

    def work(items):
        seen[items] += 1
        parallel.in_blocks(lambda inner: None, 3, 1, seen)  # nested: runs inline, no deadlock

    parallel.in_blocks(work, 1001, parallel.BLOCK_ELEMENTS // 7, seen)
    assert (seen == 1).all()

    def fail(items):
        raise ValueError(f"block {items.start}")

    with pytest.raises(ValueError, match="block"):
        parallel.in_blocks(fail, 100, parallel.BLOCK_ELEMENTS, seen)


BLAS_TIMEOUT_PROBE = """
import ctypes, numpy as np
from threadpoolctl import ThreadpoolController
a = np.random.default_rng(0).standard_normal((300, 300))
a @ a  # OpenBLAS's threads exist before minisd sets anything
from minisd.backend import Backend
Backend("numpy")
blas = ThreadpoolController().select(internal_api="openblas").lib_controllers[0]
print(ctypes.CDLL(blas.filepath).openblas_thread_timeout(), blas.num_threads)
print(float(np.abs(a @ a - np.einsum("ij,jk->ik", a, a)).max()))
"""
BLAS_THREADS_ALONE = """
import numpy
from threadpoolctl import ThreadpoolController
print(ThreadpoolController().select(internal_api="openblas").lib_controllers[0].num_threads)
"""


@pytest.mark.parametrize("users_setting", [None, "12"])
def test_idle_blas_threads_sleep_unless_the_user_says(users_setting):
    """OpenBLAS was loaded by NumPy before minisd: it reads OPENBLAS_THREAD_TIMEOUT again (its own
    report of the value, openblas_thread_timeout), keeps its thread count, and its threads, started
    again, still multiply right (against einsum's own loop). A user's value is left as it is."""
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
    if users_setting:
        env["OPENBLAS_THREAD_TIMEOUT"] = users_setting

    def run(code):
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout

    (timeout, threads), (error,) = (line.split() for line in run(BLAS_TIMEOUT_PROBE).splitlines())
    assert int(timeout) == int(users_setting or minisd.backend.BLAS_THREAD_TIMEOUT)
    assert threads == run(BLAS_THREADS_ALONE).strip()
    assert float(error) < 1e-9


# ---------------------------------------------------------------- tiled VAE decoding


@pytest.fixture(scope="module")
def vae_pair(torch, tmp_path_factory):
    """A small VAE with 4-latent (32-pixel) tiles, in diffusers and in minisd."""
    from diffusers import AutoencoderKL

    reference = randomize(AutoencoderKL(**{**TINY_VAE, "sample_size": 32}), seed=5)
    folder = tmp_path_factory.mktemp("vae")
    reference.save_pretrained(folder / "vae", safe_serialization=True)
    return reference, load_component(folder, "vae", Backend())


def test_tiled_decode_equals_diffusers(torch, vae_pair):
    reference, vae = vae_pair
    latents = np.random.default_rng(4).standard_normal((1, 4, 10, 13), dtype=np.float32)  # 4 x 5 tiles
    assert vae.tile_latent_size == reference.tile_latent_min_size == 4
    reference.enable_tiling()
    with torch.no_grad():
        theirs = reference.decode(torch.from_numpy(latents)).sample
    ours = vae.decode(latents, tiled=True)
    assert ours.shape == (1, 3, 80, 104)
    assert relative_error(ours, to_numpy(theirs)) <= TOLERANCE


def test_tiled_decode_has_no_seams(monkeypatch):
    """The embedded model's pictures (a 2 x 2 mosaic of their latents: 16 x 16 latents, tiles of
    8 starting every 6) decoded in tiles: where one tile hands over to the next, the picture
    changes no more than it does elsewhere. Without the blend the tile borders jump out.

    Tiling is not the untiled decode: each tile's GroupNorms see only the tile. For this small
    VAE that changes the colours a lot (PSNR about 13 dB against the untiled picture); a seam
    would show as a jump at the border, and there is none."""
    pipe = minisd.load(minisd.default_model_folder())
    prompts = ["a red circle on a white background", "a blue square on a black background",
               "a green triangle on a white background", "a yellow circle on a black background"]  # fmt: skip
    latents = [list(pipe.denoise(p, steps=10, seed=i))[-1].latents for i, p in enumerate(prompts)]
    mosaic = np.concatenate([np.concatenate(latents[:2], axis=3), np.concatenate(latents[2:], axis=3)], axis=2)
    mosaic /= pipe.vae.config.scaling_factor  # (1, 4, 16, 16)
    keep = 48  # each 64-pixel tile keeps 64 - 16 blended pixels

    def border_jump(images):
        rows = np.abs(np.diff(images, axis=2)).mean(axis=(0, 1, 3))  # change from each row to the next
        cols = np.abs(np.diff(images, axis=3)).mean(axis=(0, 1, 2))
        borders = [rows[keep - 1], rows[2 * keep - 1], cols[keep - 1], cols[2 * keep - 1]]
        return max(borders) / np.median(np.concatenate([rows, cols]))

    tiled = pipe.vae.decode(mosaic, tiled=True)
    assert tiled.shape == pipe.vae.decode(mosaic).shape == (1, 3, 128, 128)
    assert border_jump(tiled) < 2
    monkeypatch.setattr("minisd.vae.blend", lambda *args, **kwargs: None)
    assert border_jump(pipe.vae.decode(mosaic, tiled=True)) > 5  # the check sees seams where there are some


# ---------------------------------------------------------------- float16 weights, float32 compute


def rounded_to_float16(module):
    """A copy of a torch module whose linear and convolution weights are rounded to float16."""
    import copy

    import torch

    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            layer.weight.data = layer.weight.data.half().float()
    return module


def test_float16_weights_compute_in_float32(torch, tiny):
    """weights_dtype="float16": the matrices and kernels are stored in float16, norms and
    embeddings stay float32, and everything is computed in float32, which diffusers, given the
    same rounded weights, confirms."""
    folder, (text_encoder, unet, _) = tiny
    backend = Backend("numpy", "float32", weights_dtype="float16")
    ours = load_component(folder, "unet", backend)
    assert ours.conv_in.weight.dtype == np.float16 and ours.conv_norm_out.weight.dtype == np.float32
    rng = np.random.default_rng(7)
    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    context = rng.standard_normal((2, 77, 32), dtype=np.float32)
    noise = ours(sample, 981, context)
    assert noise.dtype == np.float32
    with torch.no_grad():
        theirs = rounded_to_float16(unet)(torch.from_numpy(sample), 981, torch.from_numpy(context)).sample
    assert relative_error(noise, to_numpy(theirs)) <= TOLERANCE
    text = load_component(folder, "text_encoder", backend)
    ids = np.array([[49406, 320, 1929, 49407] + [49407] * 73])
    with torch.no_grad():
        expected = rounded_to_float16(text_encoder)(torch.from_numpy(ids)).last_hidden_state
    assert relative_error(text(ids), to_numpy(expected)) <= TOLERANCE


def test_float16_kernels_through_winograd(torch, monkeypatch):
    received = spy_on_winograd(monkeypatch)
    rng = np.random.default_rng(8)
    x, weight, bias = conv_case(rng, 1, 256, 8, 32, 32)
    layer = nn.Conv2d(256, 8, 3, padding=1)
    layer.weight, layer.bias = weight.astype(np.float16), bias
    out = layer(x)
    assert out.dtype == np.float32 and received[0][0].dtype == np.float32
    rounded = torch.from_numpy(weight.astype(np.float16).astype(np.float64))
    theirs = torch.nn.functional.conv2d(torch.from_numpy(x).double(), rounded, torch.from_numpy(bias).double(), padding=1)
    assert relative_error(out, theirs.numpy()) <= TOLERANCE
