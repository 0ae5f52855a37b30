"""The chapters (chapters/*.py): each runs top to bottom in --quick mode on the embedded model,
writes its figures (right size, not blank), and teaches facts that hold. A chapter writes the
numbers it computed to a JSON file beside its figures; every fact is checked here against a
closed form or this test's own computation with minisd and NumPy, not taken from the JSON alone.
Chapters 4 and 6 run weights/training/train.py's own code, so they need the reference extra.
"""

import inspect
import itertools
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minisd
from minisd.blocks import Attention, ResnetBlock2D
from minisd.clip_image import load_clip
from minisd.pipeline import Pipeline
from minisd.unet import BasicTransformerBlock, Transformer2DModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "weights" / "training"))
from shapes import COMBINATIONS, caption, draw  # noqa: E402

FOLDER = minisd.default_model_folder()

# chapter -> its figures and their size in pixels (figsize × 100 dpi) in --quick mode
FIGURES = {
    "01_components": {"01_components": (1200, 360)},
    "02_text_encoder": {"02_tokens": (1200, 450), "02_similarity": (800, 650)},
    "03_diffusion_steps": {"03_diffusion_steps": (1200, 720), "03_one_step": (1200, 800)},
    "04_training_examples": {
        "04_training_examples": (1200, 1250),
        "04_noise_prediction_error": (1200, 420),
        "04_training_batch": (1200, 1250),
    },
    "05_latent_space": {"05_latent_space": (1300, 510), "05_speed": (1200, 400)},
    "06_clip_training": {"06_clip_similarity": (1300, 1350)},
    "07_unet": {
        "07_unet_without_text": (1600, 1000),
        "07_unet_with_text": (1600, 1000),
        "07_timestep_embedding": (1200, 450),
        "07_without_and_with_text": (540, 500),
        "07_cross_attention": (1510, 260),
    },
    "08_guidance": {"08_guidance": (1200, 540)},
    "09_img2img": {"09_img2img": (1200, 360)},
    "10_sdxl": {"10_sdxl_sizes": (1300, 400), "10_sdxl_conditioning": (1300, 400)},
    "11_samplers": {
        "11_samplers": (620, 1750),
        "11_sampler_distances": (800, 450),
        "11_negative_direction": (1300, 380),
    },
}
NEEDS_TRAIN_PY = {"04_training_examples", "06_clip_training"}  # they import weights/training/train.py (torch)


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    """chapter(name) runs chapters/NAME.py --quick once and returns the facts it wrote (a dict)."""
    out = tmp_path_factory.mktemp("chapters")
    # One BLAS thread: the chapters' matrices are small, and threads fight on a busy 2-core machine.
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    facts = {}

    def run(name):
        if name not in facts:
            command = [sys.executable, str(ROOT / "chapters" / f"{name}.py"), "--quick", "--out", str(out)]
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
            assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
            facts[name] = json.loads((out / f"{name}.json").read_text())
        return facts[name]

    run.out = out
    return run


@pytest.fixture(scope="module")
def pipe():
    return minisd.load(FOLDER)


def config(name):
    return json.loads((FOLDER / name).read_text())


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def pixels(image):
    return np.asarray(image.convert("RGB"), np.float64) / 255


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=[pytest.mark.reference] if name in NEEDS_TRAIN_PY else []) for name in FIGURES]
)
def test_chapter_draws_its_figures(chapter, name):
    chapter(name)
    for figure, size in FIGURES[name].items():
        image = Image.open(chapter.out / f"{figure}.png")
        assert image.size == size, figure
        gray = np.asarray(image.convert("L"), np.float64) / 255
        assert gray.std() > 0.05, f"{figure} looks blank"


def test_components_pass_the_shapes_the_configs_imply(chapter):
    facts = chapter("01_components")
    defaults = config("minisd.json")["defaults"]
    height, width = defaults["height"], defaults["width"]
    factor = 2 ** (len(config("vae/config.json")["block_out_channels"]) - 1)  # each VAE level but the last halves
    shapes = facts["shapes"]
    assert shapes["token ids"] == [1, 77]
    assert shapes["token embeddings"] == [1, 77, config("text_encoder/config.json")["hidden_size"]]
    assert shapes["latents"] == [1, config("unet/config.json")["in_channels"], height // factor, width // factor]
    assert shapes["image"] == [1, 3, height, width]
    assert all(seconds > 0 for seconds in facts["seconds"].values())


# The headings of "The Illustrated Stable Diffusion" (Jay Alammar, 2022), in its order
ARTICLE_SECTIONS = [
    "The components of Stable Diffusion",
    "What is diffusion anyway?",
    "How does diffusion work?",
    "Speed boost: diffusion on compressed (latent) data instead of the pixel image",
    "The text encoder: a transformer language model",
    "How CLIP is trained",
    "Feeding text information into the image generation process",
    "Layers of the UNet noise predictor (without text)",
    "Layers of the UNet noise predictor with text",
]


def test_every_article_section_has_a_chapter_figure_in_the_guide():
    """chapters/README.md's table: every section of the article, each with the chapter and the
    figures that compute it; every chapter and every committed figure appears, and every link resolves."""
    guide = (ROOT / "chapters" / "README.md").read_text()
    table = guide.split("| article section | chapter | figures |", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.strip().splitlines()[1:]]
    sections = [row[0] for row in rows]
    for heading in ARTICLE_SECTIONS:
        assert any(heading.lower() in section.lower() for section in sections), heading
    for section, chapters, figures in rows:
        assert re.findall(r"\(figures/[^)]+\.png\)", figures), f"{section}: no figure"
        for target in re.findall(r"\]\(([^)]+)\)", chapters + figures):
            assert (ROOT / "chapters" / target).is_file(), target
    linked = set(re.findall(r"\(figures/([^/)]+\.png)\)", table))
    assert linked == {path.name for path in (ROOT / "chapters" / "figures").glob("*.png")}
    assert set(re.findall(r"\(([0-9]{2}_\w+\.py)\)", table)) == {f"{name}.py" for name in FIGURES}


def test_sizes_side_by_side_are_the_configs_and_the_articles_numbers(pipe):
    """common.sizes: the embedded model's from its configs, SD 1.5's the article's published numbers
    (77 token vectors of 768, latents 4×64×64, a 3×512×512 picture)."""
    sys.path.insert(0, str(ROOT / "chapters"))
    import common

    factor = 2 ** (len(config("vae/config.json")["block_out_channels"]) - 1)
    side = config("minisd.json")["defaults"]["height"]
    assert common.sizes(pipe) == {
        pipe.name: {
            "token embeddings": (77, config("text_encoder/config.json")["hidden_size"]),
            "latents": (config("vae/config.json")["latent_channels"], side // factor, side // factor),
            "image": (3, side, side),
        },
        "SD 1.5": {"token embeddings": (77, 768), "latents": (4, 64, 64), "image": (3, 512, 512)},
    }
    assert common.shape((4, 64, 64)) == "4×64×64"


def test_text_encoder_pieces_spell_the_prompt_and_similarities_are_cosines(chapter, pipe):
    facts = chapter("02_text_encoder")
    pieces, ids = facts["pieces"], facts["ids"]
    assert "".join(pieces).replace("</w>", " ").strip() == facts["prompt"]
    assert len(ids) == 77 and ids[0] == 49406 and ids[len(pieces) + 1] == 49407  # start, pieces, end
    # the end-of-text vectors, computed here: the first 49407 in each row
    batch = pipe.tokenizer.encode(facts["prompts"])
    states = pipe.text_encoder(batch).astype(np.float64)
    ends = [list(row).index(49407) for row in batch]
    vectors = states[np.arange(len(batch)), ends]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = np.asarray(facts["similarity"])
    np.testing.assert_allclose(similarity, vectors @ vectors.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(similarity), 1, atol=1e-5)


def denoised(pipe, facts):
    """The chapter's run, made here: its prompt and step count, from the random latents x_T its seed
    draws, (1, 4, h, w). Returns x_T and the pipeline's steps."""
    x_T = np.random.default_rng(facts["seed"]).standard_normal((1, *facts["sizes"][pipe.name]["latents"]), np.float32)
    return x_T, list(pipe.denoise(facts["prompt"], steps=facts["steps"], latents=x_T))


def test_every_step_splits_into_a_clean_picture_and_noise_ddim_keeps_the_picture(chapter, pipe):
    """Each step's prediction read as x_t = √ᾱ·x̂₀ + √(1 − ᾱ)·ε̂ (closed form for v-prediction); DDIM's
    next latents are √ᾱ'·x̂₀ + √(1 − ᾱ')·ε̂ at t' = t − T // steps; the chapter's distances and
    cosines are these."""
    facts = chapter("03_diffusion_steps")
    schedule, unet = config("scheduler/scheduler_config.json"), config("unet/config.json")
    defaults = config("minisd.json")["defaults"]
    factor = 2 ** (len(config("vae/config.json")["block_out_channels"]) - 1)
    assert facts["sizes"] == {
        pipe.name: {
            "token embeddings": [77, config("text_encoder/config.json")["hidden_size"]],
            "latents": [unet["in_channels"], defaults["height"] // factor, defaults["width"] // factor],
            "image": [3, defaults["height"], defaults["width"]],
        },
        "SD 1.5": {"token embeddings": [77, 768], "latents": [4, 64, 64], "image": [3, 512, 512]},
    }
    assert schedule["_class_name"] == "DDIMScheduler" and schedule["timestep_spacing"] == "trailing"
    assert schedule["prediction_type"] == "v_prediction" and not schedule["set_alpha_to_one"]
    x_T, run = denoised(pipe, facts)
    T, steps = schedule["num_train_timesteps"], facts["steps"]
    timesteps = np.round(np.arange(T, 0, -T / steps)).astype(int) - 1  # "trailing": 999, … down to T/steps − 1
    assert facts["timesteps"] == [step.timestep for step in run] == timesteps.tolist()
    alpha_bar = alpha_bar_closed_form(schedule)
    a = alpha_bar[timesteps]
    np.testing.assert_allclose(facts["alpha_bars"], a, rtol=1e-4, atol=1e-6)
    x = np.concatenate([x_T, *(step.latents for step in run[:-1])]).astype(np.float64)  # DDIM's UNet sees x_t itself
    v = np.concatenate([step.noise_pred for step in run]).astype(np.float64)  # the guided output, (steps, 4, h, w)
    root_a, root_b = np.sqrt(a)[:, None, None, None], np.sqrt(1 - a)[:, None, None, None]
    x0, eps = root_a * x - root_b * v, root_a * v + root_b * x  # v = √ᾱ·ε − √(1 − ᾱ)·x₀, x = √ᾱ·x₀ + √(1 − ᾱ)·ε
    a_next = alpha_bar[np.maximum(timesteps - T // steps, 0)]  # DDIM steps down T // steps; ᾱ_0 after the last
    after = np.sqrt(a_next)[:, None, None, None] * x0 + np.sqrt(1 - a_next)[:, None, None, None] * eps
    np.testing.assert_allclose(after, np.concatenate([step.latents for step in run]), atol=1e-4)
    final = pixels(pipe.decode(run[-1].latents))
    distances = {
        "x_t": [rms(pixels(pipe.decode(x[i : i + 1].astype(np.float32))), final) for i in range(steps)],
        "x0": [rms(pixels(pipe.decode(x0[i : i + 1].astype(np.float32))), final) for i in range(steps)],
    }
    for name, values in distances.items():
        np.testing.assert_allclose(facts["distances"][name], values, atol=2e-3)
    assert all(c < s for c, s in zip(distances["x0"], distances["x_t"]))  # x̂₀ is always the closer picture
    assert distances["x0"][-1] < 0.02  # the last x̂₀ is the final picture, but for √(1 − ᾱ_0)·ε̂
    cosines = [float(np.sum(e * x_T) / np.linalg.norm(e) / np.linalg.norm(x_T)) for e in eps]
    np.testing.assert_allclose(facts["noise_cosines"], cosines, atol=1e-5)
    assert min(cosines) > 0.96 and cosines[0] == pytest.approx(1)  # ᾱ = 0 at t = 999: ε̂ is x_t itself


def test_one_step_taken_apart_is_the_loops_step(chapter, pipe):
    """The UNet without and with the text, asked here; guidance mixes them into the loop's own
    prediction, and the chapter's scheduler step lands on the loop's next latents."""
    facts = chapter("03_diffusion_steps")
    one = facts["one_step"]
    k = one["index"]
    _, run = denoised(pipe, facts)
    x_t = run[k - 1].latents  # DDIM: the UNet sees the latents themselves
    for name, text in (("without", ""), ("with", facts["prompt"])):
        vectors = pipe.text_encoder(pipe.tokenizer.encode(text))  # (1, 77, D)
        np.testing.assert_allclose(one[name], pipe.unet(x_t, one["timestep"], vectors), rtol=1e-5, atol=1e-5)
    without, with_text = np.asarray(one["without"]), np.asarray(one["with"])
    guided = without + facts["guidance"] * (with_text - without)
    np.testing.assert_allclose(guided, run[k].noise_pred, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one["next_latents"], run[k].latents, rtol=1e-5, atol=1e-5)


def test_the_loop_shown_is_the_source_of_pipeline_denoise(chapter):
    facts = chapter("03_diffusion_steps")
    lines, first = inspect.getsourcelines(Pipeline.denoise)
    shown = facts["loop"]["source"]
    assert textwrap.dedent("".join(lines[facts["loop"]["first_line"] - first :])).splitlines() == shown
    assert shown[0].startswith("for ") and shown[-1].strip().startswith("yield Step(")
    assert any("self.predict_noise(" in line for line in shown) and any("scheduler.step(" in line for line in shown)


def alpha_bar_closed_form(schedule):
    """ᾱ_t of SD's scaled-linear betas (zero-terminal-SNR rescaled when configured), in float64."""
    assert schedule["beta_schedule"] == "scaled_linear"
    betas = (
        np.linspace(schedule["beta_start"] ** 0.5, schedule["beta_end"] ** 0.5, schedule["num_train_timesteps"]) ** 2
    )
    alpha_bar = np.cumprod(1 - betas)
    if schedule.get("rescale_betas_zero_snr"):  # Lin et al. 2023: shift sqrt(ᾱ) to end at 0, keep its start
        root = np.sqrt(alpha_bar)
        alpha_bar = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2
    return alpha_bar


@pytest.mark.reference
def test_noise_grows_with_the_level_and_the_predictor_finds_it(chapter, pipe):
    facts = chapter("04_training_examples")
    schedule = config("scheduler/scheduler_config.json")
    alpha_bar = alpha_bar_closed_form(schedule)
    levels = facts["levels"]
    np.testing.assert_allclose(facts["alpha_bar"], alpha_bar[levels], rtol=1e-4, atol=1e-6)
    stds = facts["added_noise_std"]
    assert all(a < b for a, b in itertools.pairwise(stds))
    np.testing.assert_allclose(stds, np.sqrt(1 - alpha_bar[levels]), atol=0.05)  # std of 12,288 N(0, 1) draws ≈ 1
    assert facts["errors"][-1] < facts["errors"][0]
    # the predictor, asked here: its noise estimate is better at t = 900 than at t = 100
    rng = np.random.default_rng(5)
    combinations = COMBINATIONS[::6]
    images = [pipe.encode_image(Image.fromarray(draw(*c, rng)))[0] for c in combinations]
    clean = np.concatenate(images) * pipe.vae.config.scaling_factor
    text = pipe.text_encoder(pipe.tokenizer.encode([caption(*c) for c in combinations]))

    def error(t):
        noise = rng.standard_normal(clean.shape).astype(np.float32)
        a = alpha_bar[t]
        noisy = (np.sqrt(a) * clean + np.sqrt(1 - a) * noise).astype(np.float32)
        output = pipe.unet(noisy, t, text).astype(np.float64)
        v_prediction = schedule["prediction_type"] == "v_prediction"  # v = sqrt(a)·noise − sqrt(1 − a)·x0
        predicted = np.sqrt(a) * output + np.sqrt(1 - a) * noisy if v_prediction else output
        return np.mean((predicted - noise) ** 2)

    assert error(900) < error(100)


@pytest.mark.reference
def test_training_batch_is_drawn_as_described_and_its_loss_is_the_v_prediction_loss(chapter, pipe):
    """The batch train.py's unet_batch made: each x0 is its picture's latents drawn from the
    autoencoder's posterior (the picture redrawn and encoded here), each caption the picture's full
    or short caption or the empty one, and the loss the mean squared error between the UNet's
    output and v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x0, on x_t = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε, all computed here."""
    batch = chapter("04_training_examples")["batch"]
    picks, captions, t = batch["picks"], batch["captions"], np.asarray(batch["t"])
    x0, noise = np.asarray(batch["x0"], np.float64), np.asarray(batch["noise"], np.float64)
    labels = [COMBINATIONS[pick] for pick in picks]  # make_dataset(per_combination=1): one picture each, in order
    assert all(text in ("", caption(*label[:2]), caption(*label)) for text, label in zip(captions, labels))
    rng = np.random.default_rng(0)  # make_dataset's generator: the pictures, redrawn
    pictures = [Image.fromarray(draw(*combination, rng)) for combination in COMBINATIONS]
    mean, logvar = (np.concatenate(parts) for parts in zip(*(pipe.encode_image(pictures[pick]) for pick in picks)))
    z = (x0 / pipe.vae.config.scaling_factor - mean) / np.exp(logvar / 2)  # N(0, 1) if x0 is a posterior draw
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    a = alpha_bar_closed_form(config("scheduler/scheduler_config.json"))[t].reshape(-1, 1, 1, 1)
    noisy = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    v = np.sqrt(a) * noise - np.sqrt(1 - a) * x0
    output = pipe.unet(noisy.astype(np.float32), t, pipe.text_encoder(pipe.tokenizer.encode(captions)))
    losses = ((output - v) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(batch["example_losses"], losses, rtol=1e-4)
    assert batch["loss"] == pytest.approx(losses.mean(), rel=1e-4)


def test_latents_are_48_times_smaller_and_decode_faithfully(chapter, pipe):
    facts = chapter("05_latent_space")
    vae = config("vae/config.json")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)  # 8: each level of the encoder but the last halves H and W
    assert facts["compression"] == 3 * factor**2 / vae["latent_channels"] == 48  # 3·H·W / (4·(H/8)·(W/8))
    assert min(facts["psnr_db"]) > 25
    image = Image.fromarray(draw("green", "triangle", "black", np.random.default_rng(11)))
    mean, _ = pipe.encode_image(image)
    decoded = pixels(pipe.decode(mean * pipe.vae.config.scaling_factor))
    assert 10 * math.log10(1 / np.mean((decoded - pixels(image)) ** 2)) > 25


def test_latent_speedup_law_is_exact_and_counts_the_unet(chapter, pipe):
    """FLOPs(n) = c + a·n + b·n², fitted on three small sizes, predicts the embedded model's
    pixel-space step exactly as counted there; its latent step is what a count here gives; and on
    pixels a step costs more than the 64 times more pixels alone (self-attention grows as n²)."""
    from minisd.roofline import count_flops

    speed = chapter("05_latent_space")["speed"]
    embedded = speed["embedded model"]
    assert embedded["pixel_flops"] == embedded["counted_pixel_flops"]
    side = embedded["sides"][0]
    with count_flops() as flops:
        pipe.unet(np.zeros((2, 4, side, side), np.float32), 500, np.zeros((2, 77, 64), np.float32))
    assert flops[0] == embedded["counted_latent_flops"] == embedded["latent_flops"]
    for entry in speed.values():
        assert entry["pixel_flops"] / entry["latent_flops"] > (entry["sides"][1] / entry["sides"][0]) ** 2


def clip_cross_entropy(logits):
    """−log softmax at the diagonal, by logsumexp, averaged over the rows."""
    return np.mean([np.logaddexp.reduce(row) - row[i] for i, row in enumerate(logits)])


@pytest.mark.reference
def test_clip_scores_matching_pairs_highest_and_the_loss_is_cross_entropy(chapter, pipe):
    facts = chapter("06_clip_training")
    count = len(facts["captions"])
    for stage in ("before", "after"):
        logits = facts[f"scale_{stage}"] * np.asarray(facts[f"similarity_{stage}"], np.float64)
        assert facts[f"picture_to_caption_{stage}"] == pytest.approx(clip_cross_entropy(logits), abs=1e-5)
        assert facts[f"caption_to_picture_{stage}"] == pytest.approx(clip_cross_entropy(logits.T), abs=1e-5)
    assert facts["picture_to_caption_after"] < math.log(count)  # better than chance
    # fresh pictures drawn here: each matches its own caption better than the others, on average
    clip = load_clip(FOLDER)
    rng = np.random.default_rng(12)
    combinations = COMBINATIONS[::5]
    batch = np.stack([draw(*c, rng) for c in combinations]).transpose(0, 3, 1, 2) / 127.5 - 1
    ids = pipe.tokenizer.encode([caption(*c) for c in combinations])
    images = clip.embed_images(batch.astype(np.float32))
    texts = clip.embed_texts(pipe.text_encoder(ids), ids)
    cosine = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ (
        texts / np.linalg.norm(texts, axis=1, keepdims=True)
    ).T
    off_diagonal = cosine[~np.eye(len(combinations), dtype=bool)]
    assert np.diag(cosine).mean() > off_diagonal.mean() + 0.3


def expected_skips(unet):
    """{up-block ResNet: the output of the way down it concatenates}, from the config alone: the way
    down keeps conv_in's output, then each ResNet block's (the attention block's after it, if any) and
    each downsample's; the layers_per_block + 1 ResNet blocks of each up block take them back, last
    kept first taken."""
    levels, per_block = len(unet["block_out_channels"]), unet["layers_per_block"]
    kept = ["conv_in"]
    for level, kind in enumerate(unet["down_block_types"]):
        inner = "attentions" if kind.startswith("CrossAttn") else "resnets"
        kept += [f"down_blocks.{level}.{inner}.{i}" for i in range(per_block)]
        kept += [f"down_blocks.{level}.downsamplers.0"] * (level < levels - 1)
    taken = [f"up_blocks.{level}.resnets.{i}" for level in range(levels) for i in range(per_block + 1)]
    return dict(zip(taken, reversed(kept)))


@pytest.mark.reference
def test_clip_before_training_is_train_py_s_seeded_towers_and_training_pulls_pairs_together(chapter, pipe):
    """The untrained similarity, computed here in PyTorch by train.py's own modules (initial_clip,
    pooled): nothing on the diagonal stands out and the loss is about chance; trained, the
    matching pairs' cosines are far higher."""
    import torch
    import torch.nn.functional as F

    from train import initial_clip, pooled

    facts = chapter("06_clip_training")
    text_encoder, image_tower, text_projection, logit_scale = initial_clip()
    pictures = [draw(*c, np.random.default_rng(seed), 64) for c, seed in zip(facts["combinations"], facts["seeds"])]
    batch = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, 64, 64)
    ids = torch.from_numpy(pipe.tokenizer.encode(facts["captions"]))
    with torch.no_grad():
        images = F.normalize(image_tower(batch), dim=-1)
        texts = F.normalize(text_projection(pooled(text_encoder.eval(), ids)), dim=-1)
    before = np.asarray(facts["similarity_before"])
    np.testing.assert_allclose(before, (images @ texts.T).numpy(), atol=1e-5)
    assert facts["scale_before"] == pytest.approx(float(logit_scale.detach().exp()), rel=1e-6)  # 1/0.07
    negatives = ~np.eye(len(before), dtype=bool)
    assert abs(np.diag(before).mean() - before[negatives].mean()) < 0.05  # the pairs do not stand out yet
    chance = math.log(len(before))
    for loss in (facts["picture_to_caption_before"], facts["caption_to_picture_before"]):
        assert loss == pytest.approx(chance, rel=0.1)
    after = np.asarray(facts["similarity_after"])
    assert np.diag(after).mean() > np.diag(before).mean() + 0.5
    assert np.diag(after).mean() > after[negatives].mean() + 0.5


def test_unet_layers_follow_the_config_and_skips_add_channels(chapter):
    """The layers watched are those the config implies, and the skips read from the numbers are the
    config's pairs, each kept output as wide as its level and adding its channels to the taker's input."""
    facts = chapter("07_unet")
    unet = config("unet/config.json")
    blocks, per_block, channels = len(unet["block_out_channels"]), unet["layers_per_block"], unet["block_out_channels"]
    layers = {key: (kind, inputs, outputs) for key, kind, inputs, outputs, _ in facts["layers"]}
    kinds = [kind for kind, _, _ in layers.values()]
    assert kinds.count("ResNet") == blocks * per_block + 2 + blocks * (per_block + 1)  # down, mid, up
    attention_blocks = sum(t.startswith("CrossAttn") for t in unet["down_block_types"])
    assert kinds.count("attention") == attention_blocks * per_block + 1 + attention_blocks * (per_block + 1)
    assert kinds.count("downsample") == kinds.count("upsample") == blocks - 1
    assert layers["conv_out"][2] == layers["conv_in"][1]  # noise out, shaped like the latents in
    assert facts["skips"] == expected_skips(unet)
    keys = list(layers)
    for taken, kept in facts["skips"].items():  # an up ResNet's input = previous output + the skip, by channels
        level = int(kept.split(".")[1]) if kept.startswith("down_blocks") else 0
        assert layers[kept][2][1] == channels[level]
        previous = layers[keys[keys.index(taken) - 1]][2]
        assert layers[taken][1][1] == previous[1] + channels[level]
    assert facts["attention_total"] == pytest.approx(1, abs=1e-4)  # each pixel's weights over 77 tokens sum to 1


def test_every_resnet_reads_the_time_embedding_and_every_cross_attention_the_text(chapter, pipe):
    """Counted here from the config and the modules: every ResNet block was handed the time embedding
    and none the text; every cross-attention layer (attn2) was handed the text, and no self-attention
    (attn1); the drawings' arrows go to exactly those ResNet and attention blocks."""
    facts = chapter("07_unet")
    unet = config("unet/config.json")
    blocks, per_block = len(unet["block_out_channels"]), unet["layers_per_block"]
    modules = dict(pipe.unet.named_modules())
    resnets = {key for key, module in modules.items() if isinstance(module, ResnetBlock2D)}
    assert len(resnets) == blocks * per_block + 2 + blocks * (per_block + 1)
    down = sum(t.startswith("CrossAttn") for t in unet["down_block_types"])
    up = sum(t.startswith("CrossAttn") for t in unet["up_block_types"])
    cross = {key for key, module in modules.items() if isinstance(module, Attention) and key.endswith("attn2")}
    assert len(cross) == (down * per_block + 1 + up * (per_block + 1)) * unet["transformer_layers_per_block"]
    readers = {name: set(keys) for name, keys in facts["readers"].items()}
    assert resnets <= readers["time embedding"] and not resnets & readers["text"]
    assert {key for key in readers["text"] if isinstance(modules[key], Attention)} == cross
    arrows = {name: {key for key, _, _, _, reads in facts["layers"] if name in reads} for name in readers}
    assert arrows["time embedding"] == resnets
    assert arrows["text"] == {key for key, module in modules.items() if isinstance(module, Transformer2DModel)}


def test_unet_figures_show_minisd_code_and_count_sd15(chapter):
    """The code shown is minisd's own; SD 1.5's blocks are counted as diffusers builds them from its
    config: 4 levels of 2 ResNet blocks down and 3 up, 2 in the middle; attention after each but at
    the deepest level (CrossAttnDownBlock2D × 3, DownBlock2D) and one in the middle."""
    facts = chapter("07_unet")
    shown = (ResnetBlock2D.__call__, BasicTransformerBlock.__call__, Attention.__call__)
    assert facts["sources"] == {f.__qualname__: textwrap.dedent(inspect.getsource(f)) for f in shown}
    assert facts["counts"]["SD 1.5"] == {
        "ResNet blocks": 4 * 2 + 2 + 4 * 3,
        "skip connections": 4 * 3,
        "attention blocks": 3 * 2 + 1 + 3 * 3,
        "cross-attention layers": 3 * 2 + 1 + 3 * 3,
    }


def test_guidance_moves_the_picture_and_is_the_guidance_formula(chapter, pipe):
    facts = chapter("08_guidance")
    prompt, negative, steps, seed = facts["prompt"], facts["negative"], facts["steps"], facts["seed"]
    for changes in (facts["change_without_negative"], facts["change_with_negative"]):
        assert changes[0] == 0 and changes[-1] > changes[1] > 0
    plain = pixels(pipe(prompt, steps=steps, guidance=1, seed=seed, progress=False))
    strong = pixels(pipe(prompt, steps=steps, guidance=facts["scales"][-1], seed=seed, progress=False))
    assert rms(strong, plain) == pytest.approx(facts["change_without_negative"][-1], abs=1e-4)
    # at scale 1 the negative prompt has no effect: noise = negative + 1 · (prompt − negative) = prompt
    with_negative = pixels(pipe(prompt, negative, steps=steps, guidance=1, seed=seed, progress=False))
    assert np.array_equal(with_negative, plain)
    # the guided prediction is ε_negative + s·(ε_prompt − ε_negative), from two separate UNet calls
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    context = pipe.encode_prompt(prompt, negative, guidance=3)  # (2, 77, D): [negative, prompt]
    apart = [pipe.unet(latents, 500, row[None]).astype(np.float64) for row in context]
    guided = pipe.predict_noise(latents, 500, context, 3).reshape(latents.shape)
    np.testing.assert_allclose(guided, apart[0] + 3 * (apart[1] - apart[0]), atol=1e-5)


def test_img2img_moves_away_from_the_input_as_strength_grows(chapter, pipe):
    facts = chapter("09_img2img")
    steps = facts["steps"]
    assert facts["steps_run"] == [int(steps * strength) for strength in facts["strengths"]]
    assert all(a < b for a, b in itertools.pairwise(facts["distances"]))
    source = Image.fromarray(draw("red", "circle", "white", np.random.default_rng(3)))
    outputs = [
        pipe.img2img(facts["prompt"], source, strength, steps=steps, seed=facts["seed"], progress=False)
        for strength in facts["strengths"]
    ]
    distances = [rms(pixels(output), pixels(source)) for output in outputs]
    np.testing.assert_allclose(facts["distances"], distances, atol=1e-4)
    assert distances[-1] > distances[0]


def test_sdxl_chapter_counts_as_diffusers_and_conditions_as_sdxl(chapter):
    """Parameter counts as diffusers' and transformers' own models count them (num_parameters()
    of UNet2DConditionModel / CLIPTextModel(WithProjection) / AutoencoderKL built from the same
    configs: SD 1.5's UNet 859,520,964, SDXL's 2,567,463,684); the time ids of a 1024x1024
    request are diffusers' defaults (h, w, 0, 0, h, w); only the crop changes the embedding."""
    facts = chapter("10_sdxl")
    assert facts["parameters"]["SD 1.5"] == {"text encoder": 123060480, "UNet": 859520964, "VAE": 83653863}
    assert facts["parameters"]["SDXL"] == {
        "text encoder": 123060480,
        "text encoder 2": 694659840,
        "UNet": 2567463684,
        "VAE": 83653863,
    }
    assert facts["transformer_depths"] == {"SD 1.5": [1, 1, 1, 0], "SDXL": [0, 2, 10]}
    assert facts["context_shape"] == [1, 77, facts["first_width"] + 128]  # the two encoders side by side
    assert facts["time_ids"] == [1024, 1024, 0, 0, 1024, 1024]
    assert facts["changes"][0] == 0 and all(change > 0.01 for change in facts["changes"][1:])


def test_samplers_chapter_pictures_are_the_pipelines_and_guidance_is_a_direction(chapter, pipe):
    """A sampler's distance is that of the pipeline's own picture for the same seed; the refused
    ones are those whose σ-space steps cannot start at zero signal; guidance with a negative
    prompt is ε_prompt + (s − 1)(ε_prompt − ε_negative) (computed here on random latents); and
    the negative prompt "blue" takes blue out of the finished picture."""
    facts = chapter("11_samplers")
    prompt, seed, count = facts["prompt"], facts["seed"], facts["counts"][0]
    reference = pixels(pipe(prompt, steps=100, seed=seed, progress=False))
    for name in ("euler", "dpmpp_2m"):
        picture = pixels(pipe(prompt, steps=count, seed=seed, scheduler=name, progress=False))
        assert abs(facts["distances"][name][0] - rms(picture, reference)) < 1e-3
    refused = {name for name, values in facts["distances"].items() if all(isinstance(v, str) for v in values)}
    assert refused == {"lms", "heun"} and config("scheduler/scheduler_config.json")["rescale_betas_zero_snr"]
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    texts = {text: pipe.encode_prompt(text, guidance=1) for text in (prompt, facts["negative"])}
    eps = {text: pipe.predict_noise(latents, 500, context, 1) for text, context in texts.items()}
    guided = pipe.predict_noise(latents, 500, pipe.encode_prompt(prompt, facts["negative"], guidance=5), 5)
    direction = eps[prompt] - eps[facts["negative"]]
    np.testing.assert_allclose(guided, eps[prompt] + 4 * direction, rtol=1e-4, atol=1e-5)
    finals = [facts["colours"][label] for label in ('final, negative ""', "final, negative blue")]
    assert finals[1][2] < finals[0][2] and finals[1][0] > finals[0][0]  # less blue, more red
