"""Train minisd's embedded model from scratch: a tiny Stable Diffusion of coloured shapes.

    pip install -e '.[reference]'
    OMP_WAIT_POLICY=PASSIVE python weights/training/train.py        # ~70 min on 2 CPU cores
    OMP_WAIT_POLICY=PASSIVE python weights/training/train.py --hold-out   # the composition experiment

Three stages, as the article tells the story, each checkpointed so an interrupted run resumes
(checkpoints in weights/training/checkpoints/, ignored by git):

1. autoencoder: a small AutoencoderKL learns to squeeze 64×64 pictures into 4×8×8 latents;
2. CLIP: a small text transformer and a tiny image tower learn, contrastively, to give each
   picture and its caption nearby vectors; the text tower becomes the text encoder;
3. UNet: a small UNet2DConditionModel learns to predict the noise (as v-prediction) in noised
   latents, conditioned on the frozen caption embeddings (10% empty captions, for guidance).

Everything is seeded; the result is written in the diffusers folder layout to
weights/minisd-shapes/ (float16 safetensors). Run it alone on the machine: a concurrent CPU job
slows torch down several times.

--hold-out trains CLIP and the UNet without the combinations in shapes.HELD_OUT (the autoencoder,
which never reads captions, is reused from the main run's checkpoint when there is one) and
writes weights/training/held-out-model/, to measure how well the model composes words it never
saw together (evaluate.py --held-out).
"""

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from minisd.tokenizer import CLIPTokenizer  # noqa: E402
from shapes import COLOURS, COMBINATIONS, HELD_OUT, SHAPES, caption, draw  # noqa: E402


@dataclass
class Run:
    """What one training run covers and where it writes."""

    combinations: list  # the (colour, shape, background) triples CLIP and the UNet see
    output: Path  # the model folder it writes
    checkpoints: Path  # where it saves and resumes
    minutes: dict = field(default_factory=dict)  # training time of each stage, resumed runs included


MAIN_RUN = Run(COMBINATIONS, ROOT / "weights" / "minisd-shapes", HERE / "checkpoints")
HELD_OUT_RUN = Run(
    [c for c in COMBINATIONS if c not in HELD_OUT], HERE / "held-out-model", HERE / "checkpoints-held-out"
)
IMAGES_PER_COMBINATION = 160
VAE_STEPS, VAE_BATCH = 4000, 16
CLIP_STEPS = 1500
UNET_STEPS, UNET_BATCH = 4800, 64
SCHEDULER = {  # zero-terminal-SNR v-prediction, sampled with trailing DDIM: clean black/white
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,  # unused by trailing spacing; 1 is what diffusers expects of SD configs
}
DEFAULTS = {"steps": 20, "guidance": 1.5, "height": 64, "width": 64}  # chosen by evaluate.py on seeds 20000+

VAE_CONFIG = dict(
    block_out_channels=(16, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
UNET_CONFIG = dict(
    sample_size=8,
    block_out_channels=(64, 96, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=32,
)


def log(stage, message):
    print(f"[{time.strftime('%H:%M:%S')}] {stage}: {message}", flush=True)


# ---------------------------------------------------------------- data


def make_dataset(seed=0, per_combination=IMAGES_PER_COMBINATION):
    """All 54 combinations, `per_combination` pictures each: images (N, 3, 64, 64) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    labels, images = [], []
    for combination in COMBINATIONS:
        for _ in range(per_combination):
            labels.append(combination)
            images.append(draw(*combination, rng))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return labels, pixels


def caption_table(combinations):
    """Every caption the model knows: full and short forms, plus the empty one (for guidance)."""
    full = [caption(c, s, b) for c, s, b in combinations]
    short = [caption(c, s) for c in COLOURS for s in SHAPES]
    return full + short + [""]


# ---------------------------------------------------------------- checkpoints


def load_checkpoint(path, modules, optimizer, generator):
    """Restore modules, optimizer and RNG states: (step to continue from, seconds spent so far)."""
    if not path.exists():
        return 0, 0.0
    state = torch.load(path, weights_only=False)
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    generator.set_state(state["data_rng"])
    log(path.stem, f"resumed at step {state['step']}")
    return state["step"], state["seconds"]


def save_checkpoint(path, step, seconds, modules, optimizer, generator):
    path.parent.mkdir(exist_ok=True)
    state = {
        "step": step,
        "seconds": seconds,
        "modules": {n: m.state_dict() for n, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "data_rng": generator.get_state(),
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # never a half-written checkpoint


def train_loop(run, stage, steps, modules, optimizer, loss_fn, generator, every=100):
    """Run `loss_fn(step)` for `steps` steps with checkpoints; resumes where a run stopped.

    The learning rate follows a cosine from the optimizer's initial value down to 5% of it;
    `generator` (the data order) is checkpointed too, so a resumed run equals an unbroken one.
    """
    path = run.checkpoints / f"{stage}.pt"
    peak = optimizer.param_groups[0]["lr"]
    start, spent = load_checkpoint(path, modules, optimizer, generator)
    started = time.time()
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            rate = (step + 1 - start) / (time.time() - started)
            log(stage, f"step {step + 1}/{steps} loss {loss.item():.4f} ({rate:.2f} steps/s)")
            save_checkpoint(path, step + 1, spent + time.time() - started, modules, optimizer, generator)
    run.minutes[stage] = round((spent + time.time() - started) / 60, 1)


# ---------------------------------------------------------------- 1. the autoencoder


def edges(x):
    """Horizontal and vertical differences: an edge loss keeps corners crisp."""
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def train_vae(run, pixels):
    torch.manual_seed(1)
    vae = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0)
    order = torch.Generator().manual_seed(2)

    def loss_fn(step):
        batch = pixels[torch.randint(len(pixels), (VAE_BATCH,), generator=order)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=order)).sample
        loss = F.mse_loss(recon, batch) + 0.1 * F.l1_loss(recon, batch)
        loss = loss + sum(F.l1_loss(a, b) for a, b in zip(edges(recon), edges(batch))) * 0.5
        return loss + 1e-6 * posterior.kl().mean()

    train_loop(run, "vae", VAE_STEPS, {"vae": vae}, optimizer, loss_fn, order)
    return vae.eval()


def encode_all(vae, pixels):
    """Posterior means and standard deviations of every picture (encoded once)."""
    means, stds = [], []
    with torch.no_grad():
        for batch in pixels.split(256):
            posterior = vae.encode(batch).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------- 2. CLIP, contrastively


class ImageTower(torch.nn.Module):
    """A tiny CNN image encoder: 64×64 picture -> 64-d vector (CLIP's image side)."""

    def __init__(self, width=64):
        super().__init__()
        channels = [3, 16, 32, 64, 64]
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(channels, channels[1:])
        )
        self.proj = torch.nn.Linear(channels[-1], width)

    def forward(self, x):  # (B, 3, 64, 64) -> (B, width)
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.proj(x.mean(dim=(2, 3)))


def pooled(text_encoder, ids):
    """The text vector CLIP compares: the last layer's state at the end-of-text token."""
    hidden = text_encoder(ids).last_hidden_state  # (B, 77, D)
    return hidden[torch.arange(len(ids)), ids.argmax(dim=-1)]  # EOS has the highest id


def initial_clip():
    """CLIP as training starts it (seeded random weights): text encoder, image tower, text
    projection, and the learnable log-temperature (logits = exp(logit_scale) · cosine, 1/0.07 at first)."""
    torch.manual_seed(3)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    image_tower = ImageTower()
    text_projection = torch.nn.Linear(TEXT_CONFIG["hidden_size"], 64, bias=False)
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    return text_encoder, image_tower, text_projection, logit_scale


def clip_tensors(image_tower, text_projection, logit_scale):
    """CLIP's contrastive head as clip/model.safetensors keys it (minisd.clip_image reads them)."""
    tensors = {f"image_tower.{k}": v for k, v in image_tower.state_dict().items()}
    tensors["text_projection.weight"] = text_projection.weight.detach()
    tensors["logit_scale"] = logit_scale.detach().reshape(1)
    return tensors


def train_clip(run, labels, pixels, tokenizer):
    text_encoder, image_tower, text_projection, logit_scale = initial_clip()
    combinations = run.combinations
    captions = [caption(*combination) for combination in combinations]
    ids = torch.from_numpy(tokenizer.encode(captions))
    used = torch.zeros(TEXT_CONFIG["vocab_size"], 1)
    used[ids.unique()] = 1
    embedding = text_encoder.get_input_embeddings().weight
    embedding.register_hook(lambda grad: grad * used)  # only the rows our captions use learn
    by_combination = {c: [i for i, label in enumerate(labels) if label == c] for c in combinations}
    order = torch.Generator().manual_seed(4)
    modules = {"text_encoder": text_encoder, "image_tower": image_tower, "text_projection": text_projection}
    params = [p for m in modules.values() for p in m.parameters()] + [logit_scale]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0)

    def loss_fn(step):
        """InfoNCE over the 54 combinations: each picture should pick its own caption, and back."""
        picks = [by_combination[c][torch.randint(len(by_combination[c]), (1,), generator=order)] for c in combinations]
        images = F.normalize(image_tower(pixels[picks]), dim=-1)
        texts = F.normalize(text_projection(pooled(text_encoder, ids)), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * images @ texts.T  # (54, 54) cosine similarities
        targets = torch.arange(len(combinations))
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2

    modules_with_scale = {**modules, "logit_scale": _ScaleHolder(logit_scale)}
    train_loop(run, "clip", CLIP_STEPS, modules_with_scale, optimizer, loss_fn, order, every=250)
    with torch.no_grad():  # zero-shot accuracy on fresh pictures
        rng = np.random.default_rng(99)
        fresh = torch.stack([torch.tensor(draw(*c, rng)).permute(2, 0, 1).float() / 127.5 - 1 for c in combinations])
        similarity = (
            F.normalize(image_tower(fresh), dim=-1) @ F.normalize(text_projection(pooled(text_encoder, ids)), dim=-1).T
        )
        accuracy = (similarity.argmax(dim=1) == torch.arange(len(combinations))).float().mean().item()
    log("clip", f"zero-shot image->caption accuracy on fresh pictures: {accuracy:.1%}")
    return text_encoder.eval(), image_tower.eval(), text_projection, logit_scale, accuracy


class _ScaleHolder(torch.nn.Module):
    """Lets the learnable temperature ride along in checkpoints like a module."""

    def __init__(self, parameter):
        super().__init__()
        self.value = parameter


# ---------------------------------------------------------------- 3. the UNet


@dataclass
class UNetBatch:
    """One batch of UNet training examples (B = UNET_BATCH), as `unet_batch` draws it."""

    picks: torch.Tensor  # (B,) which pictures of the dataset
    x0: torch.Tensor  # (B, 4, h, w) their latents, sampled from the autoencoder's posterior, scaled
    rows: list  # (B,) each picture's caption, as a row of caption_table(): full, short or empty
    t: torch.Tensor  # (B,) timesteps, uniform in 0 … 999
    noise: torch.Tensor  # (B, 4, h, w) ε ~ N(0, 1)
    noisy: torch.Tensor  # (B, 4, h, w) x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε: what the UNet sees
    v_target: torch.Tensor  # (B, 4, h, w) v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0: what it must output


def noise_schedule():
    """ᾱ_t of the training schedule (SCHEDULER), (1000,) float32: x_t's share of picture is sqrt(ᾱ_t)."""
    return DDIMScheduler.from_config(SCHEDULER).alphas_cumprod


def caption_row(table, label, form):
    """The caption a picture of `label` is shown with, by a uniform draw `form`: the row of
    `table` (caption_table) of the empty caption below 0.1, the short one below 0.4, else the full one."""
    if form < 0.1:
        return table.index("")
    return table.index(caption(*label[:2]) if form < 0.4 else caption(*label))


def unet_batch(latents, latent_std, labels, table, alphas_cumprod, scaling_factor, generator):
    """Draw one batch of UNet training examples from the encoded pictures (posterior means and
    standard deviations, unscaled) and their labels, in the order training draws them."""
    picks = torch.randint(len(latents), (UNET_BATCH,), generator=generator)
    x0 = (latents[picks] + latent_std[picks] * torch.randn(latents[picks].shape, generator=generator)) * scaling_factor
    form = torch.rand(UNET_BATCH, generator=generator)  # 10% empty, 30% short, 60% full captions
    rows = [caption_row(table, labels[i], f) for f, i in zip(form.tolist(), picks.tolist())]
    t = torch.randint(0, 1000, (UNET_BATCH,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v_target = a.sqrt() * noise - (1 - a).sqrt() * x0
    return UNetBatch(picks, x0, rows, t, noise, noisy, v_target)


def train_unet(run, labels, latents, latent_std, text_encoder, tokenizer, scaling_factor):
    torch.manual_seed(5)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    alphas_cumprod = noise_schedule()
    table = caption_table(run.combinations)
    with torch.no_grad():  # the captions are few: embed them once
        embeddings = text_encoder(torch.from_numpy(tokenizer.encode(table))).last_hidden_state
    ema = UNet2DConditionModel(**UNET_CONFIG)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=4e-4, weight_decay=0)
    order = torch.Generator().manual_seed(6)

    def loss_fn(step):
        batch = unet_batch(latents, latent_std, labels, table, alphas_cumprod, scaling_factor, order)
        prediction = unet(batch.noisy, batch.t, embeddings[batch.rows]).sample  # the predicted v
        return F.mse_loss(prediction, batch.v_target)

    def loss_with_ema(step):
        """The loss, after folding the current weights into the running average (EMA)."""
        decay = min(0.999, (1 + step) / (10 + step))  # short memory early, 0.999 later
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        return loss_fn(step)

    train_loop(run, "unet", UNET_STEPS, {"unet": unet, "ema": ema}, optimizer, loss_with_ema, order)
    return ema.eval()


# ---------------------------------------------------------------- writing the model folder


def save(output, vae, text_encoder, unet, image_tower, text_projection, logit_scale, scaling_factor, report):
    from safetensors.torch import save_file

    vae.register_to_config(scaling_factor=scaling_factor)
    output.mkdir(parents=True, exist_ok=True)
    for name, model in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        model.half().save_pretrained(output / name, safe_serialization=True)
    CLIPTokenizer.default().save(output / "tokenizer")
    (output / "scheduler").mkdir(exist_ok=True)
    (output / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (output / "model_index.json").write_text(json.dumps(index, indent=2))
    (output / "minisd.json").write_text(json.dumps({"defaults": DEFAULTS}, indent=2))
    clip = output / "clip"  # the contrastive half of CLIP, for the chapter on how CLIP is trained
    clip.mkdir(exist_ok=True)
    tensors = clip_tensors(image_tower, text_projection, logit_scale)
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(clip / "model.safetensors"))
    (clip / "config.json").write_text(
        json.dumps(
            {
                "image_tower": "4 stride-2 conv3x3 (3->16->32->64->64) each + SiLU, mean pool, linear 64->64",
                "text_embedding": "text_encoder last_hidden_state at the EOS token, then text_projection",
                "zero_shot_accuracy": report["clip_accuracy"],
            },
            indent=2,
        )
    )
    (output / "training-report.json").write_text(json.dumps(report, indent=2))


def main():
    parser = argparse.ArgumentParser(description="Train minisd's embedded model from scratch.")
    parser.add_argument("--hold-out", action="store_true", help="the composition experiment (see above)")
    run = HELD_OUT_RUN if parser.parse_args().hold_out else MAIN_RUN
    started = time.time()
    tokenizer = CLIPTokenizer.default()
    labels, pixels = make_dataset()
    log("data", f"{len(pixels)} pictures of {len(COMBINATIONS)} combinations")
    if run is HELD_OUT_RUN:
        reuse_autoencoder(MAIN_RUN, run)
    vae = train_vae(run, pixels)
    means, stds = encode_all(vae, pixels)
    scaling_factor = float(1 / means.std())
    with torch.no_grad():
        recon = vae.decode(means[:512]).sample.clamp(-1, 1)
    psnr = float(10 * torch.log10(4 / F.mse_loss(recon, pixels[:512])))
    log(
        "vae", f"reconstruction PSNR {psnr:.2f} dB, latent std {means.std():.4f} -> scaling_factor {scaling_factor:.5f}"
    )
    labels, pixels, means, stds = keep(run.combinations, labels, pixels, means, stds)
    text_encoder, image_tower, text_projection, logit_scale, clip_accuracy = train_clip(run, labels, pixels, tokenizer)
    unet = train_unet(run, labels, means, stds, text_encoder, tokenizer, scaling_factor)
    minutes = (time.time() - started) / 60
    report = {
        "vae_psnr_db": round(psnr, 2),
        "scaling_factor": scaling_factor,
        "clip_accuracy": clip_accuracy,
        "combinations": len(run.combinations),
        "minutes_this_run": round(minutes, 1),
        "training_minutes_by_stage": run.minutes,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    save(run.output, vae, text_encoder, unet, image_tower, text_projection, logit_scale, scaling_factor, report)
    log("done", f"{minutes:.1f} min; wrote {run.output}")


def reuse_autoencoder(source, run):
    """The autoencoder never reads captions: the held-out run starts from the main run's."""
    if (source.checkpoints / "vae.pt").exists() and not (run.checkpoints / "vae.pt").exists():
        run.checkpoints.mkdir(exist_ok=True)
        shutil.copy(source.checkpoints / "vae.pt", run.checkpoints / "vae.pt")


def keep(combinations, labels, *arrays):
    """Only the pictures of `combinations` (all of them, except in the held-out experiment)."""
    rows = [i for i, label in enumerate(labels) if label in combinations]
    if len(rows) < len(labels):
        log("data", f"holding out {sorted(set(labels) - set(combinations))}: {len(rows)} pictures left")
    return [labels[i] for i in rows], *(array[rows] for array in arrays)


if __name__ == "__main__":
    main()
