"""Peak memory of whole jobs, each measured in a fresh process (`python -m minisd.bench --memory`).

    python -m minisd.bench_memory generate|tiled1024|sdxl1024 [--backend numpy] [--dtype float32]
                                  [--weights-dtype float16]

prints {"seconds", "peak_rss_gb"} as JSON for one case, run in this process: the benchmark
(bench.py) starts one such process per case, so that no case inherits another's peak.
The models have the real architectures with random weights (random_model.py).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy

from .backend import Backend
from .pipeline import Pipeline
from .presets import SD1, SDXL
from .random_model import build
from .sdxl import SDXLText
from .tokenizer import CLIPTokenizer

MEMORY_CASES = {
    "generate": "whole 512x512 image, 20 steps with guidance (text encoder, UNet, VAE)",
    "tiled1024": "VAE decode to 1024x1024 with tiling",
    "sdxl1024": "whole 1024x1024 SDXL image, float16 weights (a step with guidance; more steps: same peak)",
}
PROMPT = "a photograph of an astronaut riding a horse"


def measure(name, backend):
    """Run one memory case in this (fresh) process; print {"seconds", "peak_rss_gb"} as JSON."""
    if name == "generate":
        pipe = Pipeline(
            CLIPTokenizer.default(), *components(backend, SD1, "text", "unet", "vae"), SD1["scheduler"], backend
        )
        start = time.perf_counter()
        pipe(PROMPT, steps=20, height=512, width=512, progress=False)
    elif name == "sdxl1024":
        pipe = sdxl_pipeline(backend)
        start = time.perf_counter()
        pipe(PROMPT, steps=1, progress=False)
    else:
        (vae,) = components(backend, SD1, "vae")
        start = time.perf_counter()
        vae.decode(
            backend.asarray(numpy.random.default_rng(3).standard_normal((1, 4, 128, 128), "float32")), tiled=True
        )
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss() / 1e9}))


def components(backend, preset, *kinds):
    """The preset's modules of these kinds with random weights (random_model.build)."""
    return [build(kind, backend, preset)[0] for kind in kinds]


def sdxl_pipeline(backend, preset=SDXL):
    """A Pipeline of SDXL base's components (or another SDXL-shaped preset's) with random weights."""
    text, text_2, unet, vae = components(backend, preset, "text", "text_2", "unet", "vae")
    tokenizers = (CLIPTokenizer.default(), CLIPTokenizer.default("!"))  # OpenCLIP's pads with "!"
    sdxl = SDXLText(tokenizers, (text, text_2), backend)
    return Pipeline(tokenizers[0], text, unet, vae, preset["scheduler"], backend, name="random SDXL", sdxl=sdxl)


def peak_rss():
    """This process's peak resident memory in bytes. Linux's VmHWM starts afresh at exec; the
    rusage maximum does not (a child forked from a large process inherits its peak)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run_memory(backend, names):
    """Each case in a fresh process; prints one line per case."""
    print(f"peak RSS, each case in a fresh process ({backend}, random weights):")
    for name in names:
        weights_dtype = "float16" if name == "sdxl1024" else backend.weights_dtype.name
        command = [sys.executable, "-m", "minisd.bench_memory", name, "--backend", backend.name]
        command += ["--dtype", backend.dtype.name, "--weights-dtype", weights_dtype]
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"  {MEMORY_CASES[name]:70s} {report['peak_rss_gb']:5.2f} GB  ({report['seconds']:.1f} s)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(MEMORY_CASES))
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--weights-dtype", choices=["float32", "float16"])
    args = parser.parse_args(argv)
    measure(args.case, Backend(args.backend, args.dtype, args.weights_dtype))


if __name__ == "__main__":
    main()
