"""The roofline table's counts (minisd/roofline.py) against PyTorch's own FLOP counter and against
the bytes a layer's arrays hold."""

import numpy as np
import pytest

from minisd.backend import Backend
from minisd.roofline import WallClock, count_flops, count_unet_step, measure_unet_step, table
from minisd.weights import load_component

pytestmark = pytest.mark.reference


def test_flops_equal_torch_flop_counter(tiny):
    """The matrix FLOPs minisd counts for a UNet step (convolutions, linear layers, attention),
    in the roofline table and in the benchmark's GFLOP/s, equal what torch.utils.flop_counter
    counts for diffusers' UNet on the same input. diffusers
    runs its plain attention processor here (baddbmm, softmax, bmm): the counter has no formula
    for the CPU's fused scaled_dot_product_attention."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    folder, (_, unet, _) = tiny
    rng = np.random.default_rng(12)
    sample = rng.standard_normal((2, 4, 16, 24), dtype=np.float32)
    context = rng.standard_normal((2, 77, 32), dtype=np.float32)
    ours = load_component(folder, "unet", Backend())
    layers = count_unet_step(ours, sample, context)
    with count_flops() as benchmark:
        ours(sample, 981, context)
    fused = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(torch.from_numpy(sample), 981, torch.from_numpy(context))
    finally:
        unet.set_attn_processor(fused)  # the session's fixture, as it was
    counted = counter.get_flop_counts()["Global"]
    assert sum(work.flops for work in layers.values()) == benchmark[0] == counter.get_total_flops()
    attention = sum(work.flops for work in layers.values() if work.kind == "attention")
    assert attention == counted[torch.ops.aten.baddbmm] + counted[torch.ops.aten.bmm] > 0
    assert {work.kind for work in layers.values()} == {"conv", "linear", "attention", "norm", "geglu"}


def test_bytes_and_floors(tiny):
    """A 1×1 convolution's bytes are its input, kernel and output in float16; the table puts the
    largest floor first and bounds each layer by the slower of compute and memory."""
    folder, _ = tiny
    rng = np.random.default_rng(13)
    sample = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    context = rng.standard_normal((1, 77, 32), dtype=np.float32)
    layers = count_unet_step(load_component(folder, "unet", Backend()), sample, context)
    conv_out = layers["conv 3x3 32->4 on 8x8"]  # the last layer: (1, 32, 8, 8) -> (1, 4, 8, 8)
    assert conv_out.calls == 1
    assert conv_out.bytes == 2 * (32 * 8 * 8 + 4 * 32 * 9 + 4 * 8 * 8)
    assert conv_out.flops == 2 * (4 * 8 * 8) * (32 * 9)
    assert conv_out.floor(1e12, 1e9) == (conv_out.bytes / 1e9, "memory")
    assert conv_out.floor(1e6, 1e12) == (conv_out.flops / 1e6, "compute")
    lines = table(layers, 1e12, 1e9).splitlines()
    floors = [float(line.split()[-2]) for line in lines[1 : len(layers) + 1]]
    assert floors == sorted(floors, reverse=True)


class CountingClock:
    """A clock whose every mark is one second after the last: the times measure_unet_step must
    report follow from counting calls."""

    def __init__(self):
        self.now = 0

    def mark(self):
        self.now += 1
        return self.now

    def seconds(self, start, end):
        return end - start

    def wait(self, mark):
        pass


def test_measured_own_times(tiny):
    """With a clock that ticks once per mark, a layer that calls no counted layer takes one tick
    per call; a GEGLU calls its projection (3 ticks less 1) and an attention module its four
    linear layers (9 ticks less 4); the step takes two ticks per counted call, plus one."""
    folder, _ = tiny
    rng = np.random.default_rng(14)
    sample = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    context = rng.standard_normal((1, 77, 32), dtype=np.float32)
    unet = load_component(folder, "unet", Backend())
    layers = count_unet_step(unet, sample, context)
    own, step = measure_unet_step(unet, sample, context, CountingClock())
    assert own.keys() == layers.keys()
    ticks = {"conv": 1, "linear": 1, "norm": 1, "geglu": 2, "attention": 5}
    assert own == {label: ticks[work.kind] * work.calls for label, work in layers.items()}
    assert step == 2 * sum(work.calls for work in layers.values()) + 1
    real, real_step = measure_unet_step(unet, sample, context, WallClock())
    assert all(seconds > 0 for seconds in real.values()) and sum(real.values()) < real_step
    lines = table(layers, 1e12, 1e9, (real, real_step)).splitlines()
    assert lines[-1].startswith(f"measured: the whole step {real_step * 1e3:.2f} ms")
