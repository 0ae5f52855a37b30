"""The text encoder: CLIP's text transformer turns 77 token ids into 77 vectors.

SD 1.x uses OpenAI CLIP ViT-L/14 (width 768, 12 layers, quick_gelu); SD 2.x uses OpenCLIP
ViT-H (width 1024, exact GELU, the penultimate of 24 layers: its config says 23). Both are
this one pre-LayerNorm transformer with a causal mask, read from text_encoder/config.json.

SDXL reads two of them (ViT-L and OpenCLIP ViT-bigG, width 1280, 32 layers) a layer before
their last, without the final LayerNorm (`CLIPTextModel.penultimate`), and also takes the
second one's *pooled* vector: the final state of the end token, projected
(`CLIPTextModelWithProjection`).
"""

from dataclasses import dataclass

from . import ops
from .backend import array_module
from .layers import ACTIVATIONS, Embedding, LayerNorm, Linear, activation
from .module import Config, Module, Rules, positive_integers


@dataclass
class CLIPTextConfig(Config):
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2  # 2 (transformers' old default): the end token is the largest id
    projection_dim: int = 768  # CLIPTextModelWithProjection's pooled vector

    def check(self, source):
        must = Rules(source, self)
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings")
        for key in (*sizes, "num_attention_heads"):
            must(key, positive_integers([getattr(self, key)]), "an integer >= 1")
        must("num_attention_heads", self.hidden_size % self.num_attention_heads == 0, "a divisor of hidden_size")
        must("hidden_act", self.hidden_act in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        must("layer_norm_eps", self.layer_norm_eps > 0, "> 0")
        must("projection_dim", positive_integers([self.projection_dim]), "an integer >= 1")


class CLIPTextModel(Module):
    """ids (B, 77) -> last hidden state (B, 77, hidden_size), keys `text_model.*`.

    clip_skip = k stops k layers before the last (then the final LayerNorm, as diffusers does).
    """

    def __init__(self, config: CLIPTextConfig):
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def __call__(self, ids, clip_skip=0):
        layers = self.config.num_hidden_layers
        check_clip_skip(clip_skip, layers)
        return self.text_model.final_layer_norm(self.text_model.hidden_states(ids, layers - clip_skip)[-1])

    def penultimate(self, ids, clip_skip=0):
        """SDXL's text vectors: the state after all layers but the last (clip_skip more before),
        *without* the final LayerNorm, as diffusers takes `hidden_states[-(clip_skip + 2)]`."""
        layers = self.config.num_hidden_layers
        check_clip_skip(clip_skip, layers - 1)
        return self.text_model.hidden_states(ids, layers - 1 - clip_skip)[-1]


class CLIPTextModelWithProjection(CLIPTextModel):
    """CLIPTextModel with the pooled output: ids (B, 77) -> (penultimate states (B, 77, D),
    pooled (B, projection_dim)). Keys `text_model.*` and `text_projection.weight`."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__(config)
        self.text_projection = Linear(config.hidden_size, config.projection_dim, bias=False)

    def penultimate_and_pooled(self, ids, clip_skip=0):
        """SDXL's second text encoder, one pass: the text vectors `penultimate` gives, and the
        projected final state of each row's end token (the pooled prompt vector)."""
        layers = self.config.num_hidden_layers
        check_clip_skip(clip_skip, layers - 1)
        states = self.text_model.hidden_states(ids, layers)  # layers + 1 of them, (B, 77, D) each
        last = self.text_model.final_layer_norm(states[-1])  # (B, 77, D)
        pooled = last[array_module(ids).arange(ids.shape[0]), self.end_positions(ids)]  # (B, D)
        return states[-2 - clip_skip], self.text_projection(pooled)

    def end_positions(self, ids):
        """Where each row's end token is, as transformers finds it: the largest id (when the
        config's eos_token_id is the old default 2), else the first `eos_token_id`."""
        xp = array_module(ids)
        if self.config.eos_token_id == 2:
            return xp.argmax(ids, axis=-1)
        return xp.argmax(ids == self.config.eos_token_id, axis=-1)


def check_clip_skip(clip_skip, most):
    if not isinstance(clip_skip, int) or not 0 <= clip_skip < most:
        raise ValueError(
            f"clip_skip must be an integer from 0 to {most - 1} (this text encoder has {most} usable "
            f"layers), got {clip_skip!r}"
        )


class CLIPTextTransformer(Module):
    def __init__(self, config):
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def hidden_states(self, ids, depth):
        """The embeddings, then the state after each of the first `depth` layers: depth + 1 arrays
        (B, 77, D), as transformers' `hidden_states` (the final LayerNorm not applied)."""
        x = self.embeddings(ids)  # (B, 77, D)
        return self.encoder(x, causal_mask(x, ids.shape[1]), depth)


class CLIPTextEmbeddings(Module):
    """Token embedding + learned position embedding."""

    def __init__(self, config):
        self.token_embedding = Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = Embedding(config.max_position_embeddings, config.hidden_size)

    def __call__(self, ids):
        length = ids.shape[1]
        return self.token_embedding(ids) + self.position_embedding.weight[:length]


class CLIPEncoder(Module):
    def __init__(self, config):
        self.layers = [CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)]

    def __call__(self, x, mask, depth):
        """The input and the output of each of the first `depth` layers."""
        states = [x]
        for layer in self.layers[:depth]:
            states.append(layer(states[-1], mask))
        return states


class CLIPEncoderLayer(Module):
    """Pre-LN block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config):
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def __call__(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPAttention(Module):
    def __init__(self, config):
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj = Linear(width, width)
        self.k_proj = Linear(width, width)
        self.v_proj = Linear(width, width)
        self.out_proj = Linear(width, width)

    def __call__(self, x, mask):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.out_proj(ops.attention(q, k, v, self.heads, mask))


class CLIPMLP(Module):
    def __init__(self, config):
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


def causal_mask(x, length):
    """(T, T) additive mask: token i may attend to tokens 0..i only (-inf above the diagonal)."""
    xp = array_module(x)
    return xp.triu(xp.full((length, length), -xp.inf, dtype=x.dtype), k=1)
