"""LoRA (minisd/lora.py): both layouts fused as W + s·(α/r)·B A (the closed form), unloading
bit for bit, keys that name no layer refused by name; and, with the reference extra, the same
pictures as diffusers' load_lora_weights (PEFT) at scales 0.5 and 1.0 and with two LoRAs."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.numpy import save_file

import minisd
from helpers import TINY_SD, max_pixel_difference
from minisd.cli import main
from minisd.errors import WeightsError

RANK = 4
UNET_LAYERS = [  # (layer key, weight shape) in the committed tiny model and the reference one
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", (64, 64)),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", (64, 32)),
    ("up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj", (512, 64)),
    ("down_blocks.1.attentions.0.proj_in", (64, 64, 1, 1)),
]
TEXT_LAYERS = [
    ("text_model.encoder.layers.1.self_attn.q_proj", (32, 32)),
    ("text_model.encoder.layers.0.mlp.fc1", (37, 32)),
]


def lora_matrices(rng, shape):
    down = rng.standard_normal((RANK, *shape[1:]), dtype=np.float32) * 0.3
    up = rng.standard_normal((shape[0], RANK, *(1,) * (len(shape) - 2)), dtype=np.float32) * 0.3
    return down, up


def kohya_file(path, seed=0, alpha=2.0, text_layers=TEXT_LAYERS):
    rng, tensors = np.random.default_rng(seed), {}
    for prefix, layers in (("lora_unet", UNET_LAYERS), ("lora_te", text_layers)):
        for key, shape in layers:
            name = f"{prefix}_{key.replace('.', '_')}"
            tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = lora_matrices(rng, shape)
            tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))
    return path


def peft_file(path, seed=1):
    rng, tensors = np.random.default_rng(seed), {}
    for prefix, layers in (("unet", UNET_LAYERS[:2]), ("text_encoder", TEXT_LAYERS[:1])):
        for key, shape in layers:
            tensors[f"{prefix}.{key}.lora_A.weight"], tensors[f"{prefix}.{key}.lora_B.weight"] = lora_matrices(
                rng, shape
            )
    save_file(tensors, str(path))
    return path


def weight(pipe, component, key):
    module = dict(getattr(pipe, component).named_modules())[key]
    return np.array(module.weight)


def test_fused_is_the_closed_form_and_unloading_restores(tmp_path):
    pipe, fresh = minisd.load(TINY_SD), minisd.load(TINY_SD)
    path = kohya_file(tmp_path / "k.safetensors")
    pipe.load_lora(path, scale=0.5)
    rng = np.random.default_rng(0)  # the file's matrices, drawn again in the same order
    for component, layers in (("unet", UNET_LAYERS), ("text_encoder", TEXT_LAYERS)):
        for key, shape in layers:
            down, up = lora_matrices(rng, shape)
            update = (up.reshape(shape[0], RANK) @ down.reshape(RANK, -1)).reshape(shape)
            expected = weight(fresh, component, key) + 0.5 * (2.0 / RANK) * update
            np.testing.assert_allclose(weight(pipe, component, key), expected, rtol=1e-6, atol=1e-7)
    pipe.unload_loras()
    for component, layers in (("unet", UNET_LAYERS), ("text_encoder", TEXT_LAYERS)):
        for key, _ in layers:
            assert np.array_equal(weight(pipe, component, key), weight(fresh, component, key))  # bit for bit


def test_keys_that_name_no_layer_are_refused(tmp_path):
    pipe = minisd.load(TINY_SD)
    down, up = lora_matrices(np.random.default_rng(2), (64, 64))
    bad = tmp_path / "bad.safetensors"
    save_file(
        {
            "lora_unet_mid_block_nothing_here.lora_down.weight": down,
            "lora_unet_mid_block_nothing_here.lora_up.weight": up,
        },
        str(bad),
    )
    with pytest.raises(WeightsError, match="name no layer of this model: lora_unet_mid_block_nothing_here"):
        pipe.load_lora(bad)
    layer = UNET_LAYERS[0][0].replace(".", "_")
    save_file({f"lora_unet_{layer}.lora_down.weight": down}, str(bad))
    with pytest.raises(WeightsError, match="only one of the two"):
        pipe.load_lora(bad)
    save_file({f"lora_unet_{layer}.lora_down.weight": down[:, :8], f"lora_unet_{layer}.lora_up.weight": up}, str(bad))
    with pytest.raises(WeightsError, match="update, the layer's weight is"):
        pipe.load_lora(bad)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(
        st.sampled_from(
            [f"lora_unet_{UNET_LAYERS[0][0].replace('.', '_')}", f"unet.{UNET_LAYERS[1][0]}", "lora_te_x", "unet.y"]
        ).flatmap(
            lambda name: st.sampled_from(
                [
                    f"{name}.lora_down.weight",
                    f"{name}.lora_up.weight",
                    f"{name}.alpha",
                    f"{name}.lora_A.weight",
                    f"{name}.lora_B.weight",
                ]
            )
        ),
        max_size=4,
    ),
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
)
def test_random_lora_files_load_or_give_a_weights_error(tmp_path, keys, shape):
    path = tmp_path / "random.safetensors"
    save_file({key: np.ones(shape, np.float32) for key in keys}, str(path))
    pipe = minisd.load(TINY_SD)
    try:
        pipe.load_lora(path)
    except WeightsError as error:
        assert str(path) in str(error)


def test_command_line(tmp_path):
    path = kohya_file(tmp_path / "k.safetensors")
    output = tmp_path / "out.png"
    assert (
        main(["a red circle", "--weights", str(TINY_SD), "--steps", "2", "-o", str(output), "--lora", f"{path}:0.5"])
        == 0
    )
    assert Image.open(output).text["loras"] == f"{path}:0.5"


@pytest.mark.reference
def test_same_pictures_as_diffusers(tiny, tmp_path):
    """kohya and PEFT files through diffusers' load_lora_weights and set_adapters and through
    minisd's load_lora: pictures within 1 level at scales 0.5 and 1.0, with one and two LoRAs.

    The kohya file here changes the UNet only: diffusers 0.42 with transformers 5 does not apply
    kohya text-encoder LoRAs (its converted keys load as unexpected, and PEFT initialises the
    layers' LoRA matrices at random), so its picture is no reference for them; minisd's are
    checked against the closed form above, and the PEFT file's text-encoder layer here."""
    import torch
    from diffusers import StableDiffusionPipeline

    from reference import torch_seed

    folder, _ = tiny
    kohya, peft = kohya_file(tmp_path / "k.safetensors", text_layers=[]), peft_file(tmp_path / "p.safetensors")
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(kohya), adapter_name="kohya")
    theirs.load_lora_weights(str(peft), adapter_name="peft")
    ours = minisd.load(folder)
    prompt, options = "a red circle on a white background", dict(height=64, width=64)
    for adapters in ({"kohya": 0.5}, {"kohya": 1.0}, {"peft": 1.0}, {"kohya": 0.5, "peft": 1.0}):
        theirs.set_adapters(list(adapters), adapter_weights=list(adapters.values()))
        with torch.no_grad():
            expected = theirs(prompt, num_inference_steps=4, generator=torch_seed(2), **options).images[0]
        for name, scale in adapters.items():
            ours.load_lora({"kohya": kohya, "peft": peft}[name], scale)
        picture = ours(prompt, steps=4, seed=2, progress=False, **options)
        assert max_pixel_difference(picture, expected) <= 1, adapters
        ours.unload_loras()
    theirs.disable_lora()
    with torch.no_grad():
        plain = theirs(prompt, num_inference_steps=4, generator=torch_seed(2), **options).images[0]
    assert max_pixel_difference(ours(prompt, steps=4, seed=2, progress=False, **options), plain) <= 1
