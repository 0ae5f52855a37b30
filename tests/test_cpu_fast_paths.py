"""The CPU floor (cpu.py) and the plain equations (nn.py) checked against PyTorch: Winograd
convolutions, attention in blocks of heads and query rows, the blocked activations and norms,
the work-sharing helper, the process tuning, and tiled VAE decoding (against diffusers' own
tiled decode). Each is compared with torch in float64 on shapes that make the fast path split
its work unevenly; tests/test_fast_paths.py compares each fast path with its plain twin."""

import math

import numpy as np
import pytest

from helpers import relative_error, require_reference
from minisd import cpu, nn, winograd
from minisd.backend import Backend
from minisd.layers import Conv2d
from minisd.weights import load_component

require_reference()  # skips the module, saying why, without torch/diffusers/transformers
from reference import TINY_VAE, randomize, to_numpy  # noqa: E402

pytestmark = pytest.mark.reference

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def conv_case(rng, batch, channels, out_channels, height, width):
    x = rng.standard_normal((batch, channels, height, width), dtype=np.float32)
    weight = rng.standard_normal((out_channels, channels, 3, 3), dtype=np.float32) / np.float32(np.sqrt(9 * channels))
    return x, weight, rng.standard_normal(out_channels, dtype=np.float32)


@pytest.mark.parametrize("algorithm", [winograd.F2, winograd.F4], ids=["F2x2", "F4x4"])
@pytest.mark.parametrize(
    "strip_elements", [winograd.STRIP_ELEMENTS, 2 * 36 * 16 * 12], ids=["whole-images", "row-strips"]
)
@pytest.mark.parametrize(
    "shape",
    [(1, 3, 5, 2, 3), (3, 6, 7, 9, 13), (2, 16, 8, 33, 47), (1, 256, 32, 32, 40)],
    ids=["tiny-odd", "batch3-odd", "odd-33x47", "256ch"],
)
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
    layer = Conv2d(256, 16, 3, padding=1)
    cases = [((2, 32, 33), winograd.F4), ((2, 16, 16), winograd.F2), ((1, 16, 16), None), ((2, 8, 8), None)]
    for (batch, height, width), algorithm in cases:
        x, layer.weight, layer.bias = conv_case(rng, batch, 256, 16, height, width)
        assert cpu.winograd_algorithm(x) is algorithm
        theirs = torch.nn.functional.conv2d(
            *(torch.from_numpy(a).double() for a in (x, layer.weight, layer.bias)), padding=1
        )
        assert relative_error(layer(x), theirs.numpy()) <= TOLERANCE
    assert [(u.shape, algorithm) for u, algorithm in received] == [
        ((36, 16, 256), winograd.F4),
        ((16, 16, 256), winograd.F2),
    ]
    assert cpu.winograd_algorithm(np.zeros((2, 32, 64, 64), np.float32)) is None  # too few channels


@pytest.mark.parametrize(
    "batch,heads,q_len,k_len,masked,scale",
    [
        (2, 8, 300, 300, False, 1),
        (1, 1, 1030, 1030, False, 1),
        (3, 5, 77, 77, True, 1),
        (2, 4, 513, 77, False, 1),
        (2, 4, 300, 77, False, 30),
    ],
)
@pytest.mark.parametrize("attention", [nn.attention, cpu.attention], ids=["plain", "fast"])
def test_attention_equals_torch(torch, monkeypatch, attention, batch, heads, q_len, k_len, masked, scale):
    """scale 30: scores of several hundred, where exp overflows unless each row's max is subtracted
    (smaller ones let the fast attention skip that pass)."""
    monkeypatch.setattr(cpu, "ATTENTION_SCORES", 4096)  # many small query chunks per head
    rng = np.random.default_rng(2)
    q = scale * rng.standard_normal((batch, q_len, heads * 8), dtype=np.float32)
    k, v = (rng.standard_normal((batch, k_len, heads * 8), dtype=np.float32) for _ in range(2))
    k *= scale
    mask = np.triu(np.full((q_len, k_len), -np.inf, np.float32), 1) if masked else None
    ours = attention(q, k, v, heads, mask)

    def heads_first(a):
        return torch.from_numpy(a).double().view(batch, a.shape[1], heads, 8).transpose(1, 2)

    theirs = torch.nn.functional.scaled_dot_product_attention(
        heads_first(q), heads_first(k), heads_first(v), is_causal=masked
    )
    assert relative_error(ours, theirs.transpose(1, 2).reshape(batch, q_len, -1).numpy()) <= TOLERANCE


@pytest.mark.parametrize("floor", [nn, cpu], ids=["plain", "fast"])
def test_activations_and_norms_equal_torch(torch, floor):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 64, 33, 35), dtype=np.float32) * 4
    x.flat[:6] = [-30, -10, -5, 0, 5, 30]  # GELU's tails
    view = x[:, ::2]  # not contiguous: blocks are cut from strided rows
    weight, bias = 1 + 0.1 * rng.standard_normal(32, dtype=np.float32), rng.standard_normal(32, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(view)).double()
    functional = torch.nn.functional
    pairs = [
        (floor.gelu(view), functional.gelu(t)),
        (floor.silu(view), functional.silu(t)),
        (floor.quick_gelu(view), t * torch.sigmoid(1.702 * t)),
        (
            floor.group_norm(view, 8, weight, bias, 1e-5),
            functional.group_norm(t, 8, torch.from_numpy(weight).double(), torch.from_numpy(bias).double(), 1e-5),
        ),
        (floor.geglu(view[..., :34]), view_halves_geglu(t[..., :34], functional)),
        (
            floor.layer_norm(view, weight[:1].repeat(35), bias[:1].repeat(35), 1e-5),
            functional.layer_norm(
                t,
                (35,),
                torch.from_numpy(weight[:1].repeat(35)).double(),
                torch.from_numpy(bias[:1].repeat(35)).double(),
                1e-5,
            ),
        ),
    ]
    for ours, theirs in pairs:
        assert ours.shape == tuple(theirs.shape)
        assert relative_error(ours, theirs.numpy()) <= 1e-6
    tail = [-12.0, -10.0, -5.0]  # x·Φ(x) = x·½·erfc(-x/√2), tiny: torch's float64 1 + erf(x/√2) cancels to 0
    np.testing.assert_allclose(
        floor.gelu(np.array(tail, np.float32)),
        [x * 0.5 * math.erfc(-x / math.sqrt(2)) for x in tail],
        rtol=1e-5,
        atol=0,
    )


def view_halves_geglu(t, functional):
    """diffusers' GEGLU after its projection: the first half of the last axis times GELU(second)."""
    hidden, gate = t.chunk(2, dim=-1)
    return hidden * functional.gelu(gate)


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
    layer = Conv2d(256, 8, 3, padding=1)
    layer.weight, layer.bias = weight.astype(np.float16), bias
    out = layer(x)
    assert out.dtype == np.float32 and received[0][0].dtype == np.float32
    rounded = torch.from_numpy(weight.astype(np.float16).astype(np.float64))
    theirs = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), rounded, torch.from_numpy(bias).double(), padding=1
    )
    assert relative_error(out, theirs.numpy()) <= TOLERANCE
