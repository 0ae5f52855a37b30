"""The CLIP tokenizer against transformers' CLIPTokenizer.

Fast tier: the ids transformers gave for tests/fixtures/tokenizer_prompts.json, committed by
tests/fixtures/make_tokenizer.py. Live tier: the same corpus through transformers in-process.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from minisd.tokenizer import CLIPTokenizer, bytes_to_unicode

FIXTURES = Path(__file__).parent / "fixtures"
PROMPTS = json.loads((FIXTURES / "tokenizer_prompts.json").read_text(encoding="utf-8"))
EXPECTED = json.loads((FIXTURES / "tokenizer_expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.default()


def model_folder(tokenizer, folder: Path, pad: str) -> Path:
    """A tokenizer/ folder as diffusers ships: SD 1.x pads with EOS, SD 2.x with "!" (id 0)."""
    tokenizer.save(folder)
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
    return folder


# ---- fast tier: committed reference ids ----


def test_corpus_matches_transformers_ids(tokenizer):
    ids = tokenizer.encode(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77) and ids.dtype == np.int64
    mismatched = [p for p, row, ref in zip(PROMPTS, ids.tolist(), EXPECTED["ids"]) if row != ref]
    assert not mismatched, f"{len(mismatched)} prompts differ, e.g. {mismatched[:3]!r}"


def test_pad_with_id_zero_like_sd2(tokenizer, tmp_path):
    sd2 = CLIPTokenizer.from_folder(model_folder(tokenizer, tmp_path, "!"))
    assert sd2.pad_id == 0
    assert sd2.tokenize("wow!") == ["wow</w>", "!"]  # the pad token is special: cut out verbatim
    prompts = [PROMPTS[i] for i in EXPECTED["pad_zero"]["prompts"]]
    assert sd2.encode(prompts).tolist() == EXPECTED["pad_zero"]["ids"]


def test_vocabulary(tokenizer):
    assert len(tokenizer.vocab) == 49408
    assert len(tokenizer.merges) == 48894
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (49406, 49407, 49407)
    assert tokenizer.vocab["!"] == 0  # SD 2.x's pad token
    assert tokenizer.max_length == 77


def test_known_ids(tokenizer):
    # the ids CLIP ViT-L/14's published tokenizer gives (e.g. in the transformers docs)
    ids = tokenizer.encode(["a photo of a cat", ""])
    assert ids.shape == (2, 77)
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]
    assert ids[1, :3].tolist() == [49406, 49407, 49407]
    assert tokenizer.tokenize("A cat!") == ["a</w>", "cat</w>", "!</w>"]
    assert tokenizer.encode("a cat").shape == (1, 77)


def test_bytes_to_unicode():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"
    assert list(table)[0] == ord("!")  # the vocabulary's order: "!" is id 0


def test_truncation_names_the_dropped_words(tokenizer):
    for index, dropped in EXPECTED["dropped"].items():
        prompt = PROMPTS[int(index)]
        assert tokenizer.truncated_words(prompt) == dropped
        assert tokenizer.encode(prompt)[0, -1] == tokenizer.eos_id
    assert tokenizer.truncated_words("a photo of a cat") is None
    assert tokenizer.truncated_words(" ".join(["a"] * 75)) is None
    assert tokenizer.truncated_words(" ".join(["a"] * 75 + ["cut", "here"])) == "cut here"


def test_from_folder_layouts_agree(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "files")
    vocab, merges = tokenizer.vocab, tokenizer.merges
    as_strings = {"model": {"vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]}}
    as_pairs = {"model": {"vocab": vocab, "merges": [[a, b] for a, b in merges]}}
    for name, content in [("strings", as_strings), ("pairs", as_pairs)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(json.dumps(content), encoding="utf-8")
    expected = tokenizer.encode(PROMPTS[:40])
    for name in ["files", "strings", "pairs"]:
        loaded = CLIPTokenizer.from_folder(tmp_path / name)
        assert loaded.pad_id == 49407
        assert np.array_equal(loaded.encode(PROMPTS[:40]), expected), name


def test_pad_token_as_added_token_dict(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    config = {"pad_token": {"__type": "AddedToken", "content": "!", "lstrip": False}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert CLIPTokenizer.from_folder(tmp_path).pad_id == 0


def test_missing_files_name_the_folder(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt missing
    with pytest.raises(FileNotFoundError, match=str(tmp_path)) as error:
        CLIPTokenizer.from_folder(tmp_path)
    assert "merges.txt" in str(error.value) and "tokenizer.json" in str(error.value)


# ---- live tier: transformers in the same process ----


@pytest.fixture(scope="module")
def transformers():
    reason = "live parity needs the reference extra: pip install -e '.[reference]'"
    return pytest.importorskip("transformers", reason=reason)


@pytest.mark.reference
@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_live_parity_with_transformers(transformers, tokenizer, tmp_path, pad):
    folder = model_folder(tokenizer, tmp_path, pad)
    reference = transformers.CLIPTokenizer.from_pretrained(folder)
    ours = CLIPTokenizer.from_folder(folder)
    assert ours.pad_id == reference.pad_token_id
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    assert ours.encode(PROMPTS).tolist() == expected


@pytest.mark.reference
def test_live_truncated_words(transformers, tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    reference = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    for prompt, ids in zip(PROMPTS, reference(PROMPTS).input_ids):
        dropped = reference.decode(ids[76:-1]) if len(ids) > 77 else None  # as diffusers warns
        assert tokenizer.truncated_words(prompt) == dropped


@pytest.mark.reference
def test_live_reads_transformers_saved_folder(transformers, tokenizer, tmp_path):
    tokenizer.save(tmp_path / "files")
    reference = transformers.CLIPTokenizer.from_pretrained(tmp_path / "files", pad_token="!")
    reference.save_pretrained(tmp_path / "saved")  # tokenizer.json + tokenizer_config.json
    ours = CLIPTokenizer.from_folder(tmp_path / "saved")
    assert ours.pad_id == 0
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    assert ours.encode(PROMPTS).tolist() == expected
