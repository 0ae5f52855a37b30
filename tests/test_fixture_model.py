"""Fast tier: a tiny committed model vs the numbers diffusers/transformers computed from it.

tests/fixtures/make_models.py made both the model folder (float16 variant files) and the
expected outputs (float32); this test needs only NumPy.
"""

from pathlib import Path

import numpy as np
import pytest

import minisd
from minisd.backend import Backend
from minisd.weights import load_component

FIXTURES = Path(__file__).parent / "fixtures"
FOLDER = FIXTURES / "tiny-sd"
PIPELINE_CASES = {  # as in make_models.py: (scheduler, negative prompt, guidance, height, width)
    "pndm_square": ("pndm", "", 7.5, 64, 64),
    "ddim_nonsquare_negative": ("ddim", "blurry", 5.0, 48, 80),
    "pndm_no_guidance": ("pndm", "", 1.0, 64, 48),
}


@pytest.fixture(scope="module")
def expected():
    return np.load(FIXTURES / "tiny-sd-expected.npz")


def relative_error(actual, reference):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(actual - reference) / np.linalg.norm(reference)


def test_tokenizer_from_folder(expected):
    pipe = minisd.load(FOLDER)
    prompts = ["a red circle on a white background", "", "Two BLUE squares!!"]
    np.testing.assert_array_equal(pipe.tokenizer.encode(prompts), expected["text_ids"])


def test_text_encoder(expected):
    text_encoder = load_component(FOLDER, "text_encoder", Backend())
    assert relative_error(text_encoder(expected["text_ids"]), expected["text_hidden"]) <= 1e-5


def test_unet(expected):
    unet = load_component(FOLDER, "unet", Backend())
    noise = unet(expected["unet_sample"], int(expected["unet_timestep"]), expected["unet_context"])
    assert noise.shape == expected["unet_noise"].shape
    assert relative_error(noise, expected["unet_noise"]) <= 1e-5


def test_vae(expected):
    vae = load_component(FOLDER, "vae", Backend())
    assert relative_error(vae.decode(expected["vae_latents"]), expected["vae_decoded"]) <= 1e-5
    mean, logvar = vae.encode(expected["vae_images"])
    assert relative_error(mean, expected["vae_mean"]) <= 1e-5
    assert relative_error(logvar, expected["vae_logvar"]) <= 1e-5


@pytest.mark.parametrize("case", sorted(PIPELINE_CASES))
def test_pipeline_image(expected, case):
    scheduler, negative, guidance, height, width = PIPELINE_CASES[case]
    image = minisd.load(FOLDER)(
        "a red circle on a white background",
        negative_prompt=negative,
        steps=10,
        guidance=guidance,
        height=height,
        width=width,
        scheduler=scheduler,
        latents=expected[f"{case}_latents"],
        progress=False,
    )
    reference = expected[f"{case}_image"]
    assert np.asarray(image).shape == reference.shape == (height, width, 3)
    assert np.abs(np.asarray(image, np.int16) - reference).max() <= 1
