"""Bad input gets a clear error naming the problem and the fix (fast tier, NumPy only)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import minisd
from minisd.backend import Backend
from minisd.weights import WeightsError, load_component, read_safetensors

FOLDER = Path(__file__).parent / "fixtures" / "tiny-sd"
UNET_FILE = "unet/diffusion_pytorch_model.fp16.safetensors"
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def pipe():
    return minisd.load(FOLDER)


@pytest.fixture
def model_copy(tmp_path):
    return Path(shutil.copytree(FOLDER, tmp_path / "model"))


def rewrite(path, change):
    """Load a safetensors file, let `change` edit the dict, write it back."""
    tensors = {key: np.array(value) for key, value in read_safetensors(path).items()}
    change(tensors)
    save_file(tensors, str(path))


# ---------------------------------------------------------------- generation options


@pytest.mark.parametrize("size", [(60, 64), (64, 100), (0, 64)])
def test_size_not_multiple_of_8(pipe, size):
    height, width = size
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe(PROMPT, steps=2, height=height, width=width, progress=False)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_step_count(pipe, steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        pipe(PROMPT, steps=steps, progress=False)


@pytest.mark.parametrize("strength", [0.0, -0.2, 1.5])
def test_strength_out_of_range(pipe, strength):
    image = np.zeros((64, 64, 3), np.uint8)
    from PIL import Image

    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        pipe.img2img(PROMPT, Image.fromarray(image), strength=strength, steps=4, progress=False)


def test_strength_too_small_for_steps(pipe):
    from PIL import Image

    with pytest.raises(ValueError, match="no denoising step"):
        pipe.img2img(PROMPT, Image.new("RGB", (64, 64)), strength=0.1, steps=5, progress=False)


def test_unknown_scheduler(pipe):
    with pytest.raises(ValueError, match="ddim") as error:
        pipe(PROMPT, steps=2, scheduler="karras-magic", progress=False)
    assert "karras-magic" in str(error.value)


def test_eta_needs_ddim(pipe):
    with pytest.raises(ValueError, match="ddim"):
        pipe(PROMPT, steps=2, eta=0.5, scheduler="pndm", progress=False)


def test_latents_of_wrong_shape(pipe):
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 8, 8\)"):
        pipe(PROMPT, steps=2, latents=np.zeros((1, 4, 16, 16), np.float32), progress=False)


def test_long_prompt_warns_with_dropped_words(pipe):
    prompt = "a red circle on a white background, " * 12 + "and the final words here"
    with pytest.warns(UserWarning, match="truncated because CLIP can only handle sequences up to 77") as record:
        pipe.encode_prompt(prompt)
    assert "final words here" in str(record[0].message)


# ---------------------------------------------------------------- model folders and files


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="does not exist.*weights/README.md"):
        minisd.load(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", ["unet/config.json", "model_index.json", "scheduler/scheduler_config.json"])
def test_incomplete_folder(model_copy, missing):
    (model_copy / missing).unlink()
    with pytest.raises(WeightsError, match=f"incomplete: missing {missing}.*weights/README.md"):
        minisd.load(model_copy)


def test_no_weights_file(model_copy):
    (model_copy / UNET_FILE).unlink()
    with pytest.raises(WeightsError, match="no diffusion_pytorch_model.safetensors"):
        minisd.load(model_copy)


def test_pickle_files_are_refused(model_copy):
    (model_copy / UNET_FILE).unlink()
    (model_copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(WeightsError, match="pickle.*arbitrary code.*safetensors"):
        minisd.load(model_copy)


def test_missing_unexpected_and_misshapen_keys_are_all_named(model_copy):
    def damage(tensors):
        del tensors["conv_in.bias"]
        tensors["extra.weight"] = np.zeros(3, np.float16)
        tensors["conv_out.weight"] = np.zeros((4, 32, 1, 1), np.float16)

    rewrite(model_copy / UNET_FILE, damage)
    with pytest.raises(WeightsError) as error:
        load_component(model_copy, "unet", Backend())
    message = str(error.value)
    assert "1 missing keys:\n    conv_in.bias" in message
    assert "1 unexpected keys:\n    extra.weight" in message
    assert "conv_out.weight: file (4, 32, 1, 1), config expects (4, 32, 3, 3)" in message
    assert UNET_FILE in message


def test_config_that_does_not_match_the_weights(model_copy):
    config = model_copy / "unet" / "config.json"
    config.write_text(config.read_text().replace('"cross_attention_dim": 32', '"cross_attention_dim": 48'))
    with pytest.raises(
        WeightsError, match="(?s)12 shape mismatches.*attn2.to_k.weight: file \\(64, 32\\), config expects \\(64, 48\\)"
    ):
        load_component(model_copy, "unet", Backend())


def test_not_a_safetensors_file(model_copy):
    (model_copy / UNET_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_component(model_copy, "unet", Backend())


def test_unsupported_unet_feature(model_copy):
    config = model_copy / "unet" / "config.json"
    config.write_text(config.read_text().replace('"class_embed_type": null', '"class_embed_type": "timestep"'))
    with pytest.raises(ValueError, match="class_embed_type='timestep'"):
        load_component(model_copy, "unet", Backend())


# ---------------------------------------------------------------- layouts the loader accepts


def test_text_encoder_keys_without_prefix(model_copy):
    """Some exports drop `text_model.`; some keep the position_ids buffer. Both load the same."""
    path = model_copy / "text_encoder" / "model.fp16.safetensors"

    def strip_prefix(tensors):
        for key in list(tensors):
            tensors[key.removeprefix("text_model.")] = tensors.pop(key)
        tensors["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]

    rewrite(path, strip_prefix)
    ids = np.array([[49406, 320, 736, 49407] + [49407] * 73])
    stripped = load_component(model_copy, "text_encoder", Backend())(ids)
    original = load_component(FOLDER, "text_encoder", Backend())(ids)
    np.testing.assert_array_equal(stripped, original)


def test_old_vae_attention_names(model_copy):
    """diffusers < 0.14 saved the VAE attention as query/key/value/proj_attn, as 1×1 convs."""
    path = model_copy / "vae" / "diffusion_pytorch_model.fp16.safetensors"
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def rename(tensors):
        for key in [k for k in tensors if ".attentions." in k]:
            for new, old in old_names.items():
                if f".{new}." in key:
                    value = tensors.pop(key)
                    tensors[key.replace(f".{new}.", f".{old}.")] = value[..., None, None] if value.ndim == 2 else value

    rewrite(path, rename)
    latents = np.random.default_rng(0).standard_normal((1, 4, 4, 4), dtype=np.float32)
    old = load_component(model_copy, "vae", Backend()).decode(latents)
    np.testing.assert_array_equal(old, load_component(FOLDER, "vae", Backend()).decode(latents))


def test_fp32_file_preferred_and_fp16_variant_for_float16(model_copy):
    """With both files present, float32 loading reads `.safetensors`, float16 the `.fp16` variant."""
    fp16 = read_safetensors(model_copy / UNET_FILE)
    save_file(
        {k: np.asarray(v, np.float32) * 0 for k, v in fp16.items()},
        str(model_copy / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    zeros = load_component(model_copy, "unet", Backend("numpy", "float32"))
    assert not np.any(zeros.conv_in.weight)
    half = load_component(model_copy, "unet", Backend("numpy", "float16"))
    assert half.conv_in.weight.dtype == np.float16
    np.testing.assert_array_equal(half.conv_in.weight, fp16["conv_in.weight"])
