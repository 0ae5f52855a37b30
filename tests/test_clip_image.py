"""minisd.clip_image: the embedded model's CLIP image tower and text projection, against the
PyTorch modules of weights/training/train.py (and transformers' text encoder) on the shipped weights."""

import sys
from pathlib import Path

import numpy as np
import pytest

import minisd
from minisd.clip_image import load_clip
from minisd.weights import WeightsError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "weights" / "training"))
from shapes import COMBINATIONS, caption, draw  # noqa: E402

FOLDER = minisd.default_model_folder()


@pytest.mark.reference
def test_same_vectors_as_the_training_code():
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from train import ImageTower, pooled

    tensors = {key: value.float() for key, value in load_file(FOLDER / "clip" / "model.safetensors").items()}
    tower = ImageTower()
    tower.load_state_dict(
        {key.removeprefix("image_tower."): value for key, value in tensors.items() if key.startswith("image_tower.")}
    )
    text_encoder = CLIPTextModel.from_pretrained(FOLDER / "text_encoder", torch_dtype=torch.float32).eval()
    combinations = COMBINATIONS[::4]
    rng = np.random.default_rng(7)
    pictures = (np.stack([draw(*c, rng) for c in combinations]).transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float32)
    pipe = minisd.load(FOLDER)
    ids = pipe.tokenizer.encode([caption(*c) for c in combinations])
    with torch.no_grad():
        their_images = tower(torch.from_numpy(pictures)).numpy()
        their_texts = (pooled(text_encoder, torch.from_numpy(ids)) @ tensors["text_projection.weight"].T).numpy()
    clip = load_clip(FOLDER)
    ours_images = clip.embed_images(pictures)
    ours_texts = clip.embed_texts(pipe.text_encoder(ids), ids)
    for ours, theirs in ((ours_images, their_images), (ours_texts, their_texts)):
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-5
    assert clip.scale == pytest.approx(min(float(tensors["logit_scale"].exp()), 100), rel=1e-6)


def test_a_folder_without_the_image_tower_is_explained(tmp_path):
    with pytest.raises(WeightsError, match="keep only CLIP's text encoder"):
        load_clip(tmp_path)
