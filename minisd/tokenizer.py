"""CLIP's tokenizer: a prompt becomes 77 integer token ids.

The article's first step: before the text encoder can read "a photo of a cat", the words are cut
into sub-word pieces from a fixed vocabulary of 49,408 entries, by byte-pair encoding (BPE):

    text -> clean -> split into words -> bytes as printable chars -> BPE merges -> ids

The reference is transformers' CLIPTokenizer (what diffusers feeds the model), matched id for id.
Three libraries carry their own Unicode tables (Python's str, the `regex` package, and the Rust
`tokenizers` behind transformers); they agree on every code point Python knows (Unicode 14 on
Python 3.11), and may split or lowercase differently only characters assigned after that.
"""

import gzip
import json
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np
import regex

from .errors import WeightsError, read_json

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"

# \x85, NBSP, \u2028, \u3000 are whitespace; \x1c-\x1f (unlike str.split), \u200b, \ufeff aren't.
WHITESPACE = regex.compile(r"\s+")
# A word is a run of letters, one digit, a run of other symbols, or an English contraction.
WORD = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"""
    r"""|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# transformers' byte-level step then re-splits each word with GPT-2's pattern (its whitespace
# parts never fire here). That only changes the look-alike "<|endoftext|>" a lowercased
# "<|ENDOFTEXT|>" leaves behind: it becomes '<|', 'endoftext', '|>'.
GPT2_WORD = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+""")


def bytes_to_unicode() -> dict[int, str]:
    """A printable character for each of the 256 byte values.

    Printable bytes stand for themselves ('a' -> 'a'); the other 68 (space, control bytes, ...)
    are shifted to code points 256 and up (space -> 'Ġ'), so every BPE piece is visible text.
    The order matters: the vocabulary starts with these 256 characters in this order ('!' = 0).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    shifted = [b for b in range(256) if b not in table]
    for n, b in enumerate(shifted):
        table[b] = chr(256 + n)
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def clean(text: str) -> str:
    """Unicode NFC, every whitespace run to one space, lowercase: transformers' normalizer.

    The whitespace step changes no ids (the word split drops whitespace anyway); it mirrors the
    reference. Lowercasing goes char by char: a word-final 'Σ' becomes 'σ' (str.lower() gives 'ς').
    """
    text = unicodedata.normalize("NFC", text)
    text = WHITESPACE.sub(" ", text)
    return "".join(c.lower() for c in text)


class CLIPTokenizer:
    max_length = 77  # BOS + 75 tokens + EOS

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_id: int):
        self.vocab = vocab
        self.merges = merges
        self.pad_id = pad_id
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # lower rank merges first
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self.cache: dict[str, list[str]] = {}
        # Special tokens written verbatim in a prompt are cut out before any cleaning, so they are
        # case-sensitive ("<|ENDOFTEXT|>" is plain text). A pad token counts too: with SD 2.x's
        # "!", every "!" in a prompt becomes id 0 instead of the word "!</w>".
        self.special = {BOS, EOS, self.id_to_token[pad_id]}
        self.vectors = {}  # textual inversion: a token -> all the tokens of its vectors
        self.split_special()

    def split_special(self):
        """The regex that cuts special and added tokens out of a prompt, longest first."""
        longest_first = sorted(self.special, key=len, reverse=True)
        self.special_split = regex.compile("(" + "|".join(map(regex.escape, longest_first)) + ")")

    @property
    def next_id(self) -> int:
        """The id a token added now gets: one after the vocabulary's last."""
        return max(self.id_to_token) + 1

    def add_token(self, token: str, vectors: int) -> list[int]:
        """Textual inversion: `token` and, for more vectors, `token_1`, `token_2`, ... get the next ids
        after the vocabulary's last (as diffusers adds them). Like special tokens they are cut out
        of a prompt as written, before any cleaning, and `token` stands for all of them."""
        names = [token] + [f"{token}_{i}" for i in range(1, vectors)]
        taken = [name for name in names if name in self.vocab]
        if taken or not token.strip():
            raise ValueError(
                f"token {token!r} cannot be added: {', '.join(taken) or 'it is blank'} (choose another token name)"
            )
        for name in names:
            self.vocab[name] = self.next_id
            self.id_to_token[self.vocab[name]] = name
        self.special.add(token)
        self.vectors[token] = names
        self.split_special()
        self.cache.clear()
        return [self.vocab[name] for name in names]

    # ---- building: from a model folder, or from OpenAI's shipped vocabulary ----

    @classmethod
    def default(cls, pad=EOS) -> "CLIPTokenizer":
        """OpenAI CLIP's vocabulary (packaged with minisd), padding with EOS like SD 1.x (OpenCLIP's
        encoders, SD 2.x's and SDXL's second, pad with "!")."""
        source = resources.files("minisd") / "data" / "bpe_simple_vocab_16e6.txt.gz"
        lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # skip header
        symbols = list(BYTE_TO_CHAR.values())
        ends = [s + END_OF_WORD for s in symbols]
        words = symbols + ends + ["".join(m) for m in merges] + [BOS, EOS]
        vocab = {w: i for i, w in enumerate(words)}
        return cls(vocab, merges, pad_id=vocab[pad])

    @classmethod
    def from_folder(cls, path) -> "CLIPTokenizer":
        """Read a diffusers `tokenizer/` folder: vocab.json + merges.txt, or tokenizer.json.

        Each file is checked as it is read: a WeightsError names the file and what is wrong.
        """
        folder = Path(path)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = read_json(folder / "vocab.json")
            merges = read_merges(folder / "merges.txt")
        elif (folder / "tokenizer.json").is_file():
            model = read_json(folder / "tokenizer.json").get("model")
            if not isinstance(model, dict) or not isinstance(model.get("merges"), list):
                raise WeightsError(f"{folder / 'tokenizer.json'} has no BPE model (model.vocab, model.merges)")
            vocab, merges = model.get("vocab"), [merge_rule(folder / "tokenizer.json", m) for m in model["merges"]]
        else:
            raise FileNotFoundError(
                f"No tokenizer in {folder}: expected vocab.json + merges.txt, or tokenizer.json. "
                "Point at the model's tokenizer/ folder."
            )
        check_vocabulary(folder, vocab)
        pad = read_pad_token(folder)
        if pad not in vocab:
            raise WeightsError(f"pad_token {pad!r} from {folder} is not in the vocabulary")
        return cls(vocab, merges, pad_id=vocab[pad])

    def save(self, folder) -> None:
        """Write vocab.json, merges.txt and tokenizer_config.json, the layout transformers and
        diffusers read (the config names the special tokens and the 77-token length)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = json.dumps(self.vocab, ensure_ascii=False)
        merges = "".join(f"{a} {b}\n" for a, b in self.merges)
        config = {
            "model_max_length": self.max_length,
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": EOS,
            "pad_token": self.id_to_token[self.pad_id],
        }
        (folder / "vocab.json").write_text(vocab, encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    # ---- text -> pieces -> ids ----

    def bpe(self, word: str) -> list[str]:
        """Merge the characters of one word, lowest-ranked pair first, until no merge applies."""
        if word in self.cache:
            return self.cache[word]
        symbols = [*word[:-1], word[-1] + END_OF_WORD]  # 'cat' -> ['c', 'a', 't</w>']
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:])
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            symbols = merge_pair(symbols, best)
        self.cache[word] = symbols
        return symbols

    def tokenize(self, text: str) -> list[str]:
        """Text -> BPE pieces, e.g. 'A cat!' -> ['a</w>', 'cat</w>', '!</w>']."""
        pieces = []
        for part in self.special_split.split(text):
            if part in self.special:
                pieces += self.vectors.get(part, [part])
                continue
            words = [w for word in WORD.findall(clean(part)) for w in GPT2_WORD.findall(word)]
            for word in words:
                pieces += self.bpe("".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8")))
        return pieces

    def token_ids(self, text: str) -> list[int]:
        """Text -> ids, without BOS/EOS, padding or truncation."""
        return [self.vocab[piece] for piece in self.tokenize(text)]

    def encode(self, texts: list[str] | str) -> np.ndarray:
        """Prompts -> (B, 77) int64 ids: BOS, the first 75 tokens, EOS, then pad_id."""
        if isinstance(texts, str):
            texts = [texts]
        return self.rows([self.token_ids(text)[: self.max_length - 2] for text in texts])

    def encode_chunks(self, text: str, count: int | None = None) -> np.ndarray:
        """A long prompt -> (count, 77) ids: 75-token chunks, each a row with its own BOS/EOS.

        count defaults to as many chunks as the prompt needs (at least 1); more gives empty rows.
        """
        ids, size = self.token_ids(text), self.max_length - 2
        count = count or max(1, -(-len(ids) // size))
        if len(ids) > count * size:
            raise ValueError(f"the prompt needs {-(-len(ids) // size)} chunks of {size} tokens, not {count}")
        return self.rows([ids[i * size : (i + 1) * size] for i in range(count)])

    def rows(self, token_lists: list[list[int]]) -> np.ndarray:
        """Lists of at most 75 ids -> (B, 77) int64: BOS, the ids, EOS, then pad_id."""
        ids = np.full((len(token_lists), self.max_length), self.pad_id, dtype=np.int64)
        for row, tokens in zip(ids, token_lists):
            tokens = [self.bos_id, *tokens, self.eos_id]
            row[: len(tokens)] = tokens
        return ids

    def truncated_words(self, text: str) -> str | None:
        """The part of `text` cut off by `encode` (to warn about it), or None if it all fits."""
        dropped = self.token_ids(text)[self.max_length - 2 :]
        return self.decode(dropped) if dropped else None

    def decode(self, ids) -> str:
        """Ids -> text: undo the byte mapping, each `</w>` becomes a space."""
        chars = "".join(self.id_to_token[int(i)] for i in ids)
        text = bytes(CHAR_TO_BYTE[c] for c in chars).decode("utf-8", errors="replace")
        return text.replace(END_OF_WORD, " ").strip()


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every occurrence of `pair`, left to right, by the joined symbol."""
    merged, i = [], 0
    while i < len(symbols):
        if tuple(symbols[i : i + 2]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def read_pad_token(folder: Path) -> str:
    """The pad token named by the folder's config (special_tokens_map.json wins), else EOS."""
    pad = EOS
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if file.is_file():
            pad = read_json(file).get("pad_token") or pad
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if not isinstance(pad, str):
                raise WeightsError(f"{file}: pad_token must be a token (a string, or {{'content': ...}}), got {pad!r}")
    return pad


def read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt: one merge rule per line, two symbols separated by a space (a #version line first)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise WeightsError(f"{path} is not UTF-8 text ({error}): restore it from the model's download") from None
    return [merge_rule(path, line, number) for number, line in enumerate(lines, 1) if line and not line.startswith("#")]


def merge_rule(path: Path, rule, line=None) -> tuple[str, str]:
    """One merge rule, "a b" or ["a", "b"], as the pair (a, b); a WeightsError naming the file if malformed."""
    pair = rule.split() if isinstance(rule, str) else rule
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
        where = f"line {line}" if line else "a merge rule"
        raise WeightsError(f"{path}: {where} is {rule!r:.80}, not two symbols (a merge rule is 'a b')")
    return tuple(pair)


def check_vocabulary(folder: Path, vocab) -> None:
    """The vocabulary maps tokens to ids >= 0 and holds CLIP's start and end tokens."""
    if not isinstance(vocab, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()
    ):
        raise WeightsError(f"{folder}: the vocabulary must map each token to an id >= 0")
    missing = [token for token in (BOS, EOS) if token not in vocab]
    if missing:
        raise WeightsError(f"{folder}: the vocabulary lacks {', '.join(missing)}: not a CLIP tokenizer")
