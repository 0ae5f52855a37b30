"""Every CPU core for NumPy work, in blocks that stay in the cache.

NumPy's matrix products already run on every core (BLAS has its own threads), but everything
else (an exp, a sum, `x * sigmoid(x)`) runs on one core, one whole-array pass through main
memory per operation. `in_blocks` cuts such work into blocks of about BLOCK_ELEMENTS elements,
so the temporaries a block makes stay in the core's cache, and hands the blocks to one thread
per core. NumPy releases Python's lock inside ufuncs and BLAS calls, so the threads really run
at once. While they do, BLAS is held to one thread each, so matrix products inside a block
(attention's per-head products) do not fight over the cores.

Only the CPU floor (cpu.py) uses it; on a GPU the work is parallel already.
"""

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy
from threadpoolctl import ThreadpoolController

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

# A block of work: 256K float32 values = 1 MB. Measured on SD's layers (GELU, SiLU, GroupNorm):
# 4x smaller blocks spend their time in Python's per-call overhead and in the threads' hand-offs
# of Python's lock; 4x larger ones fall out of the cache.
BLOCK_ELEMENTS = 256 * 1024

_inside_block = threading.local()


@functools.cache
def _workers():
    return ThreadPoolExecutor(CORES, thread_name_prefix="minisd")


@functools.cache
def _blas():
    return ThreadpoolController()


def in_blocks(work, count, item_size):
    """Call `work(items)` on slices `items` that together cover range(count) once.

    An item is `item_size` elements of work (a row, a head); a slice holds about
    BLOCK_ELEMENTS of them (at least one item), and the slices are dealt out to the cores like
    cards. Called from inside a block, it runs there, in order (no thread waits on itself).
    """
    if getattr(_inside_block, "active", False):
        work(slice(0, count))
        return
    per_block = max(1, BLOCK_ELEMENTS // max(1, item_size))
    blocks = [slice(start, min(start + per_block, count)) for start in range(0, count, per_block)]
    runs = [blocks[core::CORES] for core in range(min(CORES, len(blocks)))]
    if len(runs) == 1:
        _run(work, blocks)
        return
    with _blas().limit(limits=1, user_api="blas"):
        for future in [_workers().submit(_run, work, run) for run in runs]:
            future.result()  # re-raises a worker's exception here


def _run(work, blocks):
    _inside_block.active = True
    try:
        for items in blocks:
            work(items)
    finally:
        _inside_block.active = False


def elementwise(fn, *arrays, out=None):
    """fn(*arrays) for elementwise `fn` and arrays of one shape, computed block by block on every
    core (NumPy would make one pass through memory per operation of `fn`, on one core). The
    result goes into `out` if given (it may be one of the arrays), else into a new array."""
    rows = [a.reshape(-1, a.shape[-1]) for a in arrays]  # (N, last axis): a block is some rows
    out = numpy.empty(arrays[0].shape, arrays[0].dtype) if out is None else out
    out_rows = out.reshape(rows[0].shape)

    def compute(items):
        out_rows[items] = fn(*(r[items] for r in rows))

    in_blocks(compute, rows[0].shape[0], rows[0].shape[1])
    return out
