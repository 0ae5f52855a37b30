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


def random_weights(module, seed=0):
    """{key: float32 host array} for every slot of `module`: N(0, 1/fan_in) for matrices and
    kernels, scales near 1 and small shifts for the 1-D parameters (norms, biases)."""
    rng = numpy.random.default_rng(seed)
    weights = {}
    for key, _, _, slot in module.named_slots():
        noise = rng.standard_normal(slot.shape, dtype=numpy.float32)
        if len(slot.shape) > 1:
            weights[key] = noise / numpy.float32(numpy.sqrt(numpy.prod(slot.shape[1:])))
        elif key.endswith("weight"):
            weights[key] = 1 + 0.1 * noise
        else:
            weights[key] = 0.1 * noise
    return weights


def place(module, weights, backend):
    """Put `weights` into `module`'s slots on `backend`; returns the module."""
    for key, owner, name, _ in module.named_slots():
        setattr(owner, name, backend.asarray(weights[key]))
    return module


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


def bench_minisd(backend, unet, weights, inputs, repeat):
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


def bench_attention(backend, head_dim, tokens=4096, width=320, repeat=10):
    """Self-attention over `tokens` tokens (batch 2): minisd's attention vs torch SDPA, TFLOP/s."""
    heads = width // head_dim
    rng = numpy.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, tokens, width), dtype=numpy.float32) for _ in range(3))
    flops = 4 * 2 * tokens * tokens * width
    synchronize = backend.xp.cuda.Device().synchronize if backend.name == "cupy" else (lambda: None)
    qd, kd, vd = (backend.asarray(x) for x in (q, k, v))
    ours = time_calls(lambda: nn.attention(qd, kd, vd, heads), synchronize, repeat)
    result = [f"attention {tokens} tokens, head dim {head_dim}: minisd {ours * 1e3:.2f} ms "
              f"({flops / ours / 1e12:.1f} TFLOP/s)"]  # fmt: skip
    try:
        import torch
    except ImportError:
        return result[0]
    device = "cuda" if backend.name == "cupy" else "cpu"
    dtype = getattr(torch, backend.dtype.name)
    qt, kt, vt = (torch.from_numpy(x).to(device, dtype).view(2, tokens, heads, head_dim).transpose(1, 2)
                  for x in (q, k, v))  # fmt: skip
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    theirs = time_calls(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), sync, repeat)
    result.append(f"torch SDPA {theirs * 1e3:.2f} ms ({flops / theirs / 1e12:.1f} TFLOP/s), "
                  f"ratio {ours / theirs:.2f}")  # fmt: skip
    return ", ".join(result)


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
    unet = UNet2DConditionModel(config)
    weights = random_weights(unet)
    seconds, flops, memory = bench_minisd(backend, unet, weights, inputs, args.repeat)
    rows = [(f"minisd ({backend.name}, {backend.dtype.name})", seconds, memory)]
    reference = bench_diffusers(backend, weights, inputs, args.repeat)
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
    if backend.name == "cupy":
        for head_dim in (40, 64):
            print("  " + bench_attention(backend, head_dim))


if __name__ == "__main__":
    main()
