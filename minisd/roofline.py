"""Where a GPU's time must go in one SD 1.5 UNet step: FLOPs and bytes per layer, and the floor each sets.

    python -m minisd.roofline [--latent 64] [--batch 2] [--tflops 790] [--bandwidth 3350]

No layer can finish faster than its multiply-adds at the card's peak (then it is compute-bound)
or its bytes at the memory's bandwidth (memory-bound): floor = max(FLOPs / peak, bytes /
bandwidth), the roofline model (Williams, Waterman & Patterson, 2009). This script runs one UNet
step (SD 1.5 architecture, random weights, on the CPU) with forward hooks, counts each layer's
FLOPs and its float16 bytes (inputs, weights and output each read or written once: what an
ideal fused kernel moves; attention as a flash kernel, which never writes the score matrix),
groups equal layers, and prints them largest floor first, then the totals per kind of layer.
The defaults are the GPU issue's H100 figures: 790 TFLOP/s of dense float16 matrix work and
3.35 TB/s of HBM3 bandwidth. The activations between layers (SiLU, residual adds, concatenations)
are not counted: a fused kernel does them on the way.

    python -m minisd.roofline --measure --backend cupy [--dtype float16] [--tflops 989 --bandwidth 4800]

also runs the step on the backend and adds what each layer took: its own time (less that of the
counted layers it calls: an Attention module's projections are linear layers), from CUDA events
on the GPU's stream (perf_counter on the CPU), the mean of --repeat steps after a warm-up, and
its ratio to the floor; the last line says how much of the whole step fell outside the counted
layers (activations, adds, concatenations, the timestep embedding, and the GPU waiting for Python).
"""

import argparse
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy

from . import ops
from .backend import Backend
from .blocks import Attention
from .layers import Conv2d, GroupNorm, LayerNorm, Linear
from .module import forward_hooks
from .random_model import build
from .unet import GEGLU

HALF = 2  # bytes per float16 value


# FLOPs (2 per multiply-add) of the layers that do matrix work; bench.py counts with count_flops too.


def conv_flops(weight, output):
    """A convolution, counted as direct convolution (Winograd's savings show as a higher rate)."""
    return 2 * output.size * int(numpy.prod(weight.shape[1:]))


def linear_flops(weight, output):
    return 2 * output.size * weight.shape[1]


def attention_flops(batch, q_len, k_len, width):
    """softmax(QKᵀ/√d)V over all heads (width = heads·d): QKᵀ and PV, 2 multiply-adds per
    (query, key, channel)."""
    return 4 * batch * q_len * k_len * width


@contextlib.contextmanager
def count_flops():
    """Count multiply-adds (×2) of convolutions, linear layers and attention while active."""
    total = [0]
    conv_call, linear, attention = Conv2d.__call__, ops.linear, ops.attention

    def counted_conv(self, x):
        y = conv_call(self, x)
        total[0] += conv_flops(self.weight, y)
        return y

    def counted_linear(x, weight, bias=None):
        y = linear(x, weight, bias)
        total[0] += linear_flops(weight, y)
        return y

    def counted_attention(q, k, v, heads, mask=None):
        total[0] += attention_flops(q.shape[0], q.shape[1], k.shape[1], q.shape[2])
        return attention(q, k, v, heads, mask)

    Conv2d.__call__, ops.linear, ops.attention = counted_conv, counted_linear, counted_attention
    try:
        yield total
    finally:
        Conv2d.__call__, ops.linear, ops.attention = conv_call, linear, attention


@dataclass
class Work:
    """What one layer (or a group of equal ones) computes and moves."""

    kind: str  # conv, linear, attention, norm, geglu
    flops: int = 0
    bytes: int = 0
    calls: int = 0

    def floor(self, flops_per_s, bytes_per_s):
        """(seconds, "compute" or "memory"): the roofline's lower bound on the time."""
        compute, memory = self.flops / flops_per_s, self.bytes / bytes_per_s
        return (compute, "compute") if compute >= memory else (memory, "memory")


COUNTED = (Conv2d, Linear, Attention, GroupNorm, LayerNorm, GEGLU)  # the layers layer_work describes


def layer_work(module, args, output):
    """(label, Work) for one call of a counted layer, or None for the other modules."""
    if isinstance(module, Conv2d):
        x, weight = args[0], module.weight
        batch, channels, height, width = x.shape
        label = f"conv {weight.shape[2]}x{weight.shape[3]} {channels}->{weight.shape[0]} on {height}x{width}"
        return label, Work("conv", conv_flops(weight, output), HALF * (x.size + weight.size + output.size))
    if isinstance(module, Linear):
        x, weight = args[0], module.weight
        label = f"linear {weight.shape[1]}->{weight.shape[0]} on {x.size // x.shape[-1]} tokens"
        return label, Work("linear", linear_flops(weight, output), HALF * (x.size + weight.size + output.size))
    if isinstance(module, Attention):  # the core softmax(QKᵀ/√d)V; its projections count as linear
        x = args[0]
        context = args[1] if len(args) > 1 and args[1] is not None else x
        batch, q_len = x.shape[:2]
        k_len, width = context.shape[1], module.to_q.weight.shape[0]
        label = f"attention {q_len}x{k_len} tokens, {module.heads} heads of {width // module.heads}"
        flops = attention_flops(batch, q_len, k_len, width)
        return label, Work("attention", flops, HALF * batch * (2 * q_len + 2 * k_len) * width)  # q, k, v, out
    if isinstance(module, (GroupNorm, LayerNorm)):
        label = f"{type(module).__name__} on {output.shape}"
        return label, Work("norm", 0, HALF * 2 * output.size)
    if isinstance(module, GEGLU):  # hidden · GELU(gate) after its projection (counted as linear)
        return f"GEGLU on {output.shape}", Work("geglu", 0, HALF * 3 * output.size)
    return None


def count_unet_step(unet, sample, context):
    """{label: Work} summed over one UNet forward, in first-call order."""
    layers = {}

    def record(key, module, args, output):
        found = layer_work(module, args, output)
        if found:
            label, work = found
            total = layers.setdefault(label, Work(work.kind))
            total.flops += work.flops
            total.bytes += work.bytes
            total.calls += 1

    with forward_hooks(unet, record):
        unet(sample, 981, context)
    return layers


class WallClock:
    """Time marks on the CPU: the NumPy backend's layers are done when they return."""

    def mark(self):
        return time.perf_counter()

    def seconds(self, start, end):
        return end - start

    def wait(self, mark):
        pass


class EventClock:
    """Time marks on the GPU: CUDA events recorded in the stream, read once the step is done."""

    def __init__(self, cupy):
        self.cupy = cupy

    def mark(self):
        event = self.cupy.cuda.Event()
        event.record()
        return event

    def seconds(self, start, end):
        return self.cupy.cuda.get_elapsed_time(start, end) / 1e3  # ms -> s

    def wait(self, mark):
        mark.synchronize()


def measure_unet_step(unet, sample, context, clock):
    """({label: seconds}, step seconds) for one UNet forward: each counted layer's own time, its
    time less that of the counted layers it calls, summed over its calls."""
    open_calls, finished = [], []  # open: [start mark, calls inside]; finished: (label, start, end, inside)

    def enter(key, module, args):
        if isinstance(module, COUNTED):
            open_calls.append([clock.mark(), []])

    def leave(key, module, args, output):
        if isinstance(module, COUNTED):
            start, inside = open_calls.pop()
            call = (layer_work(module, args, output)[0], start, clock.mark(), inside)
            (open_calls[-1][1] if open_calls else finished).append(call)

    step_start = clock.mark()
    with forward_hooks(unet, leave, before=enter):
        unet(sample, 981, context)
    step_end = clock.mark()
    clock.wait(step_end)
    own = defaultdict(float)
    for label, start, end, inside in all_calls(finished):
        own[label] += clock.seconds(start, end) - sum(clock.seconds(call[1], call[2]) for call in inside)
    return dict(own), clock.seconds(step_start, step_end)


def all_calls(calls):
    """Every call in the tree of (label, start, end, calls inside), outer ones first."""
    for call in calls:
        yield call
        yield from all_calls(call[3])


def table(layers, flops_per_s, bytes_per_s, measured=None):
    """The printed report: one line per group of equal layers, then totals per kind; with
    `measured` ({label: seconds}, step seconds), what each took and its ratio to the floor."""
    own, step = measured or ({}, None)

    def spent(seconds, floor):  # the measured columns
        return f" {seconds * 1e6:11.1f} {seconds / floor:7.1f}" if measured else ""

    extra = f" {'measured µs':>11s} {'×floor':>7s}" if measured else ""
    lines = [f"{'layer':58s} {'calls':>5s} {'GFLOP':>8s} {'MB':>8s} {'FLOP/B':>7s} {'floor µs':>9s}  bound " + extra]
    floors = {label: work.floor(flops_per_s, bytes_per_s) for label, work in layers.items()}
    for label, work in sorted(layers.items(), key=lambda item: -floors[item[0]][0]):
        floor, bound = floors[label]
        intensity = work.flops / work.bytes if work.bytes else 0
        lines.append(
            f"{label:58s} {work.calls:5d} {work.flops / 1e9:8.1f} {work.bytes / 1e6:8.1f} "
            f"{intensity:7.0f} {floor * 1e6:9.1f}  {bound:7s}" + spent(own.get(label, 0.0), floor)
        )
    kinds = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for label, work in layers.items():
        kinds[work.kind][0] += work.flops
        kinds[work.kind][1] += work.bytes
        kinds[work.kind][2] += floors[label][0]
        kinds[work.kind][3] += own.get(label, 0.0)
    lines.append("")
    lines.append(f"{'per kind':58s} {'':5s} {'GFLOP':>8s} {'MB':>8s} {'':7s} {'floor µs':>9s}  {'':7s}" + extra)
    for kind, (flops, size, floor, seconds) in sorted(kinds.items(), key=lambda item: -item[1][2]):
        lines.append(
            f"{kind:58s} {'':5s} {flops / 1e9:8.1f} {size / 1e6:8.1f} {'':7s} {floor * 1e6:9.1f}  "
            f"{'':7s}" + spent(seconds, floor)
        )
    floor = sum(kind[2] for kind in kinds.values())
    flops = sum(work.flops for work in layers.values())
    lines.append(
        f"{'total: the step cannot take less than':58s} {'':5s} {flops / 1e9:8.1f} "
        f"{sum(w.bytes for w in layers.values()) / 1e6:8.1f} {'':7s} {floor * 1e6:9.1f}  "
        f"{'':7s}" + spent(step, floor)
    )
    if measured:
        counted = sum(own.values())
        lines.append(
            f"measured: the whole step {step * 1e3:.2f} ms, the counted layers {counted * 1e3:.2f} ms, "
            f"the rest {(step - counted) * 1e3:.2f} ms (activations, adds, concatenations, waiting for Python)"
        )
    return "\n".join(line.rstrip() for line in lines)


def measure(unet, sample, context, backend, repeat):
    """measure_unet_step's result, the mean of `repeat` steps after a warm-up one."""
    clock = EventClock(backend.xp) if backend.name == "cupy" else WallClock()
    unet(sample, 981, context)
    runs = [measure_unet_step(unet, sample, context, clock) for _ in range(repeat)]
    own = {label: sum(run[0][label] for run in runs) / repeat for label in runs[0][0]}
    return own, sum(run[1] for run in runs) / repeat


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64, help="latent size (64: a 512x512 image)")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2: one image with guidance)")
    parser.add_argument("--tflops", type=float, default=790, help="the card's dense float16 peak, TFLOP/s")
    parser.add_argument("--bandwidth", type=float, default=3350, help="the card's memory bandwidth, GB/s")
    parser.add_argument("--measure", action="store_true", help="also time every layer on --backend")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--dtype", choices=["float32", "float16"], help="default: float32 on numpy, float16 on cupy")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    backend = Backend(args.backend, args.dtype or ("float16" if args.backend == "cupy" else "float32"))
    backend = backend if args.measure else Backend("numpy")  # counting alone runs on the CPU
    unet, _ = build("unet", backend)
    rng = numpy.random.default_rng(1)
    sample = backend.asarray(rng.standard_normal((args.batch, 4, args.latent, args.latent), dtype=numpy.float32))
    context = backend.asarray(rng.standard_normal((args.batch, 77, 768), dtype=numpy.float32))
    print(
        f"SD 1.5 UNet step, batch {args.batch}, {args.latent}x{args.latent} latent, float16 bytes; "
        f"{args.tflops:.0f} TFLOP/s, {args.bandwidth:.0f} GB/s"
    )
    measured = measure(unet, sample, context, backend, args.repeat) if args.measure else None
    if measured:
        print(f"measured on {backend}, mean of {args.repeat} steps after a warm-up one")
    print(table(count_unet_step(unet, sample, context), args.tflops * 1e12, args.bandwidth * 1e9, measured))


if __name__ == "__main__":
    main()
