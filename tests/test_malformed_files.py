"""Malformed files get a clear error: every reader of minisd against broken input.

Each named case writes one broken file (a .safetensors header, a config value, a tokenizer
file, a picture) and asserts the error type (a WeightsError, ConfigError or ValueError, all
ValueErrors) and that its message names the file. Then property tests (hypothesis) throw random
and mutated headers, configs and tokenizer files at the readers: the only exceptions allowed are
those documented ones.
"""

import json
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.numpy import save_file

import minisd
from helpers import TINY_SD
from minisd.cli import main
from minisd.clip import CLIPTextConfig
from minisd.errors import ConfigError, WeightsError
from minisd.safetensors_file import read_safetensors
from minisd.schedulers import check_config as check_scheduler_config
from minisd.tokenizer import CLIPTokenizer
from minisd.unet import UNetConfig
from minisd.vae import VAEConfig

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_safetensors(path, header, data=b"", header_bytes=None):
    """A .safetensors file with this header (any JSON value, or raw bytes) and data."""
    raw = json.dumps(header).encode() if header_bytes is None else header_bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

# name: (header, data, a phrase the message must hold)
HEADERS = {
    "header-is-a-list": ([], b"", "JSON object of tensors, this one is a list"),
    "header-is-a-string": ("weights", b"", "this one is a str"),
    "header-is-a-number": (3, b"", "this one is a int"),
    "header-is-null": (None, b"", "this one is a NoneType"),
    "entry-not-an-object": ({"w": 3}, b"", "tensor 'w' is described by a int"),
    "no-data-offsets": ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "has no data_offsets"),
    "no-shape": ({"w": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8, "has no shape"),
    "no-dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "has no dtype"),
    "float-offsets": ({"w": {**F32, "data_offsets": [0.0, 8.0]}}, b"\0" * 8, "data_offsets [0.0, 8.0]"),
    "string-offsets": ({"w": {**F32, "data_offsets": ["0", "8"]}}, b"\0" * 8, "two non-negative integers"),
    "list-as-dtype": ({"w": {**F32, "dtype": ["F32"]}}, b"\0" * 8, "has dtype ['F32']"),
    "unknown-dtype": ({"w": {**F32, "dtype": "F33"}}, b"\0" * 8, "has dtype 'F33', not one of"),
    "three-offsets": ({"w": {**F32, "data_offsets": [0, 4, 8]}}, b"\0" * 8, "two non-negative integers"),
    "negative-offsets": ({"w": {**F32, "data_offsets": [-8, 0]}}, b"\0" * 8, "two non-negative integers"),
    "negative-shape": ({"w": {**F32, "shape": [-2]}}, b"\0" * 8, "non-negative integers"),
    "bool-in-shape": ({"w": {**F32, "shape": [True, 2]}}, b"\0" * 8, "non-negative integers"),
    "shape-not-a-list": ({"w": {**F32, "shape": 2}}, b"\0" * 8, "has shape 2"),
    "size-and-offsets-disagree": ({"w": {**F32, "data_offsets": [0, 4]}}, b"\0" * 4, "hold 4"),
    "overlapping": ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    "gap": ({"a": {**F32, "data_offsets": [4, 12]}}, b"\0" * 12, "leaves a gap"),
    "truncated-data": ({"w": F32}, b"\0" * 5, "truncated"),
    "bytes-no-tensor-claims": ({"w": F32}, b"\0" * 12, "bytes no tensor claims"),
    "metadata-not-strings": ({"__metadata__": {"format": 1}, "w": F32}, b"\0" * 8, "__metadata__"),
    "metadata-a-list": ({"__metadata__": ["pt"], "w": F32}, b"\0" * 8, "__metadata__"),
    "huge-tensor": ({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8, "hold 8"),
}  # fmt: skip


@pytest.mark.parametrize("case", HEADERS)
def test_malformed_header(tmp_path, case):
    header, data, phrase = HEADERS[case]
    path = write_safetensors(tmp_path / f"{case}.safetensors", header, data)
    with pytest.raises(WeightsError) as error:
        read_safetensors(path)
    assert str(path) in str(error.value) and phrase in str(error.value)


RAW_HEADERS = {  # name: (raw header bytes, the length the prefix claims or None, a phrase)
    "not-json": (b"{not json", None, "not JSON"),
    "not-utf8": (b'{"\xff": 1}', None, "not JSON"),
    "deeply-nested": (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    "length-past-the-end": (b"{}", 1000, "header length of 1000"),
    "length-zero": (b"", 0, "header length of 0"),
    "length-over-the-limit": (b"{}" + b" " * 10, 200_000_000, "header length of 200000000"),
}


@pytest.mark.parametrize("case", RAW_HEADERS)
def test_malformed_header_bytes(tmp_path, case):
    raw, claimed, phrase = RAW_HEADERS[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if claimed is None else claimed) + raw)
    with pytest.raises(WeightsError) as error:
        read_safetensors(path)
    assert str(path) in str(error.value) and phrase in str(error.value)


def test_short_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        read_safetensors(path)


def test_a_huge_claim_allocates_nothing(tmp_path):
    """A header claiming a tensor of 2^80 elements over a few bytes is refused before any array
    is made: the whole read allocates under a megabyte."""
    header = {"w": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 2**83]}}
    path = write_safetensors(tmp_path / "huge.safetensors", header, b"\0" * 64)
    tracemalloc.start()
    with pytest.raises(WeightsError):
        read_safetensors(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20


def test_good_files_still_read(tmp_path):
    """The checks refuse nothing the format allows: empty tensors, no tensors, metadata, every
    dtype minisd computes with (bfloat16 widened to float32), against safetensors' own writer."""
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((0, 4), np.float16),
               "c": np.arange(3, dtype=np.int64), "d": np.ones(2, np.float64)}  # fmt: skip
    save_file(tensors, str(tmp_path / "good.safetensors"), metadata={"format": "pt"})
    read = read_safetensors(tmp_path / "good.safetensors")
    assert set(read) == set(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(read[key], value)
    save_file({}, str(tmp_path / "empty.safetensors"))
    assert read_safetensors(tmp_path / "empty.safetensors") == {}
    bf16 = {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}
    path = write_safetensors(tmp_path / "bf16.safetensors", bf16, np.array([0x3F80, 0xC000], "<u2").tobytes())
    np.testing.assert_array_equal(read_safetensors(path)["w"], [1.0, -2.0])


# ---------------------------------------------------------------- model folders


@pytest.fixture
def folder(tmp_path):
    """A copy of the committed tiny model folder, to break."""
    return Path(shutil.copytree(TINY_SD, tmp_path / "model"))


def edit_json(path, change):
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


def set_key(key, value):
    return lambda config: {**config, key: value}


# name: (file in the folder, change, error type, phrase)
CONFIGS = {
    "unet-config-a-list": ("unet/config.json", lambda c: [c], ConfigError, "must hold a JSON object, not a list"),
    "vae-config-a-string": ("vae/config.json", lambda c: "vae", ConfigError, "not a str"),
    "zero-heads": ("unet/config.json", set_key("attention_head_dim", 0), ConfigError, "attention_head_dim is 0"),
    "heads-not-dividing": ("unet/config.json", set_key("attention_head_dim", 3), ConfigError, "a divisor"),
    "heads-per-block-too-few": ("unet/config.json", set_key("attention_head_dim", [2]), ConfigError, "once or 2 times"),
    "channels-per-block": ("unet/config.json", set_key("block_out_channels", [32]), ConfigError, "block_out_channels"),
    "groups-not-dividing": ("unet/config.json", set_key("norm_num_groups", 7), ConfigError, "norm_num_groups is 7"),
    "channels-a-string": ("unet/config.json", set_key("in_channels", "4"), ConfigError, "in_channels is '4'"),
    "layers-null": ("unet/config.json", set_key("layers_per_block", None), ConfigError, "layers_per_block is None"),
    "text-zero-heads": ("text_encoder/config.json", set_key("num_attention_heads", 0), ConfigError,
                        "num_attention_heads is 0"),
    "text-activation": ("text_encoder/config.json", set_key("hidden_act", "relu6"), ConfigError, "hidden_act"),
    "vae-scaling-zero": ("vae/config.json", set_key("scaling_factor", 0), ConfigError, "scaling_factor is 0"),
    "vae-block-type": ("vae/config.json", set_key("down_block_types", ["Foo"] * 4), ConfigError, "down_block_types"),
    "timesteps-zero": ("scheduler/scheduler_config.json", set_key("num_train_timesteps", 0), ConfigError,
                       "num_train_timesteps is 0"),
    "beta-above-one": ("scheduler/scheduler_config.json", set_key("beta_end", 2), ConfigError, "beta_end is 2"),
    "beta-schedule": ("scheduler/scheduler_config.json", set_key("beta_schedule", "cubic"), ConfigError, "cubic"),
    "trained-betas": ("scheduler/scheduler_config.json", set_key("trained_betas", [0.5]), ConfigError,
                      "trained_betas"),
    "spacing": ("scheduler/scheduler_config.json", set_key("timestep_spacing", "sideways"), ConfigError, "sideways"),
    "scheduler-a-list": ("scheduler/scheduler_config.json", lambda c: [], ConfigError, "not a list"),
    "model-index-a-list": ("model_index.json", lambda c: [], ConfigError, "must hold a JSON object"),
    "defaults": ("minisd.json", lambda c: {"defaults": {"steps": "many"}}, ConfigError, "steps is 'many'"),
    "preview-shape": ("minisd.json", lambda c: {"preview": {"factors": [[1, 2]], "bias": [0, 0, 0]}}, ConfigError,
                      "preview must hold"),
    "preview-a-list": ("minisd.json", lambda c: {"preview": [1, 2]}, ConfigError, "preview must hold"),
    "defaults-unknown": ("minisd.json", lambda c: {"defaults": {"colour": 1}}, ConfigError, "defaults must be"),
}  # fmt: skip


@pytest.mark.parametrize("case", CONFIGS)
def test_malformed_config(folder, case):
    name, change, error_type, phrase = CONFIGS[case]
    path = folder / name
    if not path.exists():
        path.write_text("{}")
    edit_json(path, change)
    with pytest.raises(error_type) as error:
        minisd.load(folder)
    assert str(path) in str(error.value) and phrase in str(error.value)


def test_config_not_json(folder):
    path = folder / "unet" / "config.json"
    path.write_text('{"in_channels": 4,')
    with pytest.raises(WeightsError, match="is not valid JSON") as error:
        minisd.load(folder)
    assert str(path) in str(error.value)


# name: (file, content, phrase)
TOKENIZER_FILES = {
    "vocab-a-list": ("vocab.json", "[1, 2]", "must hold a JSON object"),
    "vocab-string-ids": ("vocab.json", '{"a</w>": "1"}', "an id >= 0"),
    "vocab-without-bos": ("vocab.json", '{"a</w>": 1}', "not a CLIP tokenizer"),
    "merges-three-symbols": ("merges.txt", "#version: 0.2\na b c\n", "line 2"),
    "merges-not-utf8": ("merges.txt", b"\xff\xfe a b", "not UTF-8"),
    "pad-token-a-number": ("special_tokens_map.json", '{"pad_token": 7}', "pad_token must be a token"),
    "pad-token-unknown": ("special_tokens_map.json", '{"pad_token": "<pad>"}', "not in the vocabulary"),
}


@pytest.mark.parametrize("case", TOKENIZER_FILES)
def test_malformed_tokenizer_file(folder, case):
    name, content, phrase = TOKENIZER_FILES[case]
    path = folder / "tokenizer" / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(WeightsError) as error:
        minisd.load(folder)
    assert str(folder / "tokenizer") in str(error.value) and phrase in str(error.value)


def test_tokenizer_json_without_a_model(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(WeightsError, match="has no BPE model"):
        CLIPTokenizer.from_folder(tmp_path)


def test_a_weights_file_with_a_broken_header_names_it(folder):
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    write_safetensors(path, {"conv_in.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(WeightsError) as error:
        minisd.load(folder)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- pictures and the command line


def test_pictures_that_are_not_pictures(tmp_path, monkeypatch):
    pipe = minisd.load(TINY_SD)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(ValueError, match=f"{text} is not a picture Pillow can read"):
        pipe.img2img("a red circle", text, steps=2)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match="cut.png is not a picture"):
        pipe.img2img("a red circle", truncated, steps=2)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        pipe.img2img("a red circle", tmp_path / "missing.png", steps=2)
    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: a "bomb" for this limit
    with pytest.raises(ValueError, match="decompression bomb"):
        pipe.img2img("a red circle", big, steps=2)


@pytest.mark.parametrize(
    "arguments, phrase",
    [
        (["--guidance", "nan"], "option guidance is nan"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--size", "0x0"], "positive multiples of 8"),
        (["--init-image", "nowhere.png"], "nowhere.png does not exist"),
        (["--strength", "2", "--init-image", "{picture}"], "strength must be in"),
        (["--clip-skip", "-1"], "clip_skip must be >= 0"),
        (["--eta", "-1"], "eta must be >= 0"),
    ],
)
def test_bad_command_line_values(tmp_path, capsys, arguments, phrase):
    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(picture)
    arguments = [argument.replace("{picture}", str(picture)) for argument in arguments]
    assert main(["a red circle", "--weights", str(TINY_SD), "-o", str(tmp_path / "out.png"), *arguments]) == 2
    assert phrase in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- property tests

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F8_E4M3", "X"]) | JSON,
        "shape": st.lists(st.integers(-2, 4), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-4, 40), min_size=0, max_size=3) | JSON,
    },
)
HEADER = st.dictionaries(st.text(max_size=4), ENTRY | JSON, max_size=4) | JSON


@PROPERTY
@given(header=HEADER, data=st.binary(max_size=48))
def test_random_headers_give_a_tensor_dict_or_a_weights_error(tmp_path, header, data):
    path = write_safetensors(tmp_path / "random.safetensors", header, data)
    try:
        tensors = read_safetensors(path)
    except WeightsError as error:
        assert str(path) in str(error)
    else:
        assert all(isinstance(array, np.ndarray) for array in tensors.values())


GOOD = {"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 2), np.float16), "c": np.arange(3, dtype=np.int64)}


@PROPERTY
@given(cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6))
def test_mutated_files_give_a_tensor_dict_or_a_weights_error(tmp_path, cut, flips):
    path = tmp_path / "mutated.safetensors"
    save_file(GOOD, str(path))
    raw = bytearray(path.read_bytes())
    for position, value in flips:
        raw[position % len(raw)] = value
    path.write_bytes(bytes(raw[: len(raw) - cut % len(raw)]))
    try:
        read_safetensors(path)
    except WeightsError as error:
        assert str(path) in str(error)


def random_config(keys):
    """A config dict: some keys of the real one, each kept, dropped or replaced by random JSON."""
    return st.fixed_dictionaries({}, optional={key: JSON | st.integers(-3, 8) for key in keys})


@PROPERTY
@given(
    unet=random_config(["block_out_channels", "attention_head_dim", "norm_num_groups", "layers_per_block",
                        "down_block_types", "up_block_types", "in_channels", "cross_attention_dim"]),
    vae=random_config(["block_out_channels", "norm_num_groups", "latent_channels", "scaling_factor",
                       "down_block_types", "up_block_types", "act_fn"]),
    text=random_config(["hidden_size", "num_attention_heads", "num_hidden_layers", "hidden_act", "vocab_size"]),
    scheduler=random_config(["num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                             "timestep_spacing", "steps_offset", "prediction_type", "_use_default_values"]),
)  # fmt: skip
def test_random_configs_give_a_config_or_a_config_error(unet, vae, text, scheduler):
    for config_class, values in ((UNetConfig, unet), (VAEConfig, vae), (CLIPTextConfig, text)):
        try:
            config_class.from_dict(values, "folder/config.json")
        except ConfigError as error:
            assert "folder/config.json" in str(error)
    try:
        check_scheduler_config(scheduler, "scheduler_config.json")
    except ConfigError as error:
        assert "scheduler_config.json" in str(error)


@PROPERTY
@given(
    vocab=st.dictionaries(st.text(max_size=5), st.integers(-2, 60) | JSON, max_size=6) | JSON,
    merges=st.lists(st.text(max_size=8), max_size=5),
    pad=JSON,
)
def test_random_tokenizer_files_give_a_tokenizer_or_a_weights_error(tmp_path, vocab, merges, pad):
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("\n".join(merges))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
    try:
        CLIPTokenizer.from_folder(tmp_path)
    except WeightsError as error:
        assert str(tmp_path) in str(error)


ORIGINAL_KEYS = [  # what single-file detection reads, in the original (CompVis / Stability) layout
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
    "cond_stage_model.model.token_embedding.weight",
    "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
    "model.diffusion_model.input_blocks.1.1.proj_in.weight",
    "model.diffusion_model.input_blocks.4.0.out_layers.3.weight",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "first_stage_model.encoder.down.0.block.0.conv1.weight",
    "first_stage_model.encoder.down.1.block.0.conv1.weight",
    "first_stage_model.post_quant_conv.weight",
]


@PROPERTY
@given(
    tensors=st.dictionaries(
        st.sampled_from(ORIGINAL_KEYS), st.lists(st.integers(0, 70), max_size=4).map(tuple), min_size=1
    )
)
def test_random_single_files_load_or_give_a_weights_error(tmp_path, tensors):
    """Single-file detection reads shapes: any subset of its keys with any shapes gives a
    pipeline or a WeightsError (a ConfigError for shapes that describe no model) naming the file."""
    path = tmp_path / "random.safetensors"
    save_file({key: np.zeros(shape, np.float32) for key, shape in tensors.items()}, str(path))
    try:
        minisd.load(path)
    except WeightsError as error:
        assert str(path) in str(error)
