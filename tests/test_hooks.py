"""minisd.module.forward_hooks and nn.attention_weights, the windows chapter 7 looks through: they change
nothing, report what diffusers' own modules compute, and the attention weights are the ones the
attention layer mixes its values with."""

import numpy as np
import pytest

import minisd
from minisd.blocks import Attention, ResnetBlock2D
from minisd.module import forward_hooks
from minisd.nn import attention_weights

FOLDER = minisd.default_model_folder()


@pytest.fixture(scope="module")
def pipe():
    return minisd.load(FOLDER)


@pytest.fixture(scope="module")
def inputs(pipe):
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    return latents, 420, pipe.encode_prompt("a green square on a gray background", guidance=2)  # context (2, 77, D)


def test_hooks_change_nothing_and_go_away(pipe, inputs):
    calls = {}
    own_calls = {cls: cls.__dict__["__call__"] for cls in (ResnetBlock2D, Attention)}
    with forward_hooks(pipe.unet, lambda key, module, args, output: calls.setdefault(key, output)):
        hooked = pipe.unet(*inputs)
        pipe.vae.decode(np.zeros((1, 4, 8, 8), np.float32))  # same classes, but not below the UNet
    assert np.array_equal(hooked, pipe.unet(*inputs))
    assert all(cls.__dict__["__call__"] is call for cls, call in own_calls.items())
    assert {key for key, _ in pipe.unet.named_modules()} >= set(calls) >= {"conv_in", "mid_block.resnets.1"}
    assert not any(key.startswith(("decoder", "encoder", "post_quant")) for key in calls)


@pytest.mark.reference
def test_hooks_report_what_diffusers_modules_compute(pipe, inputs):
    """Every module output the hook reports equals the output of diffusers' module of the same
    name (diffusers' names are the checkpoint keys too), on the shipped weights."""
    import torch
    from diffusers import UNet2DConditionModel

    theirs = UNet2DConditionModel.from_pretrained(FOLDER / "unet", torch_dtype=torch.float32).eval()
    outputs = {}

    def keep(name):
        def hook(module, args, output):
            output = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            outputs[name] = output.detach().numpy()

        return hook

    for name, module in theirs.named_modules():
        module.register_forward_hook(keep(name))
    latents, t, context = inputs
    with torch.no_grad():
        theirs(torch.from_numpy(latents), t, torch.from_numpy(context))
    ours = {}

    def record(key, module, args, output):
        first = output[0] if isinstance(output, tuple) else output  # a down block: (x, skips)
        ours.setdefault(key, first.copy())

    with forward_hooks(pipe.unet, record):
        pipe.unet(latents, t, context)
    shared = sorted(set(ours) & set(outputs))
    assert len(shared) > 0.9 * len(ours), sorted(set(ours) - set(outputs))[:10]
    for key in shared:
        scale = np.abs(outputs[key]).max() + 1e-6
        assert np.abs(ours[key] - outputs[key]).max() / scale < 1e-4, key


def test_attention_weights_are_what_cross_attention_mixes(pipe, inputs):
    seen = []
    with forward_hooks(pipe.unet, lambda key, module, args, output: seen.append((key, module, args, output))):
        pipe.unet(*inputs)
    cross = [(module, args, output) for key, module, args, output in seen if key.endswith("attn2")]
    assert len(cross) == len([key for key, _ in pipe.unet.named_modules() if key.endswith("attn2")])
    module, (x, context), output = cross[0]
    weights = attention_weights(module.to_q(x), module.to_k(context), module.heads)  # (B, heads, h·w, 77)
    np.testing.assert_allclose(weights.sum(axis=-1), 1, atol=1e-5)
    # float64, from the layer's own weight matrices: softmax(q kᵀ / √d) per head
    q = x.astype(np.float64) @ module.to_q.weight.T.astype(np.float64)
    k = context.astype(np.float64) @ module.to_k.weight.T.astype(np.float64)
    batch, heads, d = len(x), module.heads, q.shape[-1] // module.heads
    q = q.reshape(batch, -1, heads, d).transpose(0, 2, 1, 3)
    k = k.reshape(batch, -1, heads, d).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    expected = np.exp(scores - scores.max(axis=-1, keepdims=True))
    expected /= expected.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    # mixing the values with these weights gives the layer's output
    v = module.to_v(context).reshape(batch, -1, heads, d).transpose(0, 2, 1, 3)
    mixed = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, x.shape[1], heads * d)
    np.testing.assert_allclose(module.to_out[0](mixed), output, atol=1e-5)
