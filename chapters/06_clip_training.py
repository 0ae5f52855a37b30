# %% [markdown]
# # 6. How CLIP is trained
#
# *The Illustrated Stable Diffusion*, section **"How CLIP is trained"**.
#
# CLIP learns from pictures and their captions with two encoders side by side: an image encoder
# and a text encoder, each mapping its input to a vector. Training takes a batch of N pairs and
# compares every picture with every caption by the **cosine similarity** of their vectors. The N
# matching pairs should score high, the N·(N − 1) mismatched pairs (the **negatives**) low: the
# loss is a cross-entropy that asks each picture to pick its own caption among the N, and each
# caption its own picture. The cosines are multiplied by a learned temperature scale before the
# softmax. The trained text encoder is the one Stable Diffusion keeps.
#
# Stable Diffusion checkpoints carry only the text half. The embedded model was trained this way
# (weights/training/train.py, `train_clip`, on batches of its 54 captions) and also ships its tiny
# image tower (`minisd.clip_image`). So here is the same batch of 8 fresh pictures and their
# captions before training (the seeded random towers `train_clip` starts from, made by the
# script's own `initial_clip`) and after it (the shipped towers). Before, the image tower gives
# every picture nearly the same vector, so all rows are alike: all 64 cosines are close to 0, the
# matching pairs no higher than the negatives, every row's softmax is the same spread over the
# captions, and the loss is about that of a blind guess, ln 8. After, the matching pairs stand
# out on the diagonal (cosines around 0.8; the negatives spread around 0, those that share words
# with the picture, like a red square and the caption of a red circle, well above it), each
# picture puts nearly all its probability on its own caption, and the loss is nearly 0.
#
# The script's code needs PyTorch (`pip install -e '.[reference]'`).

# %%
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import common
import minisd
from minisd.clip import CLIPTextConfig
from minisd.clip_image import clip_from_tensors, load_clip
from minisd.weights import component_from_tensors

args = common.options("Chapter 6: CLIP's contrastive objective on the embedded model's two towers")
tr = args.tr
folder = args.weights or minisd.default_model_folder()
if not (Path(folder) / "clip" / "model.safetensors").is_file():
    print(
        f"{folder} has no CLIP image tower (Stable Diffusion keeps only the text encoder): "
        "this chapter uses the embedded model, which ships both"
    )
    folder = args.weights = minisd.default_model_folder()
pipe = common.load_model(args)
clip = load_clip(folder, pipe.backend)
sizes = common.sizes(pipe)
print("a caption's token embeddings:", {name: common.shape(s["token embeddings"]) for name, s in sizes.items()})

# %%
# 1. A batch of pictures and their captions (fresh pictures, from seeds the training never used)
combinations = [
    ("red", "circle", "white"),
    ("red", "circle", "black"),
    ("red", "square", "white"),
    ("blue", "circle", "white"),
    ("green", "triangle", "gray"),
    ("yellow", "square", "black"),
    ("purple", "triangle", "white"),
    ("orange", "circle", "gray"),
]
captions = [common.shapes.caption(*combination) for combination in combinations]
images = [common.picture(*c, 64, seed=1000 + i) for i, c in enumerate(combinations)]  # the tower's 64×64 pictures
batch = np.stack([common.pixels(image) for image in images]).transpose(0, 3, 1, 2) * 2 - 1  # (N, 3, 64, 64)
ids = pipe.backend.asarray(pipe.tokenizer.encode(captions), dtype="int64")  # (N, 77)


# %%
# 2. Both encoders: one vector per picture, one per caption, made unit length; then the cosine
#    similarity of every picture with every caption (the diagonal holds the matching pairs)
def cosine_similarity(text_encoder, head):
    """(N pictures, N captions) cosines between the image tower's and the text side's vectors."""
    image_vectors = common.host(pipe, head.embed_images(pipe.backend.asarray(batch)))  # (N, width)
    hidden = text_encoder(ids)  # (N, 77, D)
    text_vectors = common.host(pipe, head.embed_texts(hidden, ids))  # (N, width): the end token's, projected
    image_vectors /= np.linalg.norm(image_vectors, axis=1, keepdims=True)
    text_vectors /= np.linalg.norm(text_vectors, axis=1, keepdims=True)
    return image_vectors @ text_vectors.T


def untrained_towers():
    """CLIP as weights/training/train.py's train_clip starts it: initial_clip()'s seeded random
    PyTorch weights, moved into minisd's text encoder and CLIP head."""
    train = common.training_script()
    text_encoder, image_tower, text_projection, logit_scale = train.initial_clip()
    source = "weights/training/train.py initial_clip()"
    config = CLIPTextConfig.from_dict(train.TEXT_CONFIG, source)
    head = train.clip_tensors(image_tower, text_projection, logit_scale)
    return (
        component_from_tensors("text_encoder", config, arrays(text_encoder.state_dict()), source, pipe.backend),
        clip_from_tensors(arrays(head), source, pipe.backend),
    )


def arrays(tensors):
    """{key: PyTorch tensor} -> {key: NumPy array}."""
    return {key: value.detach().numpy() for key, value in tensors.items()}


# %%
# 3. The contrastive loss, both ways
def log_softmax(logits):
    """The log of each row's probabilities, log P(caption | picture), computed without overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits):
    """Mean over rows of −log softmax(row)[its own index]: each row should pick its diagonal entry."""
    return float(-np.mean(np.diag(log_softmax(logits))))


def contrastive(text_encoder, head):
    """The similarity matrix, its temperature scale, and the loss picture → caption and caption → picture."""
    similarity = cosine_similarity(text_encoder, head)
    logits = head.scale * similarity  # the learned temperature sharpens the cosines
    losses = {
        "picture_to_caption": cross_entropy(logits),  # each picture picks its caption among N
        "caption_to_picture": cross_entropy(logits.T),  # each caption picks its picture among N
    }
    return {"similarity": similarity, "scale": head.scale, **losses}


stages = {"before": contrastive(*untrained_towers()), "after": contrastive(pipe.text_encoder, clip)}
chance = np.log(len(captions))  # the loss of a model that cannot tell: uniform choices
for name, stage in stages.items():
    similarity = stage["similarity"]
    negatives = similarity[~np.eye(len(captions), dtype=bool)]
    print(
        f"{name} training: matching pairs mean cosine {np.diag(similarity).mean():.3f}, negatives "
        f"{negatives.mean():.3f}; scale {stage['scale']:.1f}; loss picture->caption "
        f"{stage['picture_to_caption']:.3f}, caption->picture {stage['caption_to_picture']:.3f} (chance {chance:.3f}); "
        f"best caption is its own: {(similarity.argmax(axis=1) == np.arange(len(captions))).tolist()}"
    )


# %%
# Figure: before and after training, side by side on shared colour scales
def draw_matrix(ax, values, colours, limits):
    """A picture × caption matrix with its values written in, the pictures left of their rows."""
    shown = ax.imshow(values, cmap=colours, vmin=limits[0], vmax=limits[1])
    for (i, j), value in np.ndenumerate(values):
        dark = abs(value) > 0.6 if limits[0] < 0 else value > 0.5
        ax.text(j, i, tr.number(value, ".2f"), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    for i, image in enumerate(images):
        ax.imshow(common.pixels(image), extent=(-1.45, -0.55, i + 0.45, i - 0.45))
    ax.set_xlim(-1.5, len(captions) - 0.5)
    ax.set_ylim(len(captions) - 0.5, -0.5)
    ax.set_xticks(range(len(captions)), [tr.literal(textwrap.fill(c, 12)) for c in captions], fontsize=7)
    ax.set_yticks([])
    return shown


fig, axes = plt.subplots(2, 2, figsize=(13, 13.5), layout="constrained")
headings = {
    "before": tr("before training: the seeded random towers of {function}", function="train.py initial_clip()"),
    "after": tr("after training: the embedded model's towers ({module})", module="minisd.clip_image"),
}
for column, (name, stage) in enumerate(stages.items()):
    top, bottom = axes[:, column]
    cosines = draw_matrix(top, stage["similarity"], "RdBu_r", (-1, 1))
    top.set_title(headings[name] + "\n" + tr("cosine similarity: picture (row) × caption (column)"), fontsize=10)
    probabilities = draw_matrix(bottom, np.exp(log_softmax(stage["scale"] * stage["similarity"])), "Blues", (0, 1))
    bottom.set_title(
        tr("P(caption | picture): softmax of each row × {scale:.1f}", scale=stage["scale"])
        + "\n"
        + tr(
            "loss picture → caption {forward:.3f}, caption → picture {backward:.3f}",
            forward=stage["picture_to_caption"],
            backward=stage["caption_to_picture"],
        ),
        fontsize=10,
    )
fig.colorbar(cosines, ax=axes[0, :], shrink=0.8, label=tr("cosine similarity (both panels)"))
fig.colorbar(probabilities, ax=axes[1, :], shrink=0.8, label=tr("P(caption | picture) (both panels)"))
ours, sd15 = (common.shape(s["token embeddings"]) for s in sizes.values())
width = clip.text_projection.weight.shape[0]  # the vectors CLIP compares
fig.suptitle(
    tr("How CLIP is trained: the same {n} pictures and captions before and after contrastive training", n=len(captions))
    + "\n"
    + tr(
        "training pulls the matching pairs (the diagonal) together and pushes the negatives apart; "
        "a blind guess has loss ln {n} = {chance:.2f}",
        n=len(captions),
        chance=chance,
    )
    + "\n"
    + tr(
        "picture → image tower → {width} numbers; caption → {ours} token embeddings (SD 1.5: {sd15}) "
        "→ the end token's vector → {width} numbers",
        width=width,
        ours=ours,
        sd15=sd15,
    )
)
common.save_figure(fig, args, "06_clip_similarity")

common.save_facts(
    args,
    "06_clip_training",
    {
        "combinations": combinations,
        "captions": captions,
        "seeds": [1000 + i for i in range(len(captions))],
        **{f"{key}_{name}": np.asarray(v).tolist() for name, stage in stages.items() for key, v in stage.items()},
    },
)
