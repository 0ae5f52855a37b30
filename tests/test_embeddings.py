"""Textual inversion (minisd/embeddings.py): both file layouts read, the tokenizer and the
embedding table grown, bad files refused by name; and, with the reference extra, the same
token ids and pictures as diffusers' load_textual_inversion on the same files."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.numpy import save_file

import minisd
from helpers import TINY_SD, max_pixel_difference
from minisd.cli import main, split_embedding
from minisd.embeddings import read_embedding
from minisd.errors import WeightsError
from minisd.tokenizer import CLIPTokenizer

RNG = np.random.default_rng(12)


def embedding_file(path, key, shape, dtype=np.float32):
    save_file({key: RNG.standard_normal(shape).astype(dtype)}, str(path))
    return path


def test_both_layouts_and_their_tokens(tmp_path):
    a1111 = embedding_file(tmp_path / "painterly.safetensors", "emb_params", (3, 32))
    token, vectors = read_embedding(a1111)
    assert token == "painterly" and vectors.shape == (3, 32)  # AUTOMATIC1111: the file's name
    assert read_embedding(a1111, "<paint>")[0] == "<paint>"
    diffusers = embedding_file(tmp_path / "learned_embeds.safetensors", "<cat-toy>", (32,))
    token, vectors = read_embedding(diffusers)
    assert token == "<cat-toy>" and vectors.shape == (1, 32)  # diffusers: the key, one vector


@pytest.mark.parametrize(
    "tensors, phrase",
    [
        ({"a": np.zeros((1, 8), np.float32), "b": np.zeros((1, 8), np.float32)}, "holds 2 tensors"),
        ({"emb_params": np.zeros((2, 8), np.int64)}, "an embedding is a float"),
        ({"emb_params": np.zeros((1, 2, 8), np.float32)}, "an embedding is a float"),
        ({"emb_params": np.zeros((0, 8), np.float32)}, "an embedding is a float"),
    ],
)
def test_bad_embedding_files(tmp_path, tensors, phrase):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(WeightsError, match=phrase) as error:
        read_embedding(path)
    assert str(path) in str(error.value)


def test_pickles_and_other_models_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="pickle"):
        read_embedding(tmp_path / "style.pt")
    pipe = minisd.load(TINY_SD)
    wide = embedding_file(tmp_path / "wide.safetensors", "emb_params", (1, 768))
    with pytest.raises(WeightsError, match="768 wide, this text encoder's 32"):
        pipe.load_embedding(wide)
    taken = embedding_file(tmp_path / "taken.safetensors", "cat</w>", (32,))
    with pytest.raises(ValueError, match="cannot be added"):
        pipe.load_embedding(taken)
    assert pipe.text_encoder.text_model.embeddings.token_embedding.weight.shape[0] == 49408  # nothing grew


def test_the_tokenizer_grows_and_the_token_stands_for_its_vectors():
    tokenizer = CLIPTokenizer.default()
    assert tokenizer.add_token("<cat-toy>", 3) == [49408, 49409, 49410]
    a_photo_of = tokenizer.token_ids("a photo of")
    assert tokenizer.token_ids("a photo of <cat-toy>") == [*a_photo_of, 49408, 49409, 49410]
    assert tokenizer.token_ids("x<cat-toy>y") == [
        *tokenizer.token_ids("x"),
        49408,
        49409,
        49410,
        *tokenizer.token_ids("y"),
    ]


def test_the_table_grows_and_the_picture_changes(tmp_path):
    pipe = minisd.load(TINY_SD)
    path = embedding_file(tmp_path / "painterly-style.safetensors", "emb_params", (2, 32))
    options = dict(steps=3, seed=1, height=64, width=64, progress=False)
    before = pipe("a red circle in painterly-style", **options)
    assert pipe.load_embedding(path) == "painterly-style"
    table = pipe.text_encoder.text_model.embeddings.token_embedding.weight
    np.testing.assert_array_equal(table[49408:], read_embedding(path)[1])
    assert not np.array_equal(np.asarray(pipe("a red circle in painterly-style", **options)), np.asarray(before))


def test_command_line(tmp_path):
    path = embedding_file(tmp_path / "style.safetensors", "emb_params", (2, 32))
    output = tmp_path / "out.png"
    arguments = ["a circle in <s>", "--weights", str(TINY_SD), "--steps", "2", "-o", str(output)]
    assert main([*arguments, "--embedding", f"{path}:<s>"]) == 0
    assert Image.open(output).text["embeddings"] == f"{path}:<s>"
    assert split_embedding(r"C:\styles\x.safetensors") == (r"C:\styles\x.safetensors", None)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.text(max_size=6),
    shape=st.lists(st.integers(0, 5), max_size=3).map(tuple),
    dtype=st.sampled_from([np.float32, np.float16, np.int32, np.float64]),
)
def test_random_embedding_files_read_or_give_a_weights_error(tmp_path, key, shape, dtype):
    path = tmp_path / "random.safetensors"
    save_file({key: np.zeros(shape, dtype)}, str(path))
    try:
        token, vectors = read_embedding(path)
    except WeightsError as error:
        assert str(path) in str(error)
    else:
        assert vectors.ndim == 2 and vectors.dtype == np.float32 and isinstance(token, str)


@pytest.mark.reference
def test_same_ids_and_pictures_as_diffusers(tiny, tmp_path):
    """Both layouts loaded by diffusers' load_textual_inversion and by minisd: the same token ids for
    prompts that use them, and pictures within 1 level of 255, seed for seed."""
    import torch
    from diffusers import StableDiffusionPipeline

    from reference import torch_seed

    folder, _ = tiny
    a1111 = embedding_file(tmp_path / "painterly.safetensors", "emb_params", (2, 32))
    single = embedding_file(tmp_path / "learned_embeds.safetensors", "<shape-x>", (32,))
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_textual_inversion(str(a1111), token="<style-y>")
    theirs.load_textual_inversion(str(single))
    ours = minisd.load(folder)
    assert ours.load_embedding(a1111, "<style-y>") == "<style-y>" and ours.load_embedding(single) == "<shape-x>"
    for prompt in ["a <shape-x> in <style-y>", "<style-y>", "a red circle, <shape-x>"]:
        converted = theirs.maybe_convert_prompt(prompt, theirs.tokenizer)
        ids = theirs.tokenizer(converted, padding="max_length", max_length=77, truncation=True).input_ids
        assert ours.tokenizer.encode(prompt)[0].tolist() == ids, prompt
    prompt = "a <shape-x> in <style-y>"
    with torch.no_grad():
        expected = theirs(prompt, num_inference_steps=4, height=64, width=64, generator=torch_seed(3)).images[0]
    assert max_pixel_difference(ours(prompt, steps=4, height=64, width=64, seed=3, progress=False), expected) <= 1
