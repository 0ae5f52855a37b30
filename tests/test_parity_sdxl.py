"""Live parity at the real SDXL base 1.0 sizes: both text encoders and the UNet, in float32.

Each component is built by transformers / diffusers with random weights (reference.py's SDXL_*
configs: CLIP ViT-L, OpenCLIP ViT-bigG with its projection, the 2.6-billion-parameter UNet)
and compared output for output with minisd (relative L2 error <= 1e-5).

Memory: the UNet alone is 10.3 GB in float32, and this machine has 24 GiB. So each side does
not get its own copy: minisd's modules are filled with NumPy views of the torch tensors
(`Tensor.numpy()` shares the memory; minisd's loader keeps a float32 array as it is), one
component at a time, freed before the next. The peak stays near one UNet plus activations.
"""

import gc

import numpy as np
import pytest

from helpers import relative_error, require_reference
from minisd.backend import Backend
from minisd.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from minisd.tokenizer import CLIPTokenizer
from minisd.unet import UNet2DConditionModel, UNetConfig
from minisd.weights import COMPONENTS, load_module

require_reference()  # skips the module, saying why, without torch/diffusers/transformers
from reference import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET, randomize, to_numpy  # noqa: E402

pytestmark = [pytest.mark.reference, pytest.mark.slow]
TOLERANCE = 1e-5
PROMPTS = ["a photograph of an astronaut riding a horse", "", "A red circle, on a WHITE background!!"]


def shared(torch_module, ours, component):
    """Fill minisd module `ours` with views of `torch_module`'s weights (no copy), read as the
    loader reads the folder's `component` (its key renames: transformers 5 drops `text_model.`)."""
    _, _, _, renames, ignored = COMPONENTS[component]
    tensors = {key: value.detach().numpy() for key, value in torch_module.state_dict().items()}
    load_module(ours, tensors, type(torch_module).__name__, Backend("numpy", "float32"), renames, ignored)
    return ours


def test_first_text_encoder_penultimate():
    """CLIP ViT-L read as SDXL reads it: hidden_states[-2], no final LayerNorm (and clip_skip 1: [-3])."""
    import torch
    from transformers import CLIPTextConfig as TheirConfig
    from transformers import CLIPTextModel as TheirModel

    theirs = randomize(TheirModel(TheirConfig(**SDXL_TEXT)), 30)
    ours = shared(theirs, CLIPTextModel(CLIPTextConfig(**SDXL_TEXT)), "text_encoder")
    ids = CLIPTokenizer.default().encode(PROMPTS)  # (3, 77)
    with torch.no_grad():
        states = theirs(torch.from_numpy(ids), output_hidden_states=True).hidden_states
    for clip_skip in (0, 1):
        got = ours.penultimate(ids, clip_skip)
        assert got.shape == (3, 77, 768)
        assert relative_error(got, to_numpy(states[-2 - clip_skip])) <= TOLERANCE


def test_second_text_encoder_penultimate_and_pooled():
    """OpenCLIP ViT-bigG (1280 wide, 32 layers, projection): hidden_states[-2] and text_embeds."""
    import torch
    from transformers import CLIPTextConfig as TheirConfig
    from transformers import CLIPTextModelWithProjection as TheirModel

    theirs = randomize(TheirModel(TheirConfig(**SDXL_TEXT_2)), 31)
    ours = shared(theirs, CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2)), "text_encoder_2")
    ids = CLIPTokenizer.default("!").encode(PROMPTS)
    with torch.no_grad():
        output = theirs(torch.from_numpy(ids), output_hidden_states=True)
    states, pooled = ours.penultimate_and_pooled(ids)
    assert states.shape == (3, 77, 1280) and pooled.shape == (3, 1280)
    assert relative_error(states, to_numpy(output.hidden_states[-2])) <= TOLERANCE
    assert relative_error(pooled, to_numpy(output.text_embeds)) <= TOLERANCE


@pytest.fixture(scope="module")
def unets():
    """(diffusers' full-size SDXL UNet, minisd's on the same memory); freed after the module."""
    from diffusers import UNet2DConditionModel as TheirUNet

    theirs = randomize(TheirUNet(**SDXL_UNET), 32)
    yield theirs, shared(theirs, UNet2DConditionModel(UNetConfig(**SDXL_UNET)), "unet")
    del theirs
    gc.collect()


@pytest.mark.parametrize("latent_size", [(16, 16), (8, 24)], ids=["16x16", "8x24"])
def test_unet_with_added_conditioning(unets, latent_size):
    """The 2.6-billion-parameter UNet at a small latent, batch 2 (a guided step), with the pooled
    text and time ids as StableDiffusionXLPipeline passes them."""
    import torch

    theirs, ours = unets
    rng = np.random.default_rng(5)
    sample = rng.standard_normal((2, 4, *latent_size), dtype=np.float32)
    context = rng.standard_normal((2, 77, 2048), dtype=np.float32)
    text_embeds = rng.standard_normal((2, 1280), dtype=np.float32)
    height, width = (8 * size for size in latent_size)
    time_ids = np.array([[1024, 1024, 0, 0, height, width], [height, width, 0, 0, height, width]], np.float32)
    got = ours(sample, 811, context, text_embeds=text_embeds, time_ids=time_ids)
    with torch.no_grad():
        added = {"text_embeds": torch.from_numpy(text_embeds), "time_ids": torch.from_numpy(time_ids)}
        want = theirs(torch.from_numpy(sample), 811, torch.from_numpy(context), added_cond_kwargs=added).sample
    assert got.shape == sample.shape
    assert relative_error(got, to_numpy(want)) <= TOLERANCE
