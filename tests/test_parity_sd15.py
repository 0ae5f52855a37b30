"""Live parity at the real SD 1.5 sizes: minisd's loader and layers vs diffusers/transformers.

Each component is built by the reference library with random weights, saved as a diffusers
folder, loaded by minisd, and compared in float32 (relative L2 error <= 1e-5).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import relative_error, require_reference
from minisd.backend import Backend
from minisd.weights import load_component

require_reference()  # skips the module, saying why, without torch/diffusers/transformers
from reference import to_numpy  # noqa: E402

pytestmark = [pytest.mark.reference, pytest.mark.slow]
TOLERANCE = 1e-5
PROMPTS = ["a photograph of an astronaut riding a horse", "", "A red circle, on a WHITE background!!"]


@pytest.fixture(scope="module")
def numpy_backend():
    return Backend("numpy", "float32")


def test_text_encoder(sd15, numpy_backend):
    import torch

    from minisd.tokenizer import CLIPTokenizer

    folder, (text_encoder, _, _) = sd15
    ids = CLIPTokenizer.from_folder(folder / "tokenizer").encode(PROMPTS)  # (3, 77)
    ours = load_component(folder, "text_encoder", numpy_backend)(ids)
    with torch.no_grad():
        theirs = text_encoder(torch.from_numpy(ids)).last_hidden_state
    assert ours.shape == (3, 77, 768)
    assert relative_error(ours, to_numpy(theirs)) <= TOLERANCE


@pytest.mark.parametrize("latent_size", [(8, 8), (8, 16), (12, 20)], ids=["8x8", "8x16", "12x20-odd"])
def test_unet(sd15, numpy_backend, latent_size):
    import torch

    folder, (_, unet, _) = sd15
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((2, 4, *latent_size), dtype=np.float32)
    context = rng.standard_normal((2, 77, 768), dtype=np.float32)
    ours = load_component(folder, "unet", numpy_backend)(sample, 981, context)
    with torch.no_grad():
        theirs = unet(torch.from_numpy(sample), 981, torch.from_numpy(context)).sample
    assert ours.shape == sample.shape
    assert relative_error(ours, to_numpy(theirs)) <= TOLERANCE


def test_vae_decoder(sd15, numpy_backend):
    import torch

    folder, (_, _, vae) = sd15
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 12), dtype=np.float32)
    ours = load_component(folder, "vae", numpy_backend).decode(latents)
    with torch.no_grad():
        theirs = vae.decode(torch.from_numpy(latents)).sample
    assert ours.shape == (1, 3, 64, 96)
    assert relative_error(ours, to_numpy(theirs)) <= TOLERANCE


def test_vae_encoder(sd15, numpy_backend):
    import torch

    folder, (_, _, vae) = sd15
    images = np.random.default_rng(3).uniform(-1, 1, (1, 3, 64, 48)).astype(np.float32)
    mean, logvar = load_component(folder, "vae", numpy_backend).encode(images)
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(images)).latent_dist
    assert mean.shape == (1, 4, 8, 6)
    assert relative_error(mean, to_numpy(posterior.mean)) <= TOLERANCE
    assert relative_error(logvar, to_numpy(posterior.logvar)) <= TOLERANCE


# The peak is Linux's VmHWM, this process's own: the rusage maximum would include the pytest
# process's peak, which a child started by fork and exec inherits.
FULL_FORWARD = """
import json, sys, time
import numpy as np
from minisd.backend import Backend
from minisd.weights import load_component
folder, inputs, output = sys.argv[1:]
data = np.load(inputs)
unet = load_component(folder, "unet", Backend())
start = time.perf_counter()
noise = unet(data["sample"], 981, data["context"])
seconds = time.perf_counter() - start
np.save(output, noise)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_kb * 1024 / 2**30}))
"""


def test_unet_64x64_batch2_memory(sd15, tmp_path):
    """One full-size UNet forward at a 64×64 latent, batch 2 (a CFG step at 512×512): exact and
    under 8 GB peak memory, measured in a fresh process."""
    import torch

    folder, (_, unet, _) = sd15
    rng = np.random.default_rng(4)
    sample = rng.standard_normal((2, 4, 64, 64), dtype=np.float32)
    context = rng.standard_normal((2, 77, 768), dtype=np.float32)
    np.savez(tmp_path / "inputs.npz", sample=sample, context=context)
    run = subprocess.run(
        [sys.executable, "-c", FULL_FORWARD, str(folder), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(
        f"\nfull-size UNet forward, 64x64 latent, batch 2: {report['seconds']:.1f} s, "
        f"peak RSS {report['peak_rss_gb']:.2f} GB"
    )
    with torch.no_grad():
        theirs = unet(torch.from_numpy(sample), 981, torch.from_numpy(context)).sample
    assert report["peak_rss_gb"] < 8
    assert relative_error(np.load(tmp_path / "out.npy"), to_numpy(theirs)) <= TOLERANCE
