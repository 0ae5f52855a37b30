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
"""

import argparse
from collections import defaultdict
from dataclasses import dataclass

import numpy

from .backend import Backend
from .blocks import Attention
from .nn import Conv2d, GroupNorm, LayerNorm, Linear, forward_hooks
from .unet import GEGLU

HALF = 2  # bytes per float16 value


# FLOPs (2 per multiply-add) of the layers that do matrix work; bench.py counts with them too.


def conv_flops(weight, output):
    """A convolution, counted as direct convolution (Winograd's savings show as a higher rate)."""
    return 2 * output.size * int(numpy.prod(weight.shape[1:]))


def linear_flops(weight, output):
    return 2 * output.size * weight.shape[1]


def attention_flops(batch, q_len, k_len, width):
    """softmax(QKᵀ/√d)V over all heads (width = heads·d): QKᵀ and PV, 2 multiply-adds per
    (query, key, channel)."""
    return 4 * batch * q_len * k_len * width


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


def table(layers, flops_per_s, bytes_per_s):
    """The printed report: one line per group of equal layers, then totals per kind."""
    lines = [f"{'layer':58s} {'calls':>5s} {'GFLOP':>8s} {'MB':>8s} {'FLOP/B':>7s} {'floor µs':>9s}  bound"]
    floors = {label: work.floor(flops_per_s, bytes_per_s) for label, work in layers.items()}
    for label, work in sorted(layers.items(), key=lambda item: -floors[item[0]][0]):
        seconds, bound = floors[label]
        intensity = work.flops / work.bytes if work.bytes else 0
        lines.append(f"{label:58s} {work.calls:5d} {work.flops / 1e9:8.1f} {work.bytes / 1e6:8.1f} "
                     f"{intensity:7.0f} {seconds * 1e6:9.1f}  {bound}")  # fmt: skip
    kinds = defaultdict(lambda: [0, 0, 0.0])
    for label, work in layers.items():
        kinds[work.kind][0] += work.flops
        kinds[work.kind][1] += work.bytes
        kinds[work.kind][2] += floors[label][0]
    lines.append("")
    lines.append(f"{'per kind':58s} {'':5s} {'GFLOP':>8s} {'MB':>8s} {'':7s} {'floor µs':>9s}")
    for kind, (flops, size, seconds) in sorted(kinds.items(), key=lambda item: -item[1][2]):
        lines.append(f"{kind:58s} {'':5s} {flops / 1e9:8.1f} {size / 1e6:8.1f} {'':7s} {seconds * 1e6:9.1f}")
    total = sum(seconds for _, _, seconds in kinds.values())
    flops = sum(work.flops for work in layers.values())
    lines.append(f"{'total: the step cannot take less than':58s} {'':5s} {flops / 1e9:8.1f} "
                 f"{sum(w.bytes for w in layers.values()) / 1e6:8.1f} {'':7s} {total * 1e6:9.1f}")  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    from .bench import build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64, help="latent size (64: a 512x512 image)")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2: one image with guidance)")
    parser.add_argument("--tflops", type=float, default=790, help="the card's dense float16 peak, TFLOP/s")
    parser.add_argument("--bandwidth", type=float, default=3350, help="the card's memory bandwidth, GB/s")
    args = parser.parse_args(argv)
    unet, _ = build("unet", Backend("numpy"), None)
    rng = numpy.random.default_rng(1)
    sample = rng.standard_normal((args.batch, 4, args.latent, args.latent), dtype=numpy.float32)
    context = rng.standard_normal((args.batch, 77, 768), dtype=numpy.float32)
    print(f"SD 1.5 UNet step, batch {args.batch}, {args.latent}x{args.latent} latent, float16 bytes; "
          f"{args.tflops:.0f} TFLOP/s, {args.bandwidth:.0f} GB/s")  # fmt: skip
    print(table(count_unet_step(unet, sample, context), args.tflops * 1e12, args.bandwidth * 1e9))


if __name__ == "__main__":
    main()
