"""The layers a checkpoint stores weights for: Linear, Conv2d, GroupNorm, LayerNorm, Embedding.

Each is a module (module.py) holding its parameters under the checkpoint's names (`weight`,
`bias`) and calling its operation (ops.py: the equation of nn.py, or a fast path for it).
"""

from . import ops
from .module import Module, Param


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True):
        self.weight = Param(out_features, in_features)
        self.bias = Param(out_features) if bias else None

    def __call__(self, x):  # (..., in) -> (..., out)
        return ops.linear(x, self.weight, self.bias)


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        self.weight = Param(out_channels, in_channels, kernel_size, kernel_size)
        self.bias = Param(out_channels)
        self.stride, self.padding = stride, padding

    def __call__(self, x):  # (B, C_in, H, W) -> (B, C_out, H', W')
        return ops.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class GroupNorm(Module):
    def __init__(self, num_groups, num_channels, eps):
        self.weight = Param(num_channels)
        self.bias = Param(num_channels)
        self.num_groups, self.eps = num_groups, eps

    def __call__(self, x):  # (B, C, H, W) -> (B, C, H, W)
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-5):
        self.weight = Param(dim)
        self.bias = Param(dim)
        self.eps = eps

    def __call__(self, x):  # (..., dim) -> (..., dim)
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


class Embedding(Module):
    def __init__(self, num_embeddings, dim):
        self.weight = Param(num_embeddings, dim)

    def __call__(self, ids):  # (B, T) int -> (B, T, dim): row `id` of the table for each token
        return self.weight[ids]


ACTIVATIONS = {"silu": ops.silu, "swish": ops.silu, "quick_gelu": ops.quick_gelu, "gelu": ops.gelu}


def activation(name):
    """The activation function a config names (`hidden_act`, `act_fn`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}: minisd knows {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
