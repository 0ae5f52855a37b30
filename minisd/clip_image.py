"""CLIP's other half: the image tower, and the vectors CLIP compares pictures and captions with.

CLIP trains two encoders side by side, one for captions and one for pictures, so that a
picture and its caption get nearby vectors and mismatched pairs distant ones (chapter 6).
Stable Diffusion keeps only the text half (clip.py); its checkpoints have no image tower.
The embedded model (weights/minisd-shapes/) also ships the image half it was trained with, in
clip/model.safetensors (weights/training/train.py, `train_clip` and `save`):

    picture  (B, 3, 64, 64) -> 4 × (conv3×3 stride 2 -> SiLU) -> mean over pixels -> linear -> (B, 64)
    caption  text encoder's last hidden state at the end-of-text token -> text_projection -> (B, 64)
    logits   exp(logit_scale) · cosine(picture, caption), capped at 100 as in training

This module reads its own file (with weights.py's reader and strict key checks), so it sits on
the floor of pipeline.py.
"""

import itertools
import re
from pathlib import Path

from . import ops
from .backend import Backend, array_module
from .errors import WeightsError
from .layers import Conv2d, Linear
from .module import Module, Param
from .safetensors_file import read_safetensors
from .weights import load_module


class ImageTower(Module):
    """A tiny CNN: stride-2 conv3×3 + SiLU layers, mean over pixels, linear. Keys `convs.N`, `proj`."""

    def __init__(self, channels, width):
        self.convs = [Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(channels)]
        self.proj = Linear(channels[-1], width)

    def __call__(self, pixels):  # (B, 3, H, W) in [-1, 1] -> (B, width)
        x = pixels
        for conv in self.convs:
            x = ops.silu(conv(x))  # (B, C, H/2, W/2)
        return self.proj(x.mean(axis=(2, 3)))  # one average per channel: (B, C) -> (B, width)


class CLIPModel(Module):
    """The image tower, the text projection and the temperature: CLIP's contrastive head."""

    def __init__(self, channels, width, text_width):
        self.image_tower = ImageTower(channels, width)
        self.text_projection = Linear(text_width, width, bias=False)
        self.logit_scale = Param(1)  # log of the temperature's inverse: logits = exp(·) · cosine

    def embed_images(self, pixels):
        """(B, 3, H, W) pictures in [-1, 1] -> (B, width) vectors (not normalised)."""
        return self.image_tower(pixels)

    def embed_texts(self, hidden_states, ids):
        """The text encoder's output (B, 77, D) and its ids (B, 77) -> (B, width) vectors.

        Each caption is summed up by its end-of-text token: under the causal mask it is the one
        token that has read the whole caption. Its id (49407) is the vocabulary's largest, so
        argmax finds it (the first one, when the padding repeats it).
        """
        xp = array_module(hidden_states)
        end = xp.asarray(ids).argmax(axis=-1)  # (B,)
        return self.text_projection(hidden_states[xp.arange(len(end)), end])  # (B, D) -> (B, width)

    @property
    def scale(self):
        """exp(logit_scale), at most 100: what multiplies cosine similarities into logits."""
        return min(float(array_module(self.logit_scale).exp(self.logit_scale[0])), 100.0)


def load_clip(folder, backend=None):
    """The CLIPModel in `folder`/clip/model.safetensors."""
    path = Path(folder) / "clip" / "model.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"{folder} has no clip/model.safetensors: Stable Diffusion checkpoints keep only CLIP's text "
            "encoder; the embedded model (minisd.weights.default_model_folder()) ships the image tower too"
        )
    return clip_from_tensors(read_safetensors(path), path, backend or Backend())


def clip_from_tensors(tensors, source, backend):
    """A CLIPModel from {key: array} in clip/model.safetensors' keys (`source` names them in errors);
    its sizes are read from the shapes."""
    convs = sorted(int(m[1]) for key in tensors if (m := re.fullmatch(r"image_tower\.convs\.(\d+)\.weight", key)))
    channels = [tensors["image_tower.convs.0.weight"].shape[1]]
    channels += [tensors[f"image_tower.convs.{i}.weight"].shape[0] for i in convs]  # out channels of each conv
    width, text_width = tensors["text_projection.weight"].shape
    model = CLIPModel(channels, width, text_width)
    load_module(model, tensors, source, backend)
    return model
