"""Prompt weights in AUTOMATIC1111's syntax: the parser on a table of inputs (the examples its
own documentation gives, nesting, escapes, BREAK, and malformed prompts read literally or
refused), its chunks of 75 tokens (the comma backtrack), and the emphasis against its closed
form, through the pipeline on the committed tiny model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import minisd
from helpers import TINY_SD
from minisd.cli import main
from minisd.prompt_weights import BREAK, emphasize, parse, weighted_chunks
from minisd.tokenizer import CLIPTokenizer

UP, DOWN = 1.1, 1 / 1.1

# prompt: its (text, weight) pieces; weights multiplied in the order the groups close
PARSED = {
    # the examples of AUTOMATIC1111's own documentation (prompt_parser.parse_prompt_attention)
    "normal text": [("normal text", 1.0)],
    "an (important) word": [("an ", 1.0), ("important", UP), (" word", 1.0)],
    "(unbalanced": [("unbalanced", UP)],
    r"\(literal\]": [("(literal]", 1.0)],
    "(unnecessary)(parens)": [("unnecessaryparens", UP)],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ("a ", 1.0),
        ("house", 1.3 * UP * UP),
        (" ", UP),
        ("on", DOWN * UP),
        (" a ", UP),
        ("hill", 0.5 * UP),
        (", sun, ", UP),
        ("sky", UP * UP * UP * UP),
        (".", UP),
    ],
    # weights, nesting, escapes
    "(word:1.3)": [("word", 1.3)],
    "(word: 0.5 )": [("word", 0.5)],
    "(word:-1)": [("word", -1.0)],
    "[word]": [("word", DOWN)],
    "[[word]]": [("word", DOWN * DOWN)],
    "((a [b] c:2))": [("a ", 2 * UP), ("b", DOWN * 2 * UP), (" c", 2 * UP)],
    r"a \\ b": [("a \\ b", 1.0)],
    r"a \ b": [("a  b", 1.0)],  # a lone backslash is dropped
    "": [("", 1.0)],
    # BREAK
    "a BREAK b": [("a", 1.0), (BREAK, -1.0), ("b", 1.0)],
    "(a BREAK b)": [("a", UP), (BREAK, -1.0 * UP), ("b", UP)],
    "BREAKFAST": [("BREAKFAST", 1.0)],
    # malformed: read literally, as AUTOMATIC1111 reads them
    "word)": [("word)", 1.0)],
    "a ] b": [("a ] b", 1.0)],
    "(word:abc)": [("word:abc", UP)],
    "ratio 16:9": [("ratio 16:9", 1.0)],
    "a:1.5)": [("a:1.5)", 1.0)],
    "(a:+-)": [("a:+-", UP)],
}


@pytest.mark.parametrize("prompt", PARSED)
def test_parse(prompt):
    pieces = parse(prompt)
    assert [text for text, _ in pieces] == [text for text, _ in PARSED[prompt]]
    assert [weight for _, weight in pieces] == pytest.approx([weight for _, weight in PARSED[prompt]], rel=1e-12)


@pytest.mark.parametrize("prompt", ["(a:1.2.3)", "(a:.)", "(a:-.)"])
def test_a_weight_that_is_not_a_number_is_an_error(prompt):
    with pytest.raises(ValueError, match="is not a number: write it as"):
        parse(prompt)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab ()[]:.\\0123456789-BREAK,", max_size=40))
def test_any_prompt_parses_or_gets_the_documented_error(prompt):
    try:
        pieces = parse(prompt)
    except ValueError as error:
        assert "is not a number" in str(error)
    else:
        texts = [text for text, _ in pieces if text is not BREAK]
        assert all(isinstance(text, str) for text in texts)


TOKENIZER = CLIPTokenizer.default()


def test_chunks_weights_and_padding():
    ids, weights = weighted_chunks(TOKENIZER, parse("a (red:1.5) circle"), count=2)
    red = TOKENIZER.token_ids("red")[0]
    expected = TOKENIZER.rows([TOKENIZER.token_ids("a") + [red] + TOKENIZER.token_ids("circle"), []])
    np.testing.assert_array_equal(ids, expected)  # the second chunk empty, as an empty prompt
    assert weights.shape == (2, 77) and weights[0, 2] == np.float32(1.5)
    assert (np.delete(weights[0], 2) == 1).all() and (weights[1] == 1).all()


def test_break_starts_a_chunk():
    ids, _ = weighted_chunks(TOKENIZER, parse("a red circle BREAK a blue square"))
    np.testing.assert_array_equal(
        ids, TOKENIZER.rows([TOKENIZER.token_ids(t) for t in ("a red circle", "a blue square")])
    )


def test_a_full_chunk_moves_the_words_after_its_last_comma():
    """70 words, a comma, 10 words: the 75-token chunk would end 4 words after the comma; the words
    after it move to the next chunk (5 tokens from the comma: within the backtrack of 20)."""
    words = TOKENIZER.token_ids("cat")[0], TOKENIZER.token_ids("dog")[0]
    ids, _ = weighted_chunks(TOKENIZER, parse("cat " * 70 + ", " + "dog " * 10))
    comma = TOKENIZER.vocab[",</w>"]
    np.testing.assert_array_equal(ids, TOKENIZER.rows([[words[0]] * 70 + [comma], [words[1]] * 10]))
    far, _ = weighted_chunks(TOKENIZER, parse("cat " * 40 + ", " + "dog " * 40))  # the comma is too far back
    np.testing.assert_array_equal(far, TOKENIZER.rows([[words[0]] * 40 + [comma] + [words[1]] * 34, [words[1]] * 6]))


def test_emphasis_is_the_closed_form():
    rng = np.random.default_rng(3)
    z, w = rng.standard_normal((2, 77, 8), dtype=np.float32), rng.uniform(0.5, 1.5, (2, 77)).astype(np.float32)
    expected = [z[c] * w[c][:, None] * (z[c].mean() / (z[c] * w[c][:, None]).mean()) for c in range(2)]
    np.testing.assert_allclose(emphasize(z, w), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def pipe():
    return minisd.load(TINY_SD)


def test_the_pipeline_encodes_what_the_closed_form_says(pipe):
    """The weighted prompt's vectors: the text encoder's output for the weighted chunks, each
    token's vector times its weight, the mean restored; the negative prompt weighted too."""
    context = pipe.encode_prompt("a (red:1.5) circle", "[blue] square", guidance=7.5)
    expected = []
    for text in ("[blue] square", "a (red:1.5) circle"):
        ids, weights = weighted_chunks(pipe.tokenizer, parse(text))
        z = pipe.text_encoder(ids)  # (1, 77, D)
        expected.append(z * weights[:, :, None] * (z.mean() / (z * weights[:, :, None]).mean()))
    np.testing.assert_allclose(context, np.concatenate(expected), rtol=1e-5, atol=1e-6)


def test_weights_of_one_change_nothing_and_off_reads_brackets_as_text(pipe):
    options = dict(steps=3, seed=2, height=64, width=64, progress=False)
    plain = np.asarray(pipe("a red circle on white", **options))
    assert np.array_equal(np.asarray(pipe("(a red circle:1.0) on white", **options)), plain)
    assert not np.array_equal(np.asarray(pipe("a (red:1.8) circle on white", **options)), plain)
    literal = pipe.encode_prompt("a (red) circle", guidance=1, prompt_weights=False)
    np.testing.assert_array_equal(literal, pipe._text_vectors(pipe.tokenizer.encode("a (red) circle")))


def test_command_line_records_the_choice(tmp_path):
    output = tmp_path / "out.png"
    arguments = ["a (red:1.4) circle", "--weights", str(TINY_SD), "--steps", "2", "-o", str(output)]
    assert main([*arguments, "--prompt-weights", "off"]) == 0
    assert Image.open(output).text["prompt_weights"] == "off"
