"""Prompt weights in AUTOMATIC1111's syntax: `(word:1.3)`, `(word)`, `[word]`, `BREAK`.

People paste prompts written for AUTOMATIC1111's web UI. It reads a prompt left to right:

    \\(  \\)  \\[  \\]  \\\\   a literal bracket or backslash (a lone backslash is dropped)
    (              opens a group; when it closes, the weight of its text is multiplied:
      :N)          ... by the number N (1.3, .5, -1; spaces allowed around it)
      )            ... by 1.1
    [ ... ]        a group whose weight is divided by 1.1
    BREAK          (the upper-case word) ends the current chunk of 75 tokens
    anything else  text, weight 1

Groups nest and their factors multiply. A bracket that never closes weighs everything after it
(1.1 for `(`, 1/1.1 for `[`); a closing bracket with nothing open, and a `:` that is not
`:N)`, are plain text. A weight that looks like a number but is not one (`(a:1.2.3)`) is an
error (AUTOMATIC1111 crashes on it). Neighbouring pieces of equal weight are merged.

`parse` gives the (text, weight) pieces; `weighted_chunks` tokenizes each piece on its own into
chunks of 75 tokens as AUTOMATIC1111 does (a chunk that fills up moves the words after its last
comma, if within COMMA_BACKTRACK tokens, to the next); `emphasize` scales each token's text
vector by its weight and restores the chunk's mean: z' = z·w · mean(z) / mean(z·w).
"""

import re

import numpy

from .backend import array_module

UP, DOWN = 1.1, 1 / 1.1  # what ( ) and [ ] multiply a weight by
BREAK = object()  # the piece that ends a chunk

# One token of the syntax a match, in the order AUTOMATIC1111 tries them.
TOKENS = re.compile(
    r"""
      \\[()\[\]\\]                      # an escaped bracket or backslash
    | \\                                # a lone backslash: text
    | [(\[]                             # an opening bracket
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)  # ':N)' closes a round group with weight N
    | [)\]]                             # a closing bracket
    | [^\\()\[\]:]+                     # text
    | :                                 # a colon that is not ':N)': text
    """,
    re.VERBOSE,
)
BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
SYNTAX = re.compile(r"[()\[\]]|\bBREAK\b")


def has_weights(text):
    """Whether the prompt uses the syntax at all (brackets or BREAK)."""
    return SYNTAX.search(text) is not None


def parse(text):
    """[(text, weight) or BREAK] of a prompt; see the module's docstring for the grammar."""
    pieces = []  # [text, weight] lists, multiplied in place as groups close
    round_groups, square_groups = [], []  # where each open group's pieces start

    def weigh(start, factor):
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in TOKENS.finditer(text):
        token, weight = match.group(0), match.group("weight")
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token in "([":
            (round_groups if token == "(" else square_groups).append(len(pieces))
        elif weight is not None and round_groups:
            weigh(round_groups.pop(), number(weight, text))
        elif token == ")" and round_groups:
            weigh(round_groups.pop(), UP)
        elif token == "]" and square_groups:
            weigh(square_groups.pop(), DOWN)
        else:
            for i, part in enumerate(BREAK_WORD.split(token)):
                if i:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    for start in round_groups:
        weigh(start, UP)
    for start in square_groups:
        weigh(start, DOWN)
    return merge([tuple(piece) for piece in pieces] or [("", 1.0)])


def number(weight, text):
    try:
        return float(weight)
    except ValueError:
        raise ValueError(f"prompt weight {weight!r} in {text!r} is not a number: write it as (word:1.3)") from None


def merge(pieces):
    """Neighbouring text pieces of equal weight joined into one."""
    merged = [pieces[0]]
    for text, weight in pieces[1:]:
        last_text, last_weight = merged[-1]
        if weight == last_weight and text is not BREAK and last_text is not BREAK:
            merged[-1] = (last_text + text, weight)
        else:
            merged.append((text, weight))
    return merged


COMMA_BACKTRACK = 20  # AUTOMATIC1111's comma_padding_backtrack


def weighted_chunks(tokenizer, pieces, count=None):
    """(ids, weights), each (chunks, 77): every chunk BOS, up to 75 tokens, EOS, padding; the
    start, end and padding tokens weigh 1. `count` adds empty chunks up to that many."""
    chunk_size, comma = tokenizer.max_length - 2, tokenizer.vocab.get(",</w>")
    chunks, tokens, weights, last_comma = [], [], [], -1

    def next_chunk(kept=0):
        """Close the chunk but its last `kept` tokens, which start the next one."""
        nonlocal last_comma
        cut = len(tokens) - kept
        chunks.append((tokens[:cut], weights[:cut]))
        del tokens[:cut], weights[:cut]
        last_comma = -1

    for text, weight in pieces:
        if text is BREAK:
            next_chunk()
            continue
        for token in tokenizer.token_ids(text):
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == chunk_size and last_comma != -1 and chunk_size - last_comma <= COMMA_BACKTRACK:
                next_chunk(kept=chunk_size - last_comma - 1)  # the words after the comma move on
            if len(tokens) == chunk_size:
                next_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        next_chunk()
    chunks += [([], [])] * ((count or 0) - len(chunks))
    ids = tokenizer.rows([chunk_tokens for chunk_tokens, _ in chunks])  # (chunks, 77)
    multipliers = numpy.ones(ids.shape, numpy.float32)
    for row, (_, chunk_weights) in zip(multipliers, chunks):
        row[1 : 1 + len(chunk_weights)] = chunk_weights
    return ids, multipliers


def emphasize(vectors, weights):
    """Each token's text vector times its weight, then each chunk's mean restored:
    (chunks, 77, D) and (chunks, 77) -> (chunks, 77, D)."""
    xp = array_module(vectors)
    weights = xp.asarray(weights, dtype=vectors.dtype)[:, :, None]  # (chunks, 77, 1)
    scaled = vectors * weights
    mean, scaled_mean = vectors.mean(axis=(1, 2), keepdims=True), scaled.mean(axis=(1, 2), keepdims=True)
    return scaled * (mean / scaled_mean)
