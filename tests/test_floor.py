"""bench.floor: the kernels of a step, at the step's shapes and precision, timed alone (no time asserted)."""

from __future__ import annotations

import torch

from mnistlab.bench.floor import step_floor, step_kernels
from mnistlab.models import build_model
from mnistlab.presets import resolve
from mnistlab.training.optim import make_optimizer

CPU = torch.device("cpu")


def adam(params):
    return make_optimizer(resolve("notebook"), params, CPU)


def test_floor_of_the_notebook_step_in_fp32_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("notebook")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fl = step_floor(model, adam, torch.rand(32, 1, 28, 28), None, reps=3, warmup=1)
    assert list(fl["kernels"]) == ["conv1 forward", "conv1 backward", "d1 forward", "d1 grad-weight",
                                   "d1 grad-input", "d2 forward", "d2 grad-weight", "d2 grad-input", "optimizer"]
    assert fl["shapes"]["d1 grad-weight"] == "128x32 @ 32x21632"
    assert fl["shapes"]["d1 grad-input"] == "32x128 @ 128x21632"
    assert fl["shapes"]["conv1 backward"] == "32x1x28x28 -> 32x32x26x26"
    assert fl["shapes"]["optimizer"] == "Adam fused, 2,770,634 parameters"
    assert all(ms > 0 for ms in fl["kernels"].values()) and fl["floor_ms"] == sum(fl["kernels"].values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_kernels_run_in_the_steps_precision_and_compute_what_autograd_needs():
    torch.manual_seed(0)
    model = build_model("fast", c1=4, c2=8, hidden=16, flatten="hwc")
    x = torch.rand(8, 1, 28, 28)
    for amp, dtype in ((None, torch.float32), (torch.bfloat16, torch.bfloat16)):
        k = step_kernels(model, adam, x, amp)
        assert k["conv1 forward"].run().dtype == dtype and k["fc1 forward"].run().dtype == dtype
        assert k["fc1 grad-weight"].run().shape == model.fc1.weight.shape
        assert k["fc1 grad-input"].run().shape == (8, 8 * 5 * 5)
        # The batch needs no gradient: conv1's backward gives its weight and bias gradients only; conv2's also
        # the gradient of its input.
        assert len(k["conv1 backward"].run()) == 2 and len(k["conv2 backward"].run()) == 3
        assert "conv1 grad-input" not in k and k["conv2 backward"].run()[0].shape == (8, 4, 12, 12)


def test_under_autocast_the_floor_counts_the_master_weight_conversions():
    torch.manual_seed(0)
    model = build_model("notebook")
    fp32 = step_kernels(model, adam, torch.rand(4, 1, 28, 28), None)
    bf16 = step_kernels(model, adam, torch.rand(4, 1, 28, 28), torch.bfloat16)
    assert "weights to bf16" not in fp32 and "gradients to fp32" not in fp32
    assert list(bf16)[-3:] == ["weights to bf16", "gradients to fp32", "optimizer"]
    # Every weight and bias of the products: the whole notebook network.
    assert bf16["weights to bf16"].shapes == bf16["gradients to fp32"].shapes == "2,770,634 parameters"
    casts = bf16["weights to bf16"].run()
    assert [c.dtype for c in casts] == [torch.bfloat16] * 6
    assert all(torch.equal(c, p.detach().to(torch.bfloat16)) for c, p in zip(casts, model.parameters(), strict=True))
    assert all(g.dtype == torch.float32 for g in bf16["gradients to fp32"].run())
