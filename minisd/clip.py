"""The text encoder: CLIP's text transformer turns 77 token ids into 77 vectors.

SD 1.x uses OpenAI CLIP ViT-L/14 (width 768, 12 layers, quick_gelu); SD 2.x uses OpenCLIP
ViT-H (width 1024, exact GELU, the penultimate of 24 layers: its config says 23). Both are
this one pre-LayerNorm transformer with a causal mask, read from text_encoder/config.json.
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

    def check(self, source):
        must = Rules(source, self)
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings")
        for key in (*sizes, "num_attention_heads"):
            must(key, positive_integers([getattr(self, key)]), "an integer >= 1")
        must("num_attention_heads", self.hidden_size % self.num_attention_heads == 0, "a divisor of hidden_size")
        must("hidden_act", self.hidden_act in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        must("layer_norm_eps", self.layer_norm_eps > 0, "> 0")


class CLIPTextModel(Module):
    """ids (B, 77) -> last hidden state (B, 77, hidden_size), keys `text_model.*`.

    clip_skip = k stops k layers before the last (then the final LayerNorm, as diffusers does).
    """

    def __init__(self, config: CLIPTextConfig):
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def __call__(self, ids, clip_skip=0):
        layers = self.config.num_hidden_layers
        if not isinstance(clip_skip, int) or not 0 <= clip_skip < layers:
            raise ValueError(
                f"clip_skip must be an integer from 0 to {layers - 1} (this text encoder has "
                f"{layers} layers), got {clip_skip!r}"
            )
        return self.text_model(ids, layers - clip_skip)


class CLIPTextTransformer(Module):
    def __init__(self, config):
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def __call__(self, ids, depth):
        x = self.embeddings(ids)  # (B, 77, D)
        x = self.encoder(x, causal_mask(x, ids.shape[1]), depth)
        return self.final_layer_norm(x)


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
        """The first `depth` layers."""
        for layer in self.layers[:depth]:
            x = layer(x, mask)
        return x


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
