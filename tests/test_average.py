"""Weight averaging (`--ema`): the moving average of the weights is what is evaluated, saved and resumed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from mnistlab.files.checkpoints import load_checkpoint, read_safetensors
from mnistlab.training.engine import evaluate
from mnistlab.training.run import WeightAverage, load_data, train


def test_weight_average_copies_first_then_follows_an_ema():
    net = nn.Linear(1, 1, bias=False)
    avg = WeightAverage(net, decay=0.75, train=None)
    values = [1.0, 2.0, 4.0]
    for v in values:
        with torch.no_grad():
            net.weight.fill_(v)
        avg.on_step(torch.zeros(()))
    expected = values[0]
    for v in values[1:]:
        expected = 0.75 * expected + 0.25 * v
    assert avg.average.module.weight.item() == pytest.approx(expected)  # 1 -> 1.25 -> 1.9375
    assert net.weight.item() == 4.0  # the model itself is untouched
    assert avg.for_eval() is avg.average  # no batch norm: nothing to recompute


def test_batch_norm_statistics_are_those_of_the_averaged_weights(mnist_dir):
    """Trained under bf16 autocast (emulated where the CPU lacks it), evaluated in fp32; narrow layers keep
    the emulated bf16 cheap."""
    r = train("best", epochs=1, subset=512, ema=0.9, device="cpu", amp="bf16", data_dir=mnist_dir, quiet=True,
              write_run=False, model_args={"widths": (8, 8, 16), "extra": 0})
    data = load_data(r.config, torch.device("cpu"), mnist_dir)
    fresh = copy.deepcopy(r.model)
    update_bn((x for x, _ in data.train.epoch(0)), fresh)  # recomputed from scratch for these weights
    bn = [k for k in r.model.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert bn
    for k in bn:
        torch.testing.assert_close(r.model.state_dict()[k], fresh.state_dict()[k])
    assert evaluate(r.model, data.evals["test"])["acc"] == r.history[-1]["test_acc"]  # the average, in fp32


def test_ema_changes_what_is_evaluated_not_how_it_trains(mnist_dir, tmp_path):
    common = dict(epochs=2, subset=2048, test_subset=1000, seed=3, device="cpu", amp="off", data_dir=mnist_dir,
                  quiet=True)
    plain = train("notebook", write_run=False, **common)
    averaged = train("notebook", ema=0.9, out=tmp_path, **common)
    # the same trajectory: averaging never feeds back into training
    assert [r["train_loss"] for r in averaged.history] == [r["train_loss"] for r in plain.history]
    raw = load_checkpoint(averaged.run_dir / "checkpoint.pt")["model"]
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(raw[k], v, rtol=0, atol=0)
    # ...but the evaluated, returned and saved weights are the average, which differs from the raw ones
    saved, _ = read_safetensors(averaged.run_dir / "model.safetensors")
    assert not torch.equal(saved["d1.weight"], raw["d1.weight"])
    for k, v in averaged.model.state_dict().items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0)
    data = load_data(averaged.config, torch.device("cpu"), mnist_dir)
    assert evaluate(averaged.model, data.evals["test"])["acc"] == averaged.history[-1]["test_acc"]


def test_ema_survives_resume(mnist_dir, tmp_path):
    common = dict(subset=1024, test_subset=500, seed=1, ema=0.8, device="cpu", amp="off", data_dir=mnist_dir,
                  quiet=True)
    whole = train("notebook", epochs=2, out=tmp_path / "whole", **common)
    first = train("notebook", epochs=1, out=tmp_path / "parts", **common)
    resumed = train("notebook", epochs=2, resume=first.run_dir, data_dir=mnist_dir, quiet=True)
    assert resumed.history[-1]["test_acc"] == whole.history[-1]["test_acc"]
    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)
