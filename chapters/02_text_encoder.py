# %% [markdown]
# # 2. The text encoder
#
# *The Illustrated Stable Diffusion*, sections **"The components"** (the text encoder box) and
# **"The text encoder: a transformer language model"**.
#
# The prompt reaches the UNet as numbers in three moves:
#
# 1. the **tokenizer** cuts the text into pieces from a fixed vocabulary of 49,408 (byte-pair
#    encoding: frequent words are one piece, rare words several; `</w>` marks a word's end);
# 2. each piece becomes its **id**, framed by a start and an end token and padded to 77;
# 3. the **text encoder**, a transformer, turns the 77 ids into 77 vectors, each one informed by
#    the tokens before it (CLIP's attention is causal: a token sees only its left).
#
# Because of that causal attention, the end-of-text token's vector is the first to have read the
# whole prompt: CLIP uses it as the prompt's summary. We compare prompts through it: prompts that
# share words come out close, and in this small model's text space the colour weighs most (red
# and blue circles on white are further apart than a red circle and a red square).

# %%
import matplotlib.pyplot as plt
import numpy as np

import common

args = common.options("Chapter 2: prompt -> tokens -> ids -> one vector per token; prompts compared")
tr = args.tr
pipe = common.load_model(args)
tokenizer = pipe.tokenizer
prompt = "a red circle on a white background"

# %%
# 1. Tokens: the prompt cut into vocabulary pieces, and each piece's id
pieces = tokenizer.tokenize(prompt)
piece_ids = tokenizer.token_ids(prompt)
for piece, token_id in zip(pieces, piece_ids):
    print(f"{piece:>14} -> {token_id}")
print("a rarer word takes several pieces:", tokenizer.tokenize("a vermilion circle"))

# %%
# 2. The 77 ids the text encoder reads: start token, the pieces, end token, padding
ids = tokenizer.encode(prompt)  # (1, 77) int64
print("ids:", ids[0, : len(piece_ids) + 4], "...")

# %%
# 3. The text encoder: 77 ids -> 77 vectors of D numbers
vectors = common.host(pipe, pipe.text_encoder(pipe.backend.asarray(ids, dtype="int64")))  # (1, 77, D)
print("token embeddings:", vectors.shape)

# %%
# Figure 1: the pieces, their ids and their vectors
shown = len(piece_ids) + 3  # start, the pieces, end, one padding token
labels = [tr("<start>"), *pieces, tr("<end>"), tr("<pad>")]
fig, ax = plt.subplots(figsize=(12, 4.5), layout="constrained")
limit = np.abs(vectors[0, :shown]).max()
image = ax.imshow(vectors[0, :shown], aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
ax.set_yticks(range(shown), [tr.literal(f"{label}  (id {i})") for label, i in zip(labels, ids[0, :shown])])
ax.set_xlabel(tr("dimension of the token's vector (0 … {last})", last=vectors.shape[2] - 1))
ax.set_ylabel(tr("token (BPE piece and its id)"))
article = common.sizes(pipe)["SD 1.5"]["token embeddings"]
ax.set_title(
    tr(
        '"{prompt}": one {width}-number vector per token (SD 1.5: {article})\n'
        "the first {shown} of the {tokens} rows the UNet receives",
        prompt=prompt,
        width=vectors.shape[2],
        article=article[1],
        shown=shown,
        tokens=vectors.shape[1],
    )
)
fig.colorbar(image, ax=ax, label=tr("value"))
common.save_figure(fig, args, "02_tokens")

# %%
# 4. Comparing prompts: cosine similarity of their end-of-text vectors
prompts = [
    "a red circle on a white background",
    "a red circle on a black background",
    "a blue circle on a white background",
    "a red square on a white background",
    "a green triangle on a gray background",
    "a yellow triangle on a black background",
]
batch = tokenizer.encode(prompts)  # (6, 77)
states = common.host(pipe, pipe.text_encoder(pipe.backend.asarray(batch, dtype="int64")))  # (6, 77, D)
summary = states[np.arange(len(prompts)), batch.argmax(axis=1)]  # the end token has the largest id: (6, D)
unit = summary / np.linalg.norm(summary, axis=1, keepdims=True)
similarity = unit @ unit.T  # (6, 6) cosines: 1 = same direction, 0 = unrelated
print(np.round(similarity, 2))

# %%
# Figure 2: the similarity heatmap
fig, ax = plt.subplots(figsize=(8, 6.5), layout="constrained")
image = ax.imshow(similarity, cmap="viridis", vmin=min(0, similarity.min()), vmax=1)
for (i, j), value in np.ndenumerate(similarity):
    ax.text(j, i, tr.number(value, ".2f"), ha="center", va="center", color="white" if value < 0.7 else "black")
short = [tr.literal(p.replace(" background", "").replace(" on a", " /")) for p in prompts]
ax.set_xticks(range(len(prompts)), short, rotation=30, ha="right")
ax.set_yticks(range(len(prompts)), short)
ax.set_title(tr("Cosine similarity of the prompts' end-of-text vectors\n(prompt / background)"))
fig.colorbar(image, ax=ax, label=tr("cosine similarity"))
common.save_figure(fig, args, "02_similarity")

common.save_facts(
    args,
    "02_text_encoder",
    {
        "prompt": prompt,
        "pieces": pieces,
        "ids": ids[0].tolist(),
        "prompts": prompts,
        "similarity": similarity.tolist(),
    },
)
