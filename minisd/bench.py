"""Benchmark one Stable Diffusion 1.5 UNet step with guidance (batch 2), minisd vs diffusers.

    python -m minisd.bench [--backend numpy|cupy] [--dtype float32|float16] [--latent 64] [--repeat 3]

The UNet has the SD 1.5 architecture (UNetConfig's defaults) with random weights. When torch and
diffusers are importable, the same weights run in diffusers' UNet2DConditionModel in the same
process — on the CPU in float32 with the same thread count for the NumPy backend, on the GPU in
float16 with PyTorch's scaled-dot-product attention for the CuPy backend — and the ratio
minisd / diffusers is printed. FLOPs are counted from the matrix products minisd actually runs.
"""

import argparse
import contextlib
import resource
import time

import numpy

from . import blocks, nn
from .backend import Backend
from .unet import UNet2DConditionModel, UNetConfig


def random_unet(config, seed=0):
    """SD 1.5-shaped UNet with random weights: {key: float32 host array} and the module."""
    unet = UNet2DConditionModel(config)
    rng = numpy.random.default_rng(seed)
    weights = {}
    for key, _, _, slot in unet.named_slots():
        fan_in = numpy.prod(slot.shape[1:]) if len(slot.shape) > 1 else 1
        weights[key] = (rng.standard_normal(slot.shape, dtype=numpy.float32) / numpy.sqrt(fan_in)).astype(
            numpy.float32
        )
    return unet, weights


def place(unet, weights, backend):
    for key, owner, name, _ in unet.named_slots():
        setattr(owner, name, backend.asarray(weights[key]))
    return unet


@contextlib.contextmanager
def count_flops():
    """Count multiply-adds (×2) of convolutions, linear layers and attention while active."""
    total = [0]
    originals = nn.conv2d, nn.linear, blocks.attention

    def conv2d(x, weight, bias, stride=1, padding=0):
        y = originals[0](x, weight, bias, stride, padding)
        total[0] += 2 * y.size * numpy.prod(weight.shape[1:])
        return y

    def linear(x, weight, bias=None):
        total[0] += 2 * (x.size // x.shape[-1]) * weight.shape[0] * weight.shape[1]
        return originals[1](x, weight, bias)

    def attention(q, k, v, heads, mask=None):
        total[0] += 4 * q.shape[0] * q.shape[1] * k.shape[1] * q.shape[2]  # QKᵀ and (softmax)V
        return originals[2](q, k, v, heads, mask)

    nn.conv2d, nn.linear, blocks.attention = conv2d, linear, attention
    try:
        yield total
    finally:
        nn.conv2d, nn.linear, blocks.attention = originals


def time_calls(run, synchronize, repeat):
    """Median seconds of `repeat` calls, after one warm-up call."""
    run()
    synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(numpy.median(times))


def bench_minisd(backend, config, weights_and_unet, inputs, repeat):
    unet, weights = weights_and_unet
    place(unet, weights, backend)
    sample, context = (backend.asarray(a) for a in inputs)
    synchronize = backend.xp.cuda.Device().synchronize if backend.name == "cupy" else (lambda: None)
    with count_flops() as flops:
        unet(sample, 981, context)
    seconds = time_calls(lambda: unet(sample, 981, context), synchronize, repeat)
    memory = backend.xp.get_default_memory_pool().total_bytes() if backend.name == "cupy" else None
    return seconds, flops[0], memory


def bench_diffusers(backend, weights, inputs, repeat):
    """The same weights in diffusers (None when torch/diffusers are not installed)."""
    try:
        import torch
        from diffusers import UNet2DConditionModel as Reference
    except ImportError:
        return None
    device, dtype = ("cuda", torch.float16) if backend.name == "cupy" else ("cpu", torch.float32)
    unet = Reference(sample_size=64, cross_attention_dim=768)
    unet.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
    unet = unet.to(device, dtype).eval()
    sample, context = (torch.from_numpy(a).to(device, dtype) for a in inputs)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        seconds = time_calls(lambda: unet(sample, 981, context), synchronize, repeat)
    memory = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return seconds, memory, f"diffusers ({device}, {str(dtype).removeprefix('torch.')}, torch {torch.__version__})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--dtype", choices=["float32", "float16"], default=None, help="default: float32 on numpy, float16 on cupy")
    parser.add_argument("--latent", type=int, default=64, help="latent height = width (64 for 512x512 images)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    backend = Backend(args.backend, args.dtype or ("float16" if args.backend == "cupy" else "float32"))
    config = UNetConfig()
    rng = numpy.random.default_rng(1)
    inputs = (rng.standard_normal((2, 4, args.latent, args.latent), dtype=numpy.float32),
              rng.standard_normal((2, 77, config.cross_attention_dim), dtype=numpy.float32))  # fmt: skip
    unet_and_weights = random_unet(config)
    seconds, flops, memory = bench_minisd(backend, config, unet_and_weights, inputs, args.repeat)
    rows = [(f"minisd ({backend.name}, {backend.dtype.name})", seconds, memory)]
    reference = bench_diffusers(backend, unet_and_weights[1], inputs, args.repeat)
    if reference:
        rows.append((reference[2], reference[0], reference[1]))
    print(f"SD 1.5 UNet, one guidance step: batch 2, {args.latent}x{args.latent} latent, "
          f"{flops / 1e12:.3f} TFLOP counted, median of {args.repeat}")  # fmt: skip
    for name, secs, mem in rows:
        mem_text = f", peak device memory {mem / 2**30:.2f} GiB" if mem else ""
        print(f"  {name:45s} {secs * 1e3:9.1f} ms  {flops / secs / 1e12:7.2f} TFLOP/s{mem_text}")
    if reference:
        print(f"  ratio minisd / diffusers: {seconds / reference[0]:.2f}")
    print(f"  host peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
