"""compare (same start for every optimizer) and sweep (reuse of longer runs, parallel jobs) on real MNIST."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnistlab.errors import ConfigError
from mnistlab.experiments.compare import CompareSpec, compare, compare_verdict, optimizer_config, parse_optimizers
from mnistlab.experiments.sweep import SweepResult, choose, describe, sweep
from mnistlab.experiments.trial import make_spec
from mnistlab.files.checkpoints import read_safetensors
from mnistlab.files.runs import read_json, read_metrics
from mnistlab.presets import parse_opt, read_run_config, resolve
from mnistlab.training.run import init_weights, train

KEYS = ["train_loss", "train_acc", "test_loss", "test_acc"]


def mnistlab(*args):
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], capture_output=True, text=True)


def numbers(history):
    return [[row[k] for k in KEYS] for row in history]


def test_compare_starts_every_optimizer_from_the_same_weights(mnist_dir, tmp_path):
    out = tmp_path / "cmp"
    r = mnistlab("compare", "--optimizers", "adam,sgd", "--opt", "sgd:lr=0.05", "--epochs", "1", "--subset",
                 "300", "--test-subset", "500", "--device", "cpu", "--data-dir", str(mnist_dir), "--out", str(out),
                 "--quiet")
    assert r.returncode == 0, r.stderr
    assert "adam vs sgd" in r.stdout
    initial, _ = read_safetensors(out / "initial.safetensors")
    for label in ("adam", "sgd"):
        cfg = read_run_config(out / label)[0]
        assert torch.equal(initial["d1.weight"], init_weights(cfg)["d1.weight"])
    sgd = read_json(out / "sgd" / "config.json")
    assert sgd["optimizer"] == "SGD" and sgd["opt_args"] == {"lr": 0.05, "momentum": 0.9}  # default + override
    # Training Adam again from the saved initial state reproduces the comparison's numbers exactly.
    cfg = read_run_config(out / "adam")[0]
    again = train(config=cfg, init_state=initial, data_dir=mnist_dir, quiet=True, write_run=False)
    assert numbers(again.history) == numbers(read_metrics(out / "adam"))
    # ...while another start would not.
    other = {k: v + 0.01 if k == "d2.bias" else v for k, v in initial.items()}
    moved = train(config=cfg, init_state=other, data_dir=mnist_dir, quiet=True, write_run=False)
    assert numbers(moved.history) != numbers(again.history)
    table = list(csv.DictReader((out / "compare.csv").open()))
    assert float(table[0]["sgd_test_acc"]) == read_metrics(out / "sgd")[0]["test_acc"]
    assert (out / "compare.png").stat().st_size > 0
    verdict = json.loads((out / "compare.json").read_text())["verdict"]["pairs"][0]
    assert verdict["ahead"][0] in ("adam", "sgd")
    # Both runs reused (nothing trained): the same numbers. A run from before the training precision was recorded
    # is refused, as sweep refuses it.
    both = {label: out / label for label in ("adam", "sgd")}
    reused = compare(config=cfg, opts={"sgd": {"lr": 0.05}}, reuse=both, out=tmp_path / "again", quiet=True)
    assert [numbers(reused.histories[k]) for k in both] == [numbers(read_metrics(p)) for p in both.values()]
    env = json.loads((out / "sgd" / "env.json").read_text())
    del env["amp_dtype"]
    (out / "sgd" / "env.json").write_text(json.dumps(env))
    with pytest.raises(ConfigError, match="older mnistlab"):
        compare(config=cfg, opts={"sgd": {"lr": 0.05}}, reuse=both, out=tmp_path / "old", quiet=True)


def test_compare_defaults_and_errors(cli):
    base = resolve("notebook")
    assert parse_optimizers("adam,sgd,plain=sgd") == [("adam", "Adam"), ("sgd", "SGD"), ("plain", "SGD")]
    assert parse_opt(["sgd:lr=0.01", "sgd:nesterov=true"], scoped=True) == {"sgd": {"lr": 0.01, "nesterov": True}}
    with pytest.raises(ConfigError, match="at least two"):
        parse_optimizers("adam")
    with pytest.raises(ConfigError, match="LABEL:KEY=VALUE"):
        parse_opt(["lr=0.01"], scoped=True)
    with pytest.raises(ConfigError, match="not among"):
        compare(config=base, optimizers="adam,sgd", opts={"rmsprop": {"lr": 1.0}})
    with pytest.raises(ConfigError, match="unknown setting 'job'"):  # neither a SweepSpec field nor a setting
        sweep("notebook", job=2)
    # a ready config and settings: the settings override it, as train(config=..., epochs=2) does
    assert make_spec(CompareSpec, "compare", "notebook", base, {"epochs": 2}).base == resolve(epochs=2)
    # another optimizer keeps only the preset's lr, then the explicit defaults and the user's arguments
    sgd, notes = optimizer_config(resolve(opt_args={"betas": (0.8, 0.9)}), "sgd", "SGD", {"nesterov": True})
    assert sgd.opt_args == {"lr": 0.01, "momentum": 0.9, "nesterov": True} and "lr 0.01" in notes[0]
    code, _, err = cli("compare", "--optimizers", "adam,adamm")
    assert code == 2 and err.startswith("error: unknown optimizer 'adamm'") and err.count("\n") == 1
    _, usage, _ = cli("compare", "--help")  # its own options: the optimizers and their arguments by label
    assert "--opt LABEL:KEY=VALUE" in usage and "--optimizers" in usage and "--optimizer OPTIMIZER" not in usage
    code, _, err = cli("compare", "--opt", "lr=0.1")  # its --opt names the optimizer it is for
    assert code == 2 and "LABEL:KEY=VALUE" in err and err.count("\n") == 1


def test_sweep_reuse_equals_training_the_shorter_setting(mnist_dir, tmp_path):
    common = dict(subset=400, val=100, test_subset=500, device="cpu", seed=3, data_dir=mnist_dir, quiet=True)
    s = sweep("notebook", lrs=[1e-3], epochs=[1, 2], out=tmp_path / "sweep", **common)
    assert len(s.rows) == 2 and len(list((tmp_path / "sweep").glob("lr*"))) == 1  # one run served both
    assert any("serves epochs 1, 2" in n for n in s.notes)
    short = train("notebook", epochs=1, write_run=False, **{k: v for k, v in common.items()})
    row = next(r for r in s.rows if r["epochs"] == 1)
    assert row["final_test_acc"] == short.history[0]["test_acc"]
    assert row["final_train_acc"] == short.history[0]["train_acc"]
    assert row["source"].startswith("epochs 1-1 of the 2-epoch run")
    # An existing 1-epoch run of the same setting is resumed to 2 epochs: the same numbers as training 2.
    first = train("notebook", epochs=1, out=tmp_path / "one", **common)
    resumed = sweep("notebook", lrs=[1e-3], epochs=[2], out=tmp_path / "resumed", runs=[first.run_dir], **common)
    assert resumed.rows[0]["source"].startswith("resumed")
    trained = s.curves["lr=0.001 batch=32"]
    assert numbers(read_metrics(tmp_path / "resumed" / "lr0.001-b32-e2")) == numbers(trained)
    assert resumed.preset_row is None and "not in the grid" in resumed.summary[-1]
    # A run from before evaluation was always fp32 (no amp_dtype in env.json) is trained again, not trusted.
    env = json.loads((first.run_dir / "env.json").read_text())
    del env["amp_dtype"]
    (first.run_dir / "env.json").write_text(json.dumps(env))
    again = sweep("notebook", lrs=[1e-3], epochs=[2], out=tmp_path / "again", runs=[first.run_dir], **common)
    assert again.rows[0]["source"] == "trained" and any("older mnistlab" in n for n in again.notes)
    assert numbers(read_metrics(tmp_path / "again" / "lr0.001-b32-e2")) == numbers(trained)


@pytest.mark.slow  # two training processes
def test_sweep_cli_parallel_jobs(mnist_dir, tmp_path):
    out = tmp_path / "grid"
    r = mnistlab("sweep", "--lr", "1e-3,3e-3", "--epochs", "1", "--subset", "300", "--val", "100", "--test-subset",
                 "500", "--jobs", "2", "--device", "cpu", "--data-dir", str(mnist_dir), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "2 runs in 2 parallel processes, 1 CPU thread(s) each" in r.stdout
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(x["lr"]) for x in rows] == [0.001, 0.003]
    for x in rows:
        run = out / f"lr{float(x['lr']):g}-b32-e1"
        assert float(x["final_test_acc"]) == read_metrics(run)[0]["test_acc"]
        assert float(x["val_acc"]) == read_metrics(run)[0]["val_acc"] and read_metrics(run)[0]["val_n"] == 100
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["chosen_by"] == "val_acc" and saved["best"]["val_acc"] == max(float(x["val_acc"]) for x in rows)
    assert "chosen by validation accuracy (the last 100 training images" in r.stdout and (out / "sweep.png").exists()
    bad = mnistlab("sweep", "--lr", "1e-3,fast")
    assert bad.returncode == 2 and "expected a positive number" in bad.stderr
    no_val = mnistlab("sweep", "--val", "0")
    assert no_val.returncode == 2 and "sweep chooses by validation accuracy" in no_val.stderr


def _row(label, epochs, val, test, model_epoch=None):
    return {"label": label, "epochs": epochs, "model_epoch": model_epoch or epochs, "val_acc": val, "test_acc": test}


def test_sweep_chooses_by_validation_and_only_reports_test():
    preset = _row("lr=0.001 batch=32", 5, 98.10, 98.17)
    rows = [preset, _row("lr=0.002 batch=32", 8, 98.62, 98.05), _row("lr=0.0005 batch=32", 8, 98.30, 98.60),
            _row("lr=0.002 batch=32", 5, 98.62, 98.40)]
    chosen = choose(rows)
    assert chosen is rows[3]  # the highest validation accuracy (a tie broken by fewer epochs), not the best test
    result = SweepResult(Path("grid"), rows, chosen, preset, {}, val_n=10_000, test_n=10_000)
    assert result.gain == pytest.approx(0.23)
    assert result.summary == [
        "chosen by validation accuracy (the last 10,000 training images, which no run trains on): lr=0.002 "
        "batch=32, 5 epochs, validation 98.62%; test accuracy 98.40%, reported, not used to choose.",
        "Against the preset's setting (lr=0.001 batch=32, 5 epochs: validation 98.10%, test 98.17%): validation "
        "+0.52 pt, larger than the noise (±0.25 pt: the 95% interval of one accuracy over 10,000 images); test "
        "+0.23 pt, within the noise (±0.25 pt: the 95% interval of one accuracy over 10,000 images)."]
    early = _row("lr=0.002 batch=32", 8, 98.7, 98.5, model_epoch=6)
    assert choose([preset, early]) is early
    assert describe(early) == "lr=0.002 batch=32, up to 8 epochs (model of epoch 6)"
    assert "preset's own setting" in SweepResult(Path("g"), [preset], preset, preset, {}, val_n=5, test_n=5).summary[1]


def test_compare_verdict_weighs_the_final_gap_against_the_noise():
    def history(accs):
        return [{"epoch": i + 1, "test_acc": a, "test_n": 10_000} for i, a in enumerate(accs)]

    far = compare_verdict({"adam": history([97.9, 98.37]), "sgd": history([97.2, 97.80])})
    assert far["pairs"][0]["exceeds_noise"] and far["pairs"][0]["noise"] == pytest.approx(0.27, abs=0.01)
    assert far["lines"][0].endswith("97.80%, adam +0.57 pt, larger than the noise (±0.27 pt: the 95% interval of "
                                    "one accuracy over 10,000 images); adam is ahead by more than the noise.")
    near = compare_verdict({"adam": history([98.0, 98.30]), "sgd": history([98.1, 98.40])})
    assert not near["pairs"][0]["exceeds_noise"] and near["lines"][0].endswith("no difference beyond the noise.")
