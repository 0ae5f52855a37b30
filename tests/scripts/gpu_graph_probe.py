"""Does CuPy's CUDA graph capture serve minisd's UNet step? A probe for the GPU speed issue (#8),
run by tests/scripts/gpu_check.sh on a lent GPU; it changes nothing in minisd.

A CUDA graph records every kernel of one UNet step once and replays them with one launch,
removing Python's per-kernel cost. It can serve only if the step makes no host round trip and
no fresh device allocation while it is recorded. This captures one SD 1.5 step (batch 2, 64x64
latent, float16, random weights) into a private memory pool (the addresses the graph writes must
stay its own), replays it, and prints whether it captured (and why not), the replay's largest
difference from the eager step, and both times.
"""

import time

import cupy
import numpy

from minisd.backend import Backend
from minisd.random_model import build


def median_ms(run, stream, repeat=10):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        stream.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(numpy.median(times))


def main():
    backend = Backend("cupy", "float16")
    unet, _ = build("unet", backend)
    rng = numpy.random.default_rng(0)
    sample = backend.asarray(rng.standard_normal((2, 4, 64, 64), dtype=numpy.float32))
    context = backend.asarray(rng.standard_normal((2, 77, 768), dtype=numpy.float32))
    timestep = cupy.asarray(981)  # on the device: no host copy inside the recording
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        eager = unet(sample, timestep, context)  # also compiles the kernels and makes cuBLAS's handle
        eager_ms = median_ms(lambda: unet(sample, timestep, context), stream)
    pool = cupy.cuda.MemoryPool()
    try:
        with cupy.cuda.using_allocator(pool.malloc), stream:
            unet(sample, timestep, context)  # fills the pool with the step's blocks: recording allocates none
            stream.synchronize()
            stream.begin_capture()
            captured = unet(sample, timestep, context)
            graph = stream.end_capture()
    except Exception as error:  # noqa: BLE001 (what fails is the answer)
        print(f"capture failed: {type(error).__name__}: {error}")
        return
    graph.launch(stream)
    stream.synchronize()
    difference = float(cupy.abs(captured.astype(cupy.float32) - eager.astype(cupy.float32)).max())
    print(f"captured; replay vs eager: max |difference| {difference:.3g}")
    replay_ms = median_ms(lambda: graph.launch(stream), stream)
    print(f"UNet step: eager {eager_ms:.1f} ms, graph replay {replay_ms:.1f} ms ({eager_ms / replay_ms:.2f}x)")


if __name__ == "__main__":
    main()
