"""Stable Diffusion 2.x against diffusers/transformers, and the text options that touch CLIP.

Full SD 2.1 sizes with random weights (slow): the OpenCLIP ViT-H text encoder as diffusers
ships it (23 layers, width 1024, exact GELU) and the UNet (linear proj_in/proj_out, 64-wide
heads, 1024-wide text) at small latents, relative L2 error <= 1e-5. Then a tiny SD2-style
model (pad token "!" = id 0, GELU text tower, linear projections, v-prediction) whole, against
StableDiffusionPipeline, within 1 level of 255; clip_skip as diffusers defines it; and the
chunked encoding of long prompts against transformers run chunk by chunk.
"""

import json

import numpy as np
import pytest

import minisd
from helpers import relative_error, require_reference
from minisd.backend import Backend
from minisd.tokenizer import CLIPTokenizer
from minisd.weights import load_component

require_reference()  # skips the module, saying why, without torch/diffusers/transformers
from reference import (  # noqa: E402
    SD21_SCHEDULER,
    SD21_TEXT,
    SD21_UNET,
    TINY_TEXT,
    TINY_UNET,
    TINY_VAE,
    build_models,
    reference_pipeline,
    save_model_folder,
    to_numpy,
)

pytestmark = pytest.mark.reference

TOLERANCE = 1e-5
PROMPTS = ["a photograph of an astronaut riding a horse!", "", "A red circle, on a WHITE background"]
LONG_PROMPT = ", ".join(["a very detailed oil painting of a lighthouse on a cliff at dawn"] * 13)


def save_sd2_tokenizer(folder):
    """SD 2.x's tokenizer folder: CLIP's vocabulary, padding with "!" (id 0)."""
    (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))


@pytest.fixture(scope="module")
def sd21(tmp_path_factory):
    """Text encoder and UNet at the full SD 2.1 sizes (the VAE is SD 1.5's): (folder, modules)."""
    from reference import SD15_VAE

    models = build_models(SD21_TEXT, SD21_UNET, SD15_VAE, seed=30)
    folder = save_model_folder(tmp_path_factory.mktemp("sd21"), *models, scheduler=SD21_SCHEDULER)
    save_sd2_tokenizer(folder)
    return folder, models


@pytest.mark.slow
def test_text_encoder_full_size(sd21):
    import torch

    folder, (text_encoder, _, _) = sd21
    ids = CLIPTokenizer.from_folder(folder / "tokenizer").encode(PROMPTS)  # (3, 77), padded with 0
    assert ids[0, -1] == 0
    ours = load_component(folder, "text_encoder", Backend())
    with torch.no_grad():
        theirs = text_encoder(torch.from_numpy(ids), output_hidden_states=True)
        skipped = text_encoder.final_layer_norm(theirs.hidden_states[-3])  # clip_skip=2
    assert ours(ids).shape == (3, 77, 1024)
    assert relative_error(ours(ids), to_numpy(theirs.last_hidden_state)) <= TOLERANCE
    assert relative_error(ours(ids, clip_skip=2), to_numpy(skipped)) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("latent_size", [(8, 8), (12, 20)], ids=["8x8", "12x20-odd"])
def test_unet_full_size(sd21, latent_size):
    import torch

    folder, (_, unet, _) = sd21
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((2, 4, *latent_size), dtype=np.float32)
    context = rng.standard_normal((2, 77, 1024), dtype=np.float32)
    ours = load_component(folder, "unet", Backend())(sample, 801, context)
    with torch.no_grad():
        theirs = unet(torch.from_numpy(sample), 801, torch.from_numpy(context)).sample
    assert relative_error(ours, to_numpy(theirs)) <= TOLERANCE


@pytest.mark.slow
def test_default_size_is_768(sd21):
    folder, _ = sd21
    pipe = minisd.load(folder)
    assert (pipe.defaults["height"], pipe.defaults["width"]) == (768, 768)


# ---- a tiny SD2-style model, whole ----


@pytest.fixture(scope="module")
def tiny_sd2(tmp_path_factory):
    text = {**TINY_TEXT, "hidden_act": "gelu"}
    unet = {**TINY_UNET, "use_linear_projection": True, "upcast_attention": True}
    models = build_models(text, unet, TINY_VAE, seed=40)
    folder = save_model_folder(tmp_path_factory.mktemp("tiny-sd2"), *models, scheduler=SD21_SCHEDULER)
    save_sd2_tokenizer(folder)
    return folder


def max_pixel_difference(ours, theirs):
    return int(np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max())


@pytest.mark.parametrize("scheduler", ["ddim", "pndm"])
def test_v_prediction_pipeline(tiny_sd2, scheduler):
    """SD2-style text to image with v-prediction, seed for seed against diffusers."""
    import torch

    theirs = reference_pipeline(tiny_sd2, scheduler)(
        PROMPTS[0],
        negative_prompt="blurry",
        num_inference_steps=8,
        guidance_scale=6.0,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(21),
    ).images[0]
    ours = minisd.load(tiny_sd2)(
        PROMPTS[0],
        negative_prompt="blurry",
        steps=8,
        guidance=6.0,
        height=64,
        width=64,
        scheduler=scheduler,
        seed=21,
        progress=False,
    )
    assert max_pixel_difference(ours, theirs) <= 1


def test_clip_skip_pipeline(tiny):
    """diffusers' clip_skip: the prompt (not the negative prompt) from an earlier layer.

    diffusers 0.42.1 computes it as hidden_states[-(clip_skip + 1)] then
    `text_encoder.text_model.final_layer_norm`, an attribute transformers 5 no longer has (its
    CLIPTextModel is flat), so passing clip_skip= to diffusers raises; we hand diffusers the
    embeddings its own definition gives instead.
    """
    import torch

    folder, (text_encoder, _, _) = tiny
    ids = [torch.from_numpy(CLIPTokenizer.from_folder(folder / "tokenizer").encode(t)) for t in (PROMPTS[0], "blurry")]
    with torch.no_grad():
        hidden = text_encoder(ids[0], output_hidden_states=True).hidden_states[-(2 + 1)]
        prompt_embeds = text_encoder.final_layer_norm(hidden)
        negative_embeds = text_encoder(ids[1]).last_hidden_state
    theirs = reference_pipeline(folder, "ddim")(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        num_inference_steps=6,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(22),
    ).images[0]
    ours = minisd.load(folder)(
        PROMPTS[0],
        negative_prompt="blurry",
        steps=6,
        height=64,
        width=64,
        scheduler="ddim",
        clip_skip=2,
        seed=22,
        progress=False,
    )
    assert max_pixel_difference(ours, theirs) <= 1


def test_long_prompt_chunks(tiny):
    """long_prompt="chunk": each 75-token chunk encoded by transformers as its own prompt."""
    import torch

    folder, (text_encoder, _, _) = tiny
    pipe = minisd.load(folder)
    tokenizer = pipe.tokenizer
    ids = tokenizer.token_ids(LONG_PROMPT)
    assert 150 < len(ids) <= 225  # three chunks
    context = pipe.encode_prompt(LONG_PROMPT, "blurry", guidance=7.5, long_prompt="chunk")
    assert context.shape == (2, 3 * 77, 32)
    rows = [[tokenizer.bos_id, *ids[i : i + 75], tokenizer.eos_id] for i in range(0, len(ids), 75)]
    rows = [row + [tokenizer.pad_id] * (77 - len(row)) for row in rows]
    negative = [tokenizer.bos_id, *tokenizer.token_ids("blurry"), tokenizer.eos_id]
    negative_rows = [negative + [tokenizer.pad_id] * (77 - len(negative))] + [
        [tokenizer.bos_id, tokenizer.eos_id] + [tokenizer.pad_id] * 75
    ] * 2
    with torch.no_grad():
        theirs = [text_encoder(torch.tensor(r)).last_hidden_state.reshape(1, -1, 32) for r in (negative_rows, rows)]
    assert relative_error(context, to_numpy(torch.cat(theirs))) <= TOLERANCE
    with pytest.warns(UserWarning, match="truncated"):
        assert pipe.encode_prompt(LONG_PROMPT, guidance=7.5).shape == (2, 77, 32)


def test_text_option_errors(tiny):
    folder, _ = tiny
    pipe = minisd.load(folder)
    with pytest.raises(ValueError, match="clip_skip must be an integer from 0 to 4"):
        pipe.encode_prompt("a cat", clip_skip=5)
    with pytest.raises(ValueError, match="long_prompt must be 'truncate' or 'chunk'"):
        pipe.encode_prompt("a cat", long_prompt="split")
