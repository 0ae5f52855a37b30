"""Benchmark minisd against PyTorch (diffusers / transformers) on the same random SD 1.5 weights.

    python -m minisd.bench [--backend numpy|cupy] [--dtype float32|float16] [--repeat 3]
                           [--cases unet32,unet64,text,vae256,vae512,generate,sdxl128]
                           [--memory [generate,tiled1024,sdxl1024]]

Every model has the SD 1.5 architecture (SDXL's for the sdxl cases) with random weights. When torch and diffusers are
importable, the same weights run there in the same process, alternating with minisd call by
call (so a drift of the machine hits both alike): on the CPU in float32 with the same thread
count, on the GPU in float16 with PyTorch's scaled-dot-product attention. Each line prints the
median time, minisd / torch, and the achieved GFLOP/s (FLOPs counted as direct convolution
and plain attention, so Winograd's savings show as a higher rate), against the measured
matrix-product peak in the dtype it runs (float32 on the CPU; on the GPU float16, the tensor
cores'). --memory runs, each in a fresh process, a whole 20-step 512x512 generation and a
tiled 1024x1024 VAE decode (or the cases named: sdxl1024 is a whole 1024x1024 SDXL image with
float16 weights), and prints their peak RSS (first, while this process is still small).

Cases: unet32 / unet64 = one UNet step with guidance (batch 2, 32x32 or 64x64 latents),
text = the text encoder on a prompt and a negative prompt (2 x 77 tokens), vae256 / vae512 =
the VAE decoder to a 256x256 or 512x512 image, generate = a whole 50-step 512x512 image with
guidance (minisd's Pipeline against diffusers' StableDiffusionPipeline), sdxl128 = one SDXL
UNet step with guidance at a 128x128 latent (1024x1024), with its pooled text and time ids;
there the torch UNet is built on minisd's arrays themselves (10 GB in float32, not twice).
"""

import argparse
import os
import platform
import time

import numpy

from . import cuda, ops, random_model
from .backend import Backend
from .bench_memory import MEMORY_CASES, peak_rss, run_memory
from .pipeline import Pipeline
from .presets import PRESETS, SD1
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

    def model(kind, preset="sd1"):
        """(minisd module, torch module or None), built once."""
        if (kind, preset) not in models:
            models[kind, preset] = build(kind, backend, reference, preset)
        return models[kind, preset]

    makers = {"unet": unet_case, "sdxl": unet_case, "text": text_case, "vae": vae_case, "generate": generate_case}
    cases = []
    for name in names:
        kind = name.rstrip("0123456789")
        if kind not in makers or (kind in ("unet", "sdxl", "vae")) != (kind != name):
            raise ValueError(
                f"unknown case {name!r}: choose from unetN, sdxlN, text, vaeN, generate (e.g. unet64, sdxl128, vae512)"
            )
        cases.append(makers[kind](name, model, backend, reference))
    return cases


def unet_case(name, model, backend, reference):
    """unetN: SD 1.5's UNet; sdxlN: SDXL's, with the pooled text and time ids it adds."""
    preset = "sdxl" if name.startswith("sdxl") else "sd1"
    size = int(name.removeprefix(preset.replace("sd1", "unet")))
    ours, theirs = model("unet", preset)
    rng = numpy.random.default_rng(1)
    sample = rng.standard_normal((2, 4, size, size), dtype=numpy.float32)
    context = rng.standard_normal((2, 77, PRESETS[preset]["unet"]["cross_attention_dim"]), dtype=numpy.float32)
    added = {}
    if preset == "sdxl":
        added["text_embeds"] = rng.standard_normal((2, 1280), dtype=numpy.float32)
        added["time_ids"] = numpy.array([[8 * size, 8 * size, 0, 0, 8 * size, 8 * size]] * 2, numpy.float32)
    x, c = backend.asarray(sample), backend.asarray(context)
    extra = {key: backend.asarray(value) for key, value in added.items()}
    title = f"{'SDXL ' if added else ''}UNet step with guidance, batch 2, {size}x{size} latent"
    case = Case(title, lambda: ours(x, 981, c, **extra))
    if theirs is not None:
        xt, ct = reference.inputs(sample, context)
        extra_t = dict(zip(added, reference.inputs(*added.values())))
        case.theirs = lambda: reference.run(theirs, xt, 981, ct, **({"added_cond_kwargs": extra_t} if added else {}))
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


def build(kind, backend, reference, preset="sd1"):
    """(minisd module, torch module or None) of the preset's `kind` with the same random weights."""
    module, weights = random_model.build(kind, backend, PRESETS[preset])
    return module, (reference.module(kind, weights, PRESETS[preset]) if reference else None)


class Reference:
    """The same models in diffusers / transformers: float32 on the CPU, float16 + SDPA on the GPU."""

    def __init__(self, backend):
        import torch

        self.torch = torch
        self.device, self.dtype = ("cuda", torch.float16) if backend.name == "cupy" else ("cpu", torch.float32)
        self.name = f"torch {torch.__version__} ({self.device}, {str(self.dtype).removeprefix('torch.')})"

    def module(self, kind, weights, preset=SD1):
        """The torch module of `kind` holding `weights`: on the CPU in float32 the very same
        arrays (built on the meta device, then given them), else copies in the device's dtype."""
        from diffusers import AutoencoderKL as TorchVAE
        from diffusers import UNet2DConditionModel as TorchUNet
        from transformers import CLIPTextConfig as TorchTextConfig
        from transformers import CLIPTextModel as TorchText

        shared = self.dtype == self.torch.float32 and kind != "text"  # the text encoder has buffers: build it
        with self.torch.device("meta" if shared else "cpu"):
            if kind == "unet":
                module = TorchUNet(**preset["unet"])
            elif kind == "vae":
                module = TorchVAE(**preset["vae"])
            else:
                module = TorchText(TorchTextConfig(**{"projection_dim": 768, **preset["text_encoder"]}))
                weights = {key.removeprefix("text_model."): value for key, value in weights.items()}  # transformers 5
        module.load_state_dict({key: self.torch.from_numpy(value) for key, value in weights.items()}, assign=shared)
        return (
            module.to(self.device).eval()
            if self.dtype == self.torch.float32
            else module.to(self.device, self.dtype).eval()
        )

    def run(self, module, *args, **kwargs):
        with self.torch.no_grad():
            return module(*args, **kwargs)

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
        nargs="?",
        const="generate,tiled1024",
        help="also measure peak RSS, each in a fresh process: a whole generation and a tiled 1024x1024 decode "
        f"(default), or the cases named: {','.join(MEMORY_CASES)}",
    )
    args = parser.parse_args(argv)
    backend = Backend(
        args.backend, args.dtype or ("float16" if args.backend == "cupy" else "float32"), args.weights_dtype
    )
    args.cases = args.cases or ",".join(GPU_CASES if args.backend == "cupy" else CPU_CASES)
    if args.memory:  # first, while this process is small
        unknown = set(args.memory.split(",")) - set(MEMORY_CASES)
        if unknown:
            parser.error(f"unknown memory case {', '.join(sorted(unknown))}: choose from {', '.join(MEMORY_CASES)}")
        run_memory(backend, args.memory.split(","))
    run_benchmarks(args, backend)


if __name__ == "__main__":
    main()
