"""Every fast path against its plain twin, NumPy only (the fast tier): cpu.py's function of each
name against nn.py's, on odd sizes, masks, float16 weights and inputs, and values that stress
attention's overflow bound; ops.py's choice between them; the whole embedded model's picture
both ways; and the CPU floor's helpers (Winograd's matrices, the block splitter, the process
tuning). tests/test_cpu_fast_paths.py checks both floors against PyTorch."""

import os
import subprocess
import sys

import numpy as np
import pytest

import minisd
from helpers import relative_error
from minisd import cpu, nn, ops, parallel, winograd

RNG = np.random.default_rng(20)


def randn(*shape, scale=1.0, dtype=np.float32):
    return (scale * RNG.standard_normal(shape)).astype(dtype)


def close(fast, plain, tolerance=1e-5):
    assert fast.shape == plain.shape and fast.dtype == plain.dtype
    assert relative_error(fast, plain) <= tolerance


# ---------------------------------------------------------------- convolutions

CONVOLUTIONS = {  # (input shape, (C_out, kernel size, stride, padding)) and the path it takes
    "1x1": ((2, 5, 7, 9), (3, 1, 1, 0)),
    "odd-3x3": ((3, 6, 9, 13), (4, 3, 1, 1)),
    "stride2": ((2, 5, 9, 8), (6, 3, 2, 1)),
    "stride2-pad0": ((1, 4, 7, 7), (3, 3, 2, 0)),
    "2x2-kernel": ((2, 3, 5, 6), (2, 2, 1, 0)),
    "winograd-F4": ((1, 64, 33, 35), (8, 3, 1, 1)),
    "winograd-F2": ((2, 64, 16, 17), (8, 3, 1, 1)),
}


@pytest.mark.parametrize("weights_dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", CONVOLUTIONS)
def test_conv2d(case, weights_dtype):
    shape, (out_channels, size, stride, padding) = CONVOLUTIONS[case]
    x = randn(*shape)
    weight = randn(out_channels, shape[1], size, size, scale=1 / np.sqrt(shape[1] * size * size), dtype=weights_dtype)
    bias = randn(out_channels)
    close(cpu.conv2d(x, weight, bias, stride, padding), nn.conv2d(x, weight, bias, stride, padding))


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_in_strips(monkeypatch, stride):
    """A map too large for one set of columns is convolved a strip of rows at a time."""
    monkeypatch.setattr(cpu, "CONV_COLUMN_ELEMENTS", 500)  # a few output rows per strip
    x, weight, bias = randn(2, 4, 13, 11), randn(5, 4, 3, 3), randn(5)
    strips = []
    monkeypatch.setattr(cpu, "padded_rows", lambda *args, real=cpu.padded_rows: strips.append(1) or real(*args))
    close(cpu.conv2d(x, weight, bias, stride, 1), nn.conv2d(x, weight, bias, stride, 1))
    assert len(strips) > 2


def test_winograd_choice():
    assert cpu.winograd_algorithm(randn(2, 64, 32, 32)) is winograd.F4
    assert cpu.winograd_algorithm(randn(2, 64, 16, 16)) is winograd.F2
    assert cpu.winograd_algorithm(randn(1, 64, 16, 16)) is None  # too few pixels to pay
    assert cpu.winograd_algorithm(randn(2, 32, 64, 64)) is None  # too few channels


# ---------------------------------------------------------------- norms


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float16", 1e-3)])
@pytest.mark.parametrize("shape, groups", [((2, 64, 9, 7), 32), ((1, 6, 5, 3), 3), ((3, 32, 33, 1), 8)])
def test_group_norm(shape, groups, dtype, tolerance):
    x = randn(*shape, scale=3, dtype=dtype) + np.asarray(2, dtype)  # an offset: the mean matters
    weight, bias = 1 + randn(shape[1], scale=0.1), randn(shape[1])
    close(cpu.group_norm(x, groups, weight, bias, 1e-5), nn.group_norm(x, groups, weight, bias, 1e-5), tolerance)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float16", 1e-3)])
@pytest.mark.parametrize("shape", [(2, 77, 64), (1, 3, 5), (4096, 40)])
def test_layer_norm(shape, dtype, tolerance):
    x = randn(*shape, scale=3, dtype=dtype)
    weight, bias = 1 + randn(shape[-1], scale=0.1), randn(shape[-1])
    close(cpu.layer_norm(x, weight, bias, 1e-5), nn.layer_norm(x, weight, bias, 1e-5), tolerance)


def test_norms_of_strided_views():
    x = randn(2, 64, 9, 12)[:, ::2, :, 1::2]  # not contiguous: blocks are cut from strided rows
    weight, bias = 1 + randn(32, scale=0.1), randn(32)
    close(cpu.group_norm(x, 8, weight, bias, 1e-6), nn.group_norm(x, 8, weight, bias, 1e-6), 1e-6)
    weight, bias = 1 + randn(6, scale=0.1), randn(6)
    close(cpu.layer_norm(x, weight, bias, 1e-5), nn.layer_norm(x, weight, bias, 1e-5), 1e-6)


# ---------------------------------------------------------------- attention

ATTENTIONS = {  # batch, heads, query tokens, key tokens, head dim, scale of q and k, mask
    "self-odd": (2, 3, 37, 37, 8, 1, None),
    "cross-77": (2, 4, 65, 77, 40, 1, None),
    "causal": (3, 2, 77, 77, 16, 1, "causal"),
    "random-mask": (1, 2, 30, 45, 8, 1, "random"),
    "overflow-bound": (2, 2, 50, 50, 8, 30, None),  # scores in the hundreds: e^s overflows unshifted
    "single-head-4096": (1, 1, 1030, 1030, 16, 1, None),
}


def attention_case(name, dtype="float32"):
    batch, heads, q_len, k_len, head_dim, scale, mask = ATTENTIONS[name]
    q = randn(batch, q_len, heads * head_dim, scale=scale, dtype=dtype)
    k = randn(batch, k_len, heads * head_dim, scale=scale, dtype=dtype)
    v = randn(batch, k_len, heads * head_dim, dtype=dtype)
    if mask == "causal":
        mask = np.triu(np.full((q_len, k_len), -np.inf, np.float32), 1)
    elif mask == "random":
        mask = np.where(RNG.random((q_len, k_len)) < 0.4, -np.inf, 0).astype(np.float32)
        mask[:, 0] = 0  # every query keeps a key
    return q, k, v, heads, mask


@pytest.mark.parametrize("case", ATTENTIONS)
def test_attention(monkeypatch, case):
    monkeypatch.setattr(cpu, "ATTENTION_SCORES", 4096)  # many query chunks per head
    q, k, v, heads, mask = attention_case(case)
    close(cpu.attention(q, k, v, heads, mask), nn.attention(q, k, v, heads, mask))


def test_attention_overflow_bound_shifts_by_the_max(monkeypatch):
    """Where |q| |k| may exceed SAFE_EXPONENT the fast path subtracts each column's max; below it, it
    skips that pass. Both give the plain softmax: an overflow would be inf or NaN here."""
    q, k, v, heads, _ = attention_case("overflow-bound")
    assert cpu.longest_row(q) * cpu.longest_row(k) * cpu.LOG2_E / np.sqrt(8) > cpu.SAFE_EXPONENT
    out = cpu.attention(q, k, v, heads)
    assert np.isfinite(out).all()
    close(out, nn.attention(q, k, v, heads))
    small_q, small_k = q / 30, k / 30
    assert cpu.longest_row(small_q) * cpu.longest_row(small_k) * cpu.LOG2_E / np.sqrt(8) < cpu.SAFE_EXPONENT
    close(cpu.attention(small_q, small_k, v, heads), nn.attention(small_q, small_k, v, heads))


def test_attention_float16():
    q, k, v, heads, mask = attention_case("causal", "float16")
    close(cpu.attention(q, k, v, heads, mask), nn.attention(q, k, v, heads, mask), 2e-3)


# ---------------------------------------------------------------- activations and upsampling

ACTIVATIONS = ["silu", "quick_gelu", "gelu"]


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(2, 64, 33, 35), (3, 7), (1, 77, 1280)])
def test_activations(name, shape):
    x = randn(*shape, scale=4)
    x.flat[:6] = [-30, -10, -5, 0, 5, 30]  # the tails
    close(getattr(cpu, name)(x), getattr(nn, name)(x), 1e-6)


def test_silu_in_place():
    x = randn(2, 32, 9, 9, scale=3)
    expected = nn.silu(x)
    assert cpu.silu(x, out=x) is x
    close(x, expected, 1e-6)


def test_geglu():
    projected = randn(2, 77, 2 * 96, scale=3)
    close(cpu.geglu(projected), nn.geglu(projected), 1e-6)


@pytest.mark.parametrize("size", [(14, 18), (9, 13)], ids=["doubling", "other"])
def test_upsample_nearest(size):
    x = randn(2, 3, 7, 9)
    np.testing.assert_array_equal(cpu.upsample_nearest(x, size), nn.upsample_nearest(x, size))


# ---------------------------------------------------------------- the choice, and the whole model


def test_fast_paths_off_run_the_plain_equations(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a fast path ran with fast paths off")

    q, k, v, heads, mask = attention_case("causal")
    for name in ("attention", "conv2d", "group_norm", "layer_norm", "silu", "quick_gelu", "gelu", "geglu"):
        monkeypatch.setattr(cpu, name, refuse)
    with ops.fast_paths(False):
        out = ops.attention(q, k, v, heads, mask)
        x = randn(1, 4, 6, 6)
        assert ops.silu(x, out=x) is x
    np.testing.assert_array_equal(out, nn.attention(q, k, v, heads, mask))
    with pytest.raises(AssertionError, match="fast path ran"):
        ops.attention(q, k, v, heads, mask)


def test_the_same_picture_plain_and_fast():
    """The embedded model's pictures on the plain equations alone and on the fast paths: within one
    level of 255 (they differ by float32 rounding only)."""
    prompts = ["a red circle on a white background", "a blue square on a black background"]
    fast, plain = (minisd.load(minisd.default_model_folder(), fast=mode) for mode in (True, False))
    for prompt in prompts:
        pictures = [np.asarray(pipe(prompt, steps=10, seed=4, progress=False), np.int16) for pipe in (fast, plain)]
        assert np.abs(pictures[0] - pictures[1]).max() <= 1


# ---------------------------------------------------------------- the CPU floor's helpers


@pytest.mark.parametrize("algorithm", [winograd.F2, winograd.F4], ids=["F2x2", "F4x4"])
def test_winograd_matrices_compute_a_correlation_exactly(algorithm):
    """Aᵀ [(G g) ⊙ (Bᵀ d)] is the 1-D correlation of a patch row d with a 3-tap kernel g: its
    outputs are d[i:i+3] · g (checked in float64, where only rounding separates the two)."""
    rng = np.random.default_rng(9)
    patch_t, kernel_t, output_t = (
        np.array(m) for m in (algorithm.patch_transform, algorithm.kernel_transform, algorithm.output_transform)
    )
    for _ in range(5):
        d, g = rng.standard_normal(algorithm.patch), rng.standard_normal(3)
        direct = [d[i : i + 3] @ g for i in range(algorithm.tile)]
        np.testing.assert_allclose(output_t @ ((kernel_t @ g) * (patch_t @ d)), direct, rtol=0, atol=1e-12)


def test_in_blocks_covers_every_item_once_and_reraises():
    seen = np.zeros(1001, int)

    def work(items):
        seen[items] += 1
        parallel.in_blocks(lambda inner: None, 3, 1)  # nested: runs inline, no deadlock

    parallel.in_blocks(work, 1001, parallel.BLOCK_ELEMENTS // 7)
    assert (seen == 1).all()

    def fail(items):
        raise ValueError(f"block {items.start}")

    with pytest.raises(ValueError, match="block"):
        parallel.in_blocks(fail, 100, parallel.BLOCK_ELEMENTS)


BLAS_TIMEOUT_PROBE = """
import ctypes, numpy as np
from threadpoolctl import ThreadpoolController
a = np.random.default_rng(0).standard_normal((300, 300))
a @ a  # OpenBLAS's threads exist before minisd sets anything
from minisd import ops
ops.silu(np.ones((4, 4), np.float32))  # the first fast path tunes the process
blas = ThreadpoolController().select(internal_api="openblas").lib_controllers[0]
print(ctypes.CDLL(blas.filepath).openblas_thread_timeout(), blas.num_threads)
print(float(np.abs(a @ a - np.einsum("ij,jk->ik", a, a)).max()))
"""
BLAS_THREADS_ALONE = """
import numpy
from threadpoolctl import ThreadpoolController
print(ThreadpoolController().select(internal_api="openblas").lib_controllers[0].num_threads)
"""


def run_python(code, **variables):
    """stdout of `code` run in a fresh Python, with the environment's OpenBLAS and minisd settings
    replaced by `variables`."""
    names = ("OPENBLAS_THREAD_TIMEOUT", "MINISD_TUNE_PROCESS")
    env = {key: value for key, value in os.environ.items() if key not in names} | variables
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("users_setting", [None, "12"])
def test_idle_blas_threads_sleep_unless_the_user_says(users_setting):
    """OpenBLAS was loaded by NumPy before minisd: when the first fast path runs, it reads
    OPENBLAS_THREAD_TIMEOUT again (its own report of the value, openblas_thread_timeout), keeps its
    thread count, and its threads, started again, still multiply right (against einsum's own
    loop). A user's value is left as it is."""
    env = {"OPENBLAS_THREAD_TIMEOUT": users_setting} if users_setting else {}

    (timeout, threads), (error,) = (line.split() for line in run_python(BLAS_TIMEOUT_PROBE, **env).splitlines())
    assert int(timeout) == int(users_setting or cpu.BLAS_THREAD_TIMEOUT)
    assert threads == run_python(BLAS_THREADS_ALONE, **env).strip()
    assert float(error) < 1e-9


BLAS_TIMEOUT_ALONE = """
import ctypes, numpy
from threadpoolctl import ThreadpoolController
blas = ThreadpoolController().select(internal_api="openblas").lib_controllers[0]
print(ctypes.CDLL(blas.filepath).openblas_thread_timeout())
"""
NOTHING_CHANGES_UNTIL_A_FAST_PATH = """
import os, ctypes, numpy as np
from threadpoolctl import ThreadpoolController
import minisd
from minisd import ops
from minisd.backend import Backend
Backend("numpy")
with ops.fast_paths(False):
    ops.silu(np.ones((4, 4), np.float32))
blas = ThreadpoolController().select(internal_api="openblas").lib_controllers[0]
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), ctypes.CDLL(blas.filepath).openblas_thread_timeout())
ops.silu(np.ones((4, 4), np.float32))
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), ctypes.CDLL(blas.filepath).openblas_thread_timeout())
"""


@pytest.mark.parametrize("tuning", [None, "0"], ids=["default", "turned-off"])
def test_no_process_settings_change_on_import_or_construction(tuning):
    """Importing minisd, making a Backend and running the plain equations change nothing; the
    first fast path sets OpenBLAS's timeout, unless MINISD_TUNE_PROCESS=0 turns the tuning off."""
    untouched = run_python(BLAS_TIMEOUT_ALONE).strip()  # OpenBLAS's own value, without minisd
    env = {"MINISD_TUNE_PROCESS": tuning} if tuning else {}
    before, after = run_python(NOTHING_CHANGES_UNTIL_A_FAST_PATH, **env).splitlines()
    assert before == f"None {untouched}"
    assert after == (f"None {untouched}" if tuning == "0" else f"{cpu.BLAS_THREAD_TIMEOUT} {cpu.BLAS_THREAD_TIMEOUT}")


def test_tiled_decode_has_no_seams(monkeypatch):
    """The embedded model's pictures (a 2 x 2 mosaic of their latents: 16 x 16 latents, tiles of
    8 starting every 6) decoded in tiles: where one tile hands over to the next, the picture
    changes no more than it does elsewhere. Without the blend the tile borders jump out.

    Tiling is not the untiled decode: each tile's GroupNorms see only the tile. For this small
    VAE that changes the colours a lot (PSNR about 13 dB against the untiled picture); a seam
    would show as a jump at the border, and there is none."""
    pipe = minisd.load(minisd.default_model_folder())
    prompts = [
        "a red circle on a white background",
        "a blue square on a black background",
        "a green triangle on a white background",
        "a yellow circle on a black background",
    ]
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
