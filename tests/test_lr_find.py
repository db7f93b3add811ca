"""The learning-rate range test on real MNIST: repeatable for a seed, stops on divergence, its files, its
suggestion rule, and `train --lr find` training with the suggestion."""

from __future__ import annotations

import json
import math

import pytest

from mnistlab.errors import ConfigError
from mnistlab.experiments.lr_find import lr_find, suggest
from mnistlab.files.runs import read_json

SMALL = dict(subset=2000, steps=40, start_lr=1e-5, end_lr=1.0, device="cpu", write=False)


def test_the_same_seed_gives_the_same_curve(mnist_dir):
    a = lr_find("notebook", seed=0, data_dir=mnist_dir, **SMALL)
    b = lr_find("notebook", seed=0, data_dir=mnist_dir, **SMALL)
    assert a.losses == b.losses and a.smoothed == b.smoothed and a.suggestion == b.suggestion
    assert len(a.lrs) == 40 and a.lrs[0] == pytest.approx(1e-5) and a.lrs[-1] == pytest.approx(1.0)
    assert all(y / x == pytest.approx(10 ** (5 / 39)) for x, y in zip(a.lrs, a.lrs[1:], strict=False))  # 5 decades
    other = lr_find("notebook", seed=1, data_dir=mnist_dir, **SMALL)
    assert other.losses != a.losses  # another seed: other initial weights and batches
    assert min(a.smoothed) < a.smoothed[0] - 0.3  # the loss did fall somewhere along the ramp
    assert a.rule == "steepest" and a.suggestion == float(f"{a.steepest_lr:.2g}")  # a constant rate
    assert a.steepest_lr < a.min_loss_lr


def test_divergence_ends_the_ramp(mnist_dir):
    r = lr_find("notebook", optimizer="sgd", data_dir=mnist_dir, **{**SMALL, "end_lr": 1e4, "steps": 60})
    assert r.settings["steps_run"] < 60 and ("exceeded 4x its minimum" in r.stopped or "became" in r.stopped)
    assert all(math.isfinite(v) for v in r.losses) and len(r.lrs) == len(r.losses) == len(r.smoothed)


def test_the_suggestion_rule():
    lrs = [10 ** (-6 + i / 10) for i in range(61)]  # 1e-6 .. 1
    curve = [2.3 - 2.0 / (1 + math.exp(-4 * (math.log10(lr) + 3.5))) + 0.5 * max(0.0, math.log10(lr) + 2) ** 2
             for lr in lrs]  # falls most steeply at 10^-3.5, lowest near 1e-2, rises after
    suggestion, rule, low, steep = suggest(lrs, curve)  # a constant rate: the steepest fall
    assert low == pytest.approx(1e-2) and 10 ** -3.7 < steep < 10 ** -3.3
    assert rule == "steepest" and suggestion == float(f"{steep:.2g}")
    for schedule in ("onecycle", "cosine"):  # a peak rate: the minimum / 10
        assert suggest(lrs, curve, schedule) == (1e-3, "minimum/10", low, steep)
    assert suggest(lrs, curve, "step")[1] == "steepest"
    with pytest.raises(ConfigError, match="0 < start_lr < end_lr"):
        lr_find("notebook", start_lr=1.0, end_lr=0.1, write=False)


def test_cli_lr_find_and_train_lr_find(cli, mnist_dir, tmp_path):
    data = ["--data-dir", str(mnist_dir), "--device", "cpu"]
    code, out, err = cli("lr-find", "--preset", "notebook", "--subset", "2000", "--steps", "40", "--start-lr", "1e-5",
                         "--end-lr", "1", *data, "--out", str(tmp_path / "find"))
    assert code == 0, err
    found = json.loads((tmp_path / "find/lr_find.json").read_text())
    assert f"suggested learning rate {found['suggestion']:.3g}: the steepest fall of the smoothed loss" in out
    assert found["rule"] == "steepest" and found["suggestion"] == float(f"{found['steepest_lr']:.2g}")
    assert found["config"]["subset"] == 2000 and found["steps_run"] == 40 and len(found["losses"]) == 40
    assert (tmp_path / "find/lr_find.png").stat().st_size > 0

    run = tmp_path / "run"
    code, out, err = cli("train", "--lr", "find", "--epochs", "1", "--subset", "1000", "--test-subset", "500", *data,
                         "--quiet", "--out", str(run))
    assert code == 0, err
    found = read_json(run / "lr_find.json")
    cfg = read_json(run / "config.json")
    assert cfg["opt_args"]["lr"] == found["suggestion"] and found["config"]["subset"] == 1000
    assert "from lr-find (lr_find.json)" in cfg["description"]
    assert (run / "model.safetensors").exists() and (run / "lr_find.png").exists()
    code, _, err = cli("train", "--lr", "fast")
    assert code == 2 and "expected a positive number, got 'fast'" in err
