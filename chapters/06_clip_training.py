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
# caption its own picture. The trained text encoder is the one Stable Diffusion keeps.
#
# Stable Diffusion checkpoints carry only the text half. The embedded model was trained this way
# (weights/training/train.py) and also ships its tiny image tower (`minisd.clip_image`), so here
# is a trained CLIP's similarity matrix on a batch of fresh pictures, and its loss, both ways.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import common
import minisd
from minisd.clip_image import load_clip

args = common.options("Chapter 6: CLIP's contrastive objective on the embedded model's two towers")
folder = args.weights or minisd.default_model_folder()
if not (Path(folder) / "clip" / "model.safetensors").is_file():
    print(
        f"{folder} has no CLIP image tower (Stable Diffusion keeps only the text encoder): "
        "this chapter uses the embedded model, which ships both"
    )
    args.weights = minisd.default_model_folder()
pipe = common.load_model(args)
clip = load_clip(args.weights or minisd.default_model_folder(), pipe.backend)

# %%
# 1. A batch of pictures and their captions (fresh pictures: seeds the training never drew)
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

# %%
# 2. Both encoders: one vector per picture, one per caption, made unit length
image_vectors = common.host(pipe, clip.embed_images(pipe.backend.asarray(batch)))  # (N, width)
ids = pipe.tokenizer.encode(captions)  # (N, 77)
hidden = pipe.text_encoder(pipe.backend.asarray(ids, dtype="int64"))  # (N, 77, D)
text_vectors = common.host(pipe, clip.embed_texts(hidden, pipe.backend.asarray(ids, dtype="int64")))  # (N, width)
image_vectors /= np.linalg.norm(image_vectors, axis=1, keepdims=True)
text_vectors /= np.linalg.norm(text_vectors, axis=1, keepdims=True)

# %%
# 3. Cosine similarity of every picture with every caption: the diagonal holds the matching pairs
similarity = image_vectors @ text_vectors.T  # (N pictures, N captions)
matching = np.diag(similarity)
negatives = similarity[~np.eye(len(captions), dtype=bool)]
print(f"matching pairs: mean cosine {matching.mean():.3f}; negatives: mean {negatives.mean():.3f}")


# %%
# 4. The contrastive loss, both ways
def cross_entropy(logits):
    """Mean over rows of −log softmax(row)[its own index]: each row should pick its diagonal entry."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(np.diag(log_softmax)))


logits = clip.scale * similarity  # a learned temperature sharpens the cosines
loss_image_to_text = cross_entropy(logits)  # each picture picks its caption among N
loss_text_to_image = cross_entropy(logits.T)  # each caption picks its picture among N
loss = (loss_image_to_text + loss_text_to_image) / 2  # CLIP's loss
chance = np.log(len(captions))  # the loss of a model that cannot tell: uniform choices
print(
    f"temperature scale {clip.scale:.1f}; loss picture->caption {loss_image_to_text:.3f}, "
    f"caption->picture {loss_text_to_image:.3f}, CLIP loss {loss:.3f} (chance: {chance:.3f})"
)
print("each picture's best caption is its own:", (similarity.argmax(axis=1) == np.arange(len(captions))).tolist())

# %%
# Figure: the similarity matrix, and the probabilities the loss sees
fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.6), layout="constrained")
probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
probabilities /= probabilities.sum(axis=1, keepdims=True)  # softmax of each row
short = [f"{colour}\n{shape}\non {background}" for colour, shape, background in combinations]  # the captions, short
for ax, values, title, colours in (
    (left, similarity, "cosine similarity: picture (row) × caption (column)", "viridis"),
    (right, probabilities, f"softmax of each row × {clip.scale:.0f}: P(caption | picture)", "Blues"),
):
    shown = ax.imshow(values, cmap=colours, vmin=min(0, values.min()), vmax=1)
    for (i, j), value in np.ndenumerate(values):
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if (value < 0.5) == (colours == "viridis") else "black",
        )
    for i, image in enumerate(images):  # the pictures, left of their rows
        ax.imshow(common.pixels(image), extent=(-1.45, -0.55, i + 0.45, i - 0.45))
    ax.set_xlim(-1.5, len(captions) - 0.5)
    ax.set_ylim(len(captions) - 0.5, -0.5)
    ax.set_xticks(range(len(captions)), short, fontsize=8)
    ax.set_yticks([])
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, shrink=0.7, label=title.split(":")[0])
fig.suptitle(
    f"A trained CLIP: matching pairs on the diagonal, negatives elsewhere.\nLoss picture→caption "
    f"{loss_image_to_text:.3f}, caption→picture {loss_text_to_image:.3f} (chance: ln {len(captions)} = "
    f"{chance:.2f})"
)
common.save_figure(fig, args, "06_clip_similarity")

common.save_facts(
    args,
    "06_clip_training",
    {
        "captions": captions,
        "similarity": similarity.tolist(),
        "scale": clip.scale,
        "loss_image_to_text": loss_image_to_text,
        "loss_text_to_image": loss_text_to_image,
    },
)
