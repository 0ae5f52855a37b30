"""Textual inversion: vectors someone trained for a new word, loaded under their token.

A textual-inversion file holds one or a few vectors in the text encoder's input space: new rows
of its token-embedding table, learned so that a new word ("<cat-toy>") means a particular thing.
Two layouts are shared, both .safetensors:

    AUTOMATIC1111         {"emb_params": (n, D)}            the token: the file's name
    diffusers             {"<token>": (D,) or (n, D)}        the token: the key

Loading appends the token (and `<token>_1`, `<token>_2`, ... for more vectors, as diffusers
names them) to the tokenizer, and the vectors as rows of the table with the same ids. A
prompt's `<token>` then stands for all its vectors.
"""

from pathlib import Path

import numpy

from .errors import WeightsError
from .safetensors_file import read_safetensors

PICKLES = (".pt", ".bin", ".ckpt", ".pth")


def read_embedding(path, token=None):
    """(token, vectors (n, D) float32) of a textual-inversion file; `token` overrides the file's."""
    path = Path(path)
    if path.suffix in PICKLES:
        raise WeightsError(
            f"{path} is a PyTorch pickle, which can run code when loaded: minisd reads "
            ".safetensors embeddings only (convert it once with torch and safetensors)"
        )
    tensors = read_safetensors(path)
    if len(tensors) != 1:
        raise WeightsError(
            f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}); a "
            "textual-inversion file holds one: emb_params (AUTOMATIC1111) or the token (diffusers)"
        )
    ((key, vectors),) = tensors.items()
    vectors = numpy.asarray(vectors)
    if vectors.ndim == 1:
        vectors = vectors[None]  # one vector: (D,) -> (1, D)
    if vectors.ndim != 2 or 0 in vectors.shape or vectors.dtype.kind != "f":
        raise WeightsError(
            f"{path}: {key} is {vectors.dtype} of shape {vectors.shape}; an embedding is a "
            "float (D,) vector or (n, D) vectors"
        )
    token = token or (path.stem if key == "emb_params" else key)
    return token, vectors.astype(numpy.float32)


def add_embedding(tokenizer, text_encoder, backend, path, token=None):
    """Load a textual-inversion file into `tokenizer` and `text_encoder`'s embedding table; the token."""
    token, vectors = read_embedding(path, token)
    table = text_encoder.text_model.embeddings.token_embedding
    rows, width = table.weight.shape
    if vectors.shape[1] != width:
        raise WeightsError(
            f"{path}: its vectors are {vectors.shape[1]} wide, this text encoder's {width}: "
            "the embedding was trained for another model"
        )
    if tokenizer.next_id != rows:
        raise WeightsError(
            f"the tokenizer's next id {tokenizer.next_id} is not the embedding table's next row {rows}: "
            "the tokenizer does not belong to this text encoder"
        )
    tokenizer.add_token(token, len(vectors))
    table.weight = backend.xp.concatenate([table.weight, backend.asarray(vectors, table.weight.dtype)])  # (rows + n, D)
    return token
