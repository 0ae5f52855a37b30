"""Reading .safetensors files: every rule of the format checked, then the tensors memory-mapped.

    8 bytes        N, the header's length (little-endian)
    N bytes        the header: a JSON object {key: {"dtype", "shape", "data_offsets": [begin, end]},
                   "__metadata__": {str: str}}
    the rest       the data: every tensor's bytes, back to back, offsets counted from here

People load checkpoints downloaded from strangers, and safetensors exists so that doing so is
safe. So before any tensor is made, the header is checked against the rules the safetensors
library enforces (a bounded header, a JSON object, known dtypes, shapes of non-negative
integers, two integer offsets per tensor, tensors contiguous, not overlapping and covering the
data exactly, sizes consistent), each failure a WeightsError naming the file, the tensor and
the fix. Then the safetensors library itself opens the file (a header parse, no tensor read)
as a second judge. The tensors are then views into one memory map of the data: zero-copy (a
float32 weight is read from the page cache, never copied), which the library's own numpy
loader is not.
"""

import json
import math
from pathlib import Path

import numpy

from .errors import WeightsError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
# The format's dtypes and their sizes in bytes; minisd computes with those of NUMPY_DTYPES.
FORMAT_DTYPES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4"}


def read_safetensors(path):
    """{key: array} memory-mapped from a .safetensors file, every rule of the format checked first.

    bfloat16 tensors are widened to float32 (NumPy has no bfloat16): those are copies.
    """
    path = Path(path)
    header_len, header = read_safetensors_header(path)
    data_size = path.stat().st_size - 8 - header_len
    tensors = check_tensors(path, header, data_size)
    check_with_the_library(path)
    data = numpy.memmap(path, numpy.uint8, "r", offset=8 + header_len) if data_size else numpy.zeros(0, numpy.uint8)
    return {key: _array(path, key, dtype, shape, data[begin:end]) for key, dtype, shape, begin, end in tensors}


def read_safetensors_header(path):
    """(N, the JSON header as a dict) of a .safetensors file, its length and JSON checked."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if header_len is None or not 0 < header_len <= size - 8:
            raise WeightsError(
                f"{path} is not a safetensors file: its first 8 bytes give a header length of {header_len}, "
                f"but the file holds {size} bytes (truncated, or another format); {FIX}"
            )
        if header_len > MAX_HEADER_BYTES:
            raise WeightsError(
                f"{path}: its header claims {header_len} bytes, over the format's limit of {MAX_HEADER_BYTES}; {FIX}"
            )
        raw = file.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise WeightsError(f"{path} is not a safetensors file: its header is not JSON ({reason}); {FIX}") from None
    if not isinstance(header, dict):
        raise WeightsError(
            f"{path}: a safetensors header is a JSON object of tensors, this one is a {type(header).__name__}; {FIX}"
        )
    check_metadata(path, header.get("__metadata__", {}))
    return header_len, header


FIX = "the file is corrupt or not a checkpoint: download it again"


def check_metadata(path, metadata):
    """__metadata__ is an object of strings."""
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise WeightsError(f"{path}: __metadata__ must be a JSON object of strings, got {metadata!r:.200}; {FIX}")


def check_tensors(path, header, data_size):
    """[(key, dtype, shape, begin, end)] of every tensor, in data order, checked: each entry well
    formed and its size consistent with its offsets, the tensors back to back from the first byte
    of the data to its last."""
    tensors = sorted(
        (check_entry(path, key, info) for key, info in header.items() if key != "__metadata__"),
        key=lambda tensor: tensor[3:],
    )
    position, previous = 0, None
    for key, _, _, begin, end in tensors:
        if begin != position:
            where = f"after tensor {previous!r}" if previous else "at the start of the data"
            what = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise WeightsError(
                f"{path}: tensor {key!r} starts at byte {begin} {where}, which ends at {position}: it {what}; {FIX}"
            )
        position, previous = end, key
    if position != data_size:
        raise WeightsError(
            f"{path}: the tensors cover {position} bytes of data, the file holds {data_size} "
            f"({'truncated' if position > data_size else 'bytes no tensor claims'}); {FIX}"
        )
    return tensors


def check_entry(path, key, info):
    """(key, dtype, shape, begin, end) of one header entry, or a WeightsError naming what is wrong."""
    where = f"{path}: tensor {key!r}"
    if not isinstance(info, dict):
        raise WeightsError(f"{where} is described by a {type(info).__name__}, not an object; {FIX}")
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in info]
    if missing:
        raise WeightsError(f"{where} has no {', '.join(missing)}; {FIX}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in FORMAT_DTYPES:
        raise WeightsError(f"{where} has dtype {dtype!r:.100}, not one of {', '.join(FORMAT_DTYPES)}; {FIX}")
    if not isinstance(shape, list) or not all(is_count(n) for n in shape):
        raise WeightsError(f"{where} has shape {shape!r:.100}: a list of non-negative integers is needed; {FIX}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(n) for n in offsets):
        raise WeightsError(f"{where} has data_offsets {offsets!r:.100}: two non-negative integers are needed; {FIX}")
    begin, end = offsets
    size = math.prod(shape) * FORMAT_DTYPES[dtype]  # Python integers: no overflow
    if end - begin != size:
        raise WeightsError(
            f"{where} is {dtype} of shape {tuple(shape)}, {size} bytes, but its data_offsets "
            f"[{begin}, {end}] hold {end - begin}; {FIX}"
        )
    return key, dtype, tuple(shape), begin, end


def is_count(value):
    """A non-negative JSON integer (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_with_the_library(path):
    """The safetensors library's own judgement of the header (it reads no tensor)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy"):
            pass
    except SafetensorError as error:
        raise WeightsError(f"{path}: the safetensors library refuses it ({error}); {FIX}") from None


def _array(path, key, dtype, shape, data):
    if dtype not in NUMPY_DTYPES:
        raise WeightsError(
            f"{path}: tensor {key!r} has dtype {dtype}, which minisd cannot compute with "
            f"(it reads {', '.join(NUMPY_DTYPES)})"
        )
    array = data.view(NUMPY_DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        array = (array.astype(numpy.uint32) << 16).view(numpy.float32)
    return array
