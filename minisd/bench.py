"""Benchmark minisd against PyTorch (diffusers / transformers) on the same random SD 1.5 weights.

    python -m minisd.bench [--backend numpy|cupy] [--dtype float32|float16] [--repeat 3]
                           [--cases unet32,unet64,text,vae256,vae512,generate] [--memory]

Every model has the SD 1.5 architecture with random weights. When torch and diffusers are
importable, the same weights run there in the same process, alternating with minisd call by
call (so a drift of the machine hits both alike): on the CPU in float32 with the same thread
count, on the GPU in float16 with PyTorch's scaled-dot-product attention. Each line prints the
median time, minisd / torch, and the achieved GFLOP/s (FLOPs counted as direct convolution
and plain attention, so Winograd's savings show as a higher rate), against the measured
matrix-product peak in the dtype it runs (float32 on the CPU; on the GPU float16, the tensor
cores'). --memory runs, each in a fresh process, a whole 20-step 512x512 generation and a
tiled 1024x1024 VAE decode, and prints their peak RSS (first, while this process is still small).

Cases: unet32 / unet64 = one UNet step with guidance (batch 2, 32x32 or 64x64 latents),
text = the text encoder on a prompt and a negative prompt (2 x 77 tokens), vae256 / vae512 =
the VAE decoder to a 256x256 or 512x512 image, generate = a whole 50-step 512x512 image with
guidance (minisd's Pipeline against diffusers' StableDiffusionPipeline).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy

from . import cuda, ops, random_model
from .backend import Backend
from .pipeline import Pipeline
from .presets import SD1
from .roofline import attention_flops, count_flops
from .tokenizer import CLIPTokenizer

CPU_CASES = ("unet32", "unet64", "text", "vae256", "vae512")
GPU_CASES = ("unet64", "text", "vae512", "generate")


def matmul_peak(backend, repeat=5):
    """Best GFLOP/s of a square matrix product in the backend's dtype (its BLAS's peak: on the
    GPU in float16, the tensor cores'), 2048 wide on the CPU, 8192 on the GPU."""
    size = 8192 if backend.name == "cupy" else 2048
    a = backend.asarray(numpy.random.default_rng(0).standard_normal((size, size), dtype=numpy.float32))
    synchronize = _synchronizer(backend)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        a @ a
        synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times[1:]) / 1e9


def _synchronizer(backend):
    return backend.xp.cuda.Device().synchronize if backend.name == "cupy" else (lambda: None)


# ---------------------------------------------------------------- the cases


class Case:
    """One thing to time: minisd's call and, when torch is there, the same call in torch."""

    def __init__(self, title, ours, theirs=None):
        self.title, self.ours, self.theirs = title, ours, theirs


def make_cases(names, backend, reference):
    """The cases asked for (see the module docstring), sharing one model of each kind."""
    models = {}

    def model(kind):
        """(minisd module, torch module or None), built once."""
        if kind not in models:
            models[kind] = build(kind, backend, reference)
        return models[kind]

    makers = {"unet": unet_case, "text": text_case, "vae": vae_case, "generate": generate_case}
    cases = []
    for name in names:
        kind = name.rstrip("0123456789")
        if kind not in makers or (kind in ("unet", "vae")) != (kind != name):
            raise ValueError(f"unknown case {name!r}: choose from unetN, text, vaeN, generate (e.g. unet64, vae512)")
        cases.append(makers[kind](name, model, backend, reference))
    return cases


def unet_case(name, model, backend, reference):
    size = int(name.removeprefix("unet"))
    ours, theirs = model("unet")
    rng = numpy.random.default_rng(1)
    sample = rng.standard_normal((2, 4, size, size), dtype=numpy.float32)
    context = rng.standard_normal((2, 77, 768), dtype=numpy.float32)
    x, c = backend.asarray(sample), backend.asarray(context)
    case = Case(f"UNet step with guidance, batch 2, {size}x{size} latent", lambda: ours(x, 981, c))
    if theirs is not None:
        xt, ct = reference.inputs(sample, context)
        case.theirs = lambda: reference.run(theirs, xt, 981, ct)
    return case


def text_case(name, model, backend, reference):
    ours, theirs = model("text")
    ids = CLIPTokenizer.default().encode(["", "a photograph of an astronaut riding a horse"])  # (2, 77)
    ids_here = backend.xp.asarray(ids)
    case = Case("text encoder, 2 x 77 tokens", lambda: ours(ids_here))
    if theirs is not None:
        ids_there = reference.ids(ids)
        case.theirs = lambda: reference.run(theirs, ids_there)
    return case


def vae_case(name, model, backend, reference):
    pixels = int(name.removeprefix("vae"))
    ours, theirs = model("vae")
    latents = numpy.random.default_rng(2).standard_normal((1, 4, pixels // 8, pixels // 8), dtype=numpy.float32)
    z = backend.asarray(latents)
    case = Case(f"VAE decode to {pixels}x{pixels}", lambda: ours.decode(z))
    if theirs is not None:
        (zt,) = reference.inputs(latents)
        case.theirs = lambda: reference.run(theirs.decode, zt)
    return case


def generate_case(name, model, backend, reference):
    pipe = Pipeline(
        CLIPTokenizer.default(), model("text")[0], model("unet")[0], model("vae")[0], SD1["scheduler"], backend
    )
    prompt = "a photograph of an astronaut riding a horse"
    case = Case(
        "whole 512x512 image, 50 steps, guidance 7.5",
        lambda: pipe(prompt, steps=50, height=512, width=512, progress=False),
    )
    if reference:
        theirs = reference.pipeline(model("text")[1], model("unet")[1], model("vae")[1])
        case.theirs = lambda: theirs(prompt, num_inference_steps=50, height=512, width=512)
    return case


def build(kind, backend, reference):
    """(minisd module, torch module or None) of SD 1.5's `kind` with the same random weights."""
    module, weights = random_model.build(kind, backend)
    return module, (reference.module(kind, weights) if reference else None)


class Reference:
    """The same models in diffusers / transformers: float32 on the CPU, float16 + SDPA on the GPU."""

    def __init__(self, backend):
        import torch

        self.torch = torch
        self.device, self.dtype = ("cuda", torch.float16) if backend.name == "cupy" else ("cpu", torch.float32)
        self.name = f"torch {torch.__version__} ({self.device}, {str(self.dtype).removeprefix('torch.')})"

    def module(self, kind, weights):
        from diffusers import AutoencoderKL as TorchVAE
        from diffusers import UNet2DConditionModel as TorchUNet
        from transformers import CLIPTextConfig as TorchTextConfig
        from transformers import CLIPTextModel as TorchText

        if kind == "unet":
            module = TorchUNet(**SD1["unet"])
        elif kind == "vae":
            module = TorchVAE(**SD1["vae"])
        else:
            module = TorchText(TorchTextConfig(**SD1["text_encoder"], projection_dim=768))
            weights = {key.removeprefix("text_model."): value for key, value in weights.items()}  # transformers 5: flat
        module.load_state_dict({key: self.torch.from_numpy(value) for key, value in weights.items()})
        return (
            module.to(self.device).eval()
            if self.dtype == self.torch.float32
            else module.to(self.device, self.dtype).eval()
        )

    def run(self, module, *args):
        with self.torch.no_grad():
            return module(*args)

    def inputs(self, *arrays):
        return [self.torch.from_numpy(a).to(self.device, self.dtype) for a in arrays]

    def ids(self, ids):
        return self.torch.from_numpy(ids).to(self.device)

    def pipeline(self, text_encoder, unet, vae):
        """diffusers' StableDiffusionPipeline around the torch modules (unwrapped)."""
        import tempfile

        from diffusers import PNDMScheduler, StableDiffusionPipeline
        from transformers import CLIPTokenizer as TorchTokenizer

        folder = tempfile.mkdtemp()
        CLIPTokenizer.default().save(folder)  # the same vocabulary, for transformers' tokenizer
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=TorchTokenizer.from_pretrained(folder),
            unet=unet,
            scheduler=PNDMScheduler.from_config(SD1["scheduler"]),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def synchronize(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def peak_memory(self):
        return self.torch.cuda.max_memory_allocated() if self.device == "cuda" else None


# ---------------------------------------------------------------- timing


def time_case(case, backend, reference, repeat):
    """Median seconds of minisd and of torch, alternating call by call after a warm-up of each."""
    synchronize = _synchronizer(backend)
    runs = [("ours", case.ours, synchronize)] + (
        [("theirs", case.theirs, reference.synchronize)] if case.theirs else []
    )
    times = {name: [] for name, _, _ in runs}
    for attempt in range(repeat + 1):
        for name, run, sync in runs:
            start = time.perf_counter()
            run()
            sync()
            if attempt:
                times[name].append(time.perf_counter() - start)
            if name == "theirs" and backend.name == "numpy":
                time.sleep(0.5)  # let torch's OpenMP threads stop spinning before NumPy's BLAS runs
    return {name: float(numpy.median(values)) for name, values in times.items()}


def device_memory(backend, reference):
    """(minisd's, torch's) peak device memory in bytes on the GPU; (None, None) on the CPU."""
    if backend.name != "cupy":
        return None, None
    return backend.xp.get_default_memory_pool().total_bytes(), reference.peak_memory() if reference else None


def cpu_name():
    """The processor's model name (Linux's /proc/cpuinfo) and its core count: a CPU speed claim names it."""
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def run_benchmarks(args, backend):
    print(f"CPU: {cpu_name()}")
    try:
        reference = Reference(backend)
    except ImportError:
        reference = None
        print("torch/diffusers not installed: minisd only (pip install 'minisd[reference]' for the comparison)")
    peak = matmul_peak(backend)
    threads = f", {reference.torch.get_num_threads()} torch threads" if reference and backend.name == "numpy" else ""
    print(
        f"minisd {backend} vs {reference.name if reference else '-'}{threads}; "
        f"median of {args.repeat}; {backend.dtype} matrix-product peak {peak:.0f} GFLOP/s"
    )
    if backend.name == "cupy":  # first: quick, and a cut-short GPU run still has it
        for head_dim in (40, 64):
            print("  " + bench_attention(backend, head_dim), flush=True)
    for case in make_cases(args.cases.split(","), backend, reference):
        with count_flops() as flops:
            case.ours()
        seconds = time_case(case, backend, reference, args.repeat)
        ours, theirs = seconds["ours"], seconds.get("theirs")
        rate = flops[0] / ours / 1e9
        line = (
            f"  {case.title:48s} minisd {ours * 1e3:9.1f} ms {rate:7.0f} GFLOP/s ({100 * rate / peak:4.1f} % of peak)"
        )
        if theirs:
            line += (
                f" | torch {theirs * 1e3:9.1f} ms {flops[0] / theirs / 1e9:7.0f} GFLOP/s | ratio {ours / theirs:.2f}"
            )
        memory = device_memory(backend, reference)
        if memory[0]:
            line += f" | device memory minisd {memory[0] / 2**30:.2f} GiB"
            line += f", torch {memory[1] / 2**30:.2f} GiB" if memory[1] else ""
        print(line, flush=True)
    print(f"  host peak RSS of this process (all models, both libraries) {peak_rss() / 1e9:.2f} GB")


def bench_attention(backend, head_dim, tokens=4096, width=320, repeat=10):
    """Self-attention over `tokens` tokens (batch 2): minisd's attention vs torch SDPA, TFLOP/s;
    in float16 on tensor cores, kernels/attention.cu (CUDA cores) too, for what they gain."""
    heads = width // head_dim
    rng = numpy.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, tokens, width), dtype=numpy.float32) for _ in range(3))
    flops = attention_flops(2, tokens, tokens, width)
    qd, kd, vd = (backend.asarray(x) for x in (q, k, v))
    case = Case("attention", lambda: ops.attention(qd, kd, vd, heads))
    try:
        import torch

        dtype = getattr(torch, backend.dtype.name)
        qt, kt, vt = (
            torch.from_numpy(x).to("cuda", dtype).view(2, tokens, heads, head_dim).transpose(1, 2) for x in (q, k, v)
        )
        case.theirs = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
        reference = Reference(backend)
    except ImportError:
        reference = None
    seconds = time_case(case, backend, reference, repeat)
    text = (
        f"attention {tokens} tokens, head dim {head_dim}: minisd {seconds['ours'] * 1e3:.2f} ms "
        f"({flops / seconds['ours'] / 1e12:.1f} TFLOP/s)"
    )
    if "theirs" in seconds:
        text += (
            f", torch SDPA {seconds['theirs'] * 1e3:.2f} ms ({flops / seconds['theirs'] / 1e12:.1f} TFLOP/s), "
            f"ratio {seconds['ours'] / seconds['theirs']:.2f}"
        )
    if backend.dtype == numpy.float16 and cuda.has_tensor_cores():
        plain = Case("attention", lambda: cuda.attention(qd, kd, vd, heads, tensor_cores=False))
        plain_seconds = time_case(plain, backend, None, repeat)["ours"]
        rate = flops / plain_seconds / 1e12
        text += f"; on CUDA cores (kernels/attention.cu) {plain_seconds * 1e3:.2f} ms ({rate:.1f} TFLOP/s)"
    return text


# ---------------------------------------------------------------- memory, each in a fresh process


MEMORY_CASES = {
    "generate": "whole 512x512 image, 20 steps with guidance (text encoder, UNet, VAE)",
    "tiled1024": "VAE decode to 1024x1024 with tiling",
}


def measure_memory(name, backend):
    """Run one memory case in this (fresh) process; print {"seconds", "peak_rss_gb"} as JSON."""
    if name == "generate":
        pipe = Pipeline(
            CLIPTokenizer.default(),
            build("text", backend, None)[0],
            build("unet", backend, None)[0],
            build("vae", backend, None)[0],
            SD1["scheduler"],
            backend,
        )
        start = time.perf_counter()
        pipe("a photograph of an astronaut riding a horse", steps=20, height=512, width=512, progress=False)
    else:
        vae = build("vae", backend, None)[0]
        start = time.perf_counter()
        vae.decode(
            backend.asarray(numpy.random.default_rng(3).standard_normal((1, 4, 128, 128), dtype="float32")), tiled=True
        )
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss() / 1e9}))


def peak_rss():
    """This process's peak resident memory in bytes. Linux's VmHWM starts afresh at exec; the
    rusage maximum does not (a child forked from a large process inherits its peak)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run_memory(backend):
    print(f"peak RSS, each case in a fresh process ({backend}, random SD 1.5 weights):")
    for name, title in MEMORY_CASES.items():
        command = [
            sys.executable,
            "-m",
            "minisd.bench",
            "--backend",
            backend.name,
            "--dtype",
            backend.dtype.name,
            "--weights-dtype",
            backend.weights_dtype.name,
            "--memory-case",
            name,
        ]
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"  {title:70s} {report['peak_rss_gb']:5.2f} GB  ({report['seconds']:.1f} s)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument(
        "--dtype", choices=["float32", "float16"], default=None, help="default: float32 on numpy, float16 on cupy"
    )
    parser.add_argument(
        "--weights-dtype",
        choices=["float32", "float16"],
        help="keep weight matrices in this dtype (default: --dtype); see Backend",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--cases", help=f"comma-separated (default: {','.join(CPU_CASES)} on numpy, {','.join(GPU_CASES)} on cupy)"
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also measure peak RSS of a whole generation and a tiled 1024x1024 decode, in fresh processes",
    )
    parser.add_argument("--memory-case", choices=sorted(MEMORY_CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    backend = Backend(
        args.backend, args.dtype or ("float16" if args.backend == "cupy" else "float32"), args.weights_dtype
    )
    if args.memory_case:
        return measure_memory(args.memory_case, backend)
    args.cases = args.cases or ",".join(GPU_CASES if args.backend == "cupy" else CPU_CASES)
    if args.memory:  # first, while this process is small
        run_memory(backend)
    run_benchmarks(args, backend)


if __name__ == "__main__":
    main()
