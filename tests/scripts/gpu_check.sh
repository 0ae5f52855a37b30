#!/usr/bin/env bash
# The GPU checks, as one command for a lent device machine (see ../shared/GPU.md):
#   device run, carry [".whl"] (diffusers, importlib_metadata, zipp, threadpoolctl wheels), command: bash tests/scripts/gpu_check.sh
# Runs the GPU test tier, then the profile of one UNet step (every layer's time against its roofline floor), whether a
# CUDA graph can record the step (tests/scripts/gpu_graph_probe.py), then the
# benchmark: UNet step, text encoder, VAE decode and a 50-step image (CuPy fp16 vs diffusers fp16 + SDPA) and the attention
# kernels vs torch SDPA at 4096 tokens. The timeouts keep the whole under one device call (600 s).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import cupy, torch, numpy, diffusers; print('cupy', cupy.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__, 'diffusers', diffusers.__version__)"
} 2>&1 | tee "$OUT/env.log"
timeout 320 python3 -m pytest -q -rs --durations=8 -p no:cacheprovider tests/test_kernels.py tests/test_gpu.py tests/test_fixture_model.py 2>&1 | tee "$OUT/tests.log"
timeout 60 python3 -m minisd.roofline --measure --backend cupy --dtype float16 2>&1 | tee "$OUT/roofline-measured.log"
timeout 45 python3 tests/scripts/gpu_graph_probe.py 2>&1 | tee "$OUT/graph-probe.log"
timeout 150 python3 -m minisd.bench --backend cupy --dtype float16 --repeat 3 2>&1 | grep -v -i "warn\|kept in float32" | tee "$OUT/bench-float16.log"
