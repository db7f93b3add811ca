"""Training on real MNIST: a smoke run, determinism, run directories and the CLI's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from mnistlab.files.checkpoints import load_checkpoint
from mnistlab.files.runs import environment
from mnistlab.presets import resolve
from mnistlab.training import device as engine  # devices and precision
from mnistlab.training.process import KEEP_FREED_MEMORY, allocator_environment
from mnistlab.training.run import train


def mnistlab(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_notebook_smoke_run_on_real_mnist(mnist_dir, tmp_path):
    out = tmp_path / "run"
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    r = mnistlab("train", "--preset", "notebook", "--epochs", "1", "--subset", "10000", "--amp", "off",
                 "--data-dir", str(mnist_dir), "--out", str(out), env=plain)  # fp32: the same accuracy everywhere
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stdout
    assert r.stdout.count("precision: training in fp32, evaluation in fp32 (--amp off on ") == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["test_acc"] > 92.0  # 1 epoch on 10k images reaches about 93.5%
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_s"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "notebook" and cfg["batch_size"] == 32 and cfg["subset"] == 10000
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["world_size"] == 1
    assert env["amp_dtype"] is None and env["cpu_native_bf16"] == engine.cpu_supports_bf16()
    if allocator_environment(plain) is not None:  # glibc: the command restarted itself with the setting
        assert env["glibc_tunables"] == KEEP_FREED_MEMORY
    assert env["flush_denormal"] == "every thread"  # set before torch started its thread pool
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["model"]) == "notebook" and json.loads(meta["preset"]) == "notebook"
    ckpt = load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"model", "optimizer", "rng", "history"}


def test_same_seed_same_metrics_on_cpu(mnist_dir):
    runs = [train("notebook", epochs=2, subset=2000, test_subset=1000, seed=5, device="cpu", data_dir=mnist_dir,
                  quiet=True, write_run=False) for _ in range(2)]
    keys = ["train_loss", "train_acc", "test_loss", "test_acc"]
    assert [[h[k] for k in keys] for h in runs[0].history] == [[h[k] for k in keys] for h in runs[1].history]
    assert [h["test_n"] for h in runs[0].history] == [1000, 1000]  # --test-subset: the first 1,000 test images
    other = train("notebook", epochs=1, subset=2000, test_subset=1000, seed=6, device="cpu", data_dir=mnist_dir,
                  quiet=True, write_run=False)
    assert other.history[0]["train_loss"] != runs[0].history[0]["train_loss"]


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, native):
    """`--amp auto` trains in bf16 on a CPU that computes it natively, else in fp32; the run says which."""
    monkeypatch.setattr(engine, "cpu_supports_bf16", lambda: native)
    cpu = torch.device("cpu")
    auto = engine.amp_dtype("auto", cpu)
    assert auto is (torch.bfloat16 if native else None)
    assert engine.amp_dtype("bf16", cpu) is torch.bfloat16 and engine.amp_dtype("off", cpu) is None
    with_or_without = "with" if native else "without"
    assert engine.describe_precision("auto", auto, cpu) == (
        f"precision: training in {'bf16 autocast' if native else 'fp32'}, evaluation in fp32 "
        f"(--amp auto on cpu {with_or_without} native bf16)")
    env = environment(cpu, amp_dtype=engine.amp_name(auto), cpu_native_bf16=engine.cpu_supports_bf16())
    assert env["amp_dtype"] == ("bf16" if native else None) and env["cpu_native_bf16"] is native


def test_overrides_reach_the_optimizer(mnist_dir):
    r = train("notebook", epochs=1, subset=500, optimizer="sgd", lr=0.05, opt_args={"momentum": 0.9},
              data_dir=mnist_dir, quiet=True, write_run=False)
    assert r.config.optimizer == "SGD" and r.config.opt_args == {"lr": 0.05, "momentum": 0.9}


def test_double_softmax_squashes_the_loss(mnist_dir):
    r = train("notebook", epochs=1, subset=3000, double_softmax=True, amp="off", data_dir=mnist_dir, quiet=True,
              write_run=False)
    # softmax outputs in [0,1] fed to CrossEntropyLoss: the loss cannot go below log(1 + 9/e) ~ 1.46
    assert r.history[0]["train_loss"] > 1.46 and r.history[0]["test_acc"] > 50


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--optimizer", "adamm"], "unknown optimizer 'adamm'"),
        (["train", "--lr", "fast"], "expected a positive number"),
        (["train", "--opt", "momentum"], "--opt expects KEY=VALUE"),
        (["train", "--ema", "1.5"], "ema must be a decay in [0, 1), got 1.5"),
        (["train", "--test-subset", "0"], "expected a positive integer"),
        (["train", "--device", "cuda:0"], "no CUDA GPU"),
        (["train", "--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs a CUDA device; this run is on cpu"),
        (["train", "--resume", "/nonexistent/run"], "not found"),
        (["inspect", "--preset", "nope"], "unknown preset"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args, message, cli):
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = cli(*args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_cli_error_in_a_real_process_is_one_line():
    r = mnistlab("train", "--preset", "nope")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: unknown preset 'nope'; choose from best, fast, notebook, pytorch-example"


def test_resume_cannot_stretch_a_one_cycle_schedule(tmp_path):
    from mnistlab.files.runs import write_json

    write_json(tmp_path / "config.json", resolve("fast").to_dict())
    r = mnistlab("train", "--resume", str(tmp_path), "--epochs", "5")
    assert r.returncode == 2 and "onecycle schedule spans exactly 1 epochs" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_applies_only_the_overrides_a_resumed_run_may_change(mnist_dir, tmp_path, cli):
    """--resume keeps the run's settings: --epochs and --device apply, any other change is refused in one line
    naming it (before: silently ignored), and an override equal to the recorded value is no change."""
    out = tmp_path / "run"
    train("notebook", epochs=1, subset=500, test_subset=200, batch_size=100, amp="off", out=out, data_dir=mnist_dir,
          quiet=True)
    for flags, named in ((["--lr", "0.1"], "opt_args {'lr': 0.001} -> {'lr': 0.1}"), (["--batch-size", "50"],
                         "batch_size 100 -> 50"), (["--amp", "bf16"], "amp 'off' -> 'bf16'")):
        code, _, err = cli("train", "--resume", str(out), *flags, "--data-dir", str(mnist_dir))
        assert code == 2 and named in err and "only epochs and device may change" in err, err
        assert len(err.strip().splitlines()) == 1
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # refused before training: still 1 epoch
    r = train(resume=out, epochs=2, device="cpu", batch_size=100, lr=1e-3, data_dir=mnist_dir, quiet=True)
    assert [row["epoch"] for row in r.history] == [1, 2] and r.config.device == "cpu"
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"  # the run records where it went on


def test_train_applies_overrides_to_a_ready_config(mnist_dir):
    base = resolve("notebook", subset=300, test_subset=100, amp="off")
    r = train(config=base, epochs=1, batch_size=100, data_dir=mnist_dir, quiet=True, write_run=False)
    assert r.config == resolve(base=base, epochs=1, batch_size=100) and len(r.history) == 1


def test_a_run_resumed_elsewhere_keeps_the_environment_it_started_in(mnist_dir, tmp_path):
    """env.json is the environment training runs on now; a resumed run that started on another machine or
    precision keeps that one under `earlier`, with the epochs it trained. Resumed where it started: no
    `earlier`."""
    kw = dict(subset=1000, test_subset=500, batch_size=100, device="cpu", amp="off", data_dir=mnist_dir, quiet=True)
    out = tmp_path / "run"
    train("notebook", epochs=1, out=out, **kw)
    first = json.loads((out / "env.json").read_text())
    train(resume=out, epochs=2, data_dir=mnist_dir, quiet=True)
    assert json.loads((out / "env.json").read_text()) == first  # same machine, same precision
    elsewhere = {**first, "cpu": "another CPU", "amp_dtype": "bf16", "cpu_native_bf16": True}
    (out / "env.json").write_text(json.dumps(elsewhere))
    train(resume=out, epochs=3, data_dir=mnist_dir, quiet=True)
    env = json.loads((out / "env.json").read_text())
    assert env == {**first, "earlier": [{**elsewhere, "until_epoch": 2}]}
    train(resume=out, epochs=4, data_dir=mnist_dir, quiet=True)  # unchanged again: the record stays
    assert json.loads((out / "env.json").read_text()) == env


# ---------------------------------------------------------------- where a run may be written
def one_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err and "Errno" not in err and "Error:" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_out_on_an_existing_run_a_file_or_a_path_under_a_file_is_refused(trained_run, tmp_path, cli):
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir() if p.name != ".lock"}
    acc = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[0])["test_acc"]
    err = one_line(*cli("train", "--out", str(trained_run))[::2])
    assert err == (f"error: {trained_run} already holds a finished run (preset notebook, 1/1 epochs, test accuracy "
                   f"{acc:.2f}%): continue it with --resume {trained_run}, choose another --out, or pass --overwrite "
                   "to replace it")
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir() if p.name != ".lock"} == before
    (tmp_path / "README.md").write_text("not a run")
    err = one_line(*cli("train", "--out", str(tmp_path / "README.md"))[::2])
    assert err == f"error: {tmp_path}/README.md is a file, not a directory; choose another --out"
    err = one_line(*cli("train", "--out", str(tmp_path / "README.md" / "run"))[::2])
    assert err == (f"error: {tmp_path}/README.md/run: {tmp_path}/README.md is a file, so no directory can be made "
                   "under it")
    err = one_line(*cli("train", "--resume", str(trained_run), "--overwrite")[::2])
    assert err == "error: --overwrite replaces a run directory with a new run; it cannot be combined with --resume"


def test_a_disk_too_small_for_the_run_is_refused_before_training(small_disk, cli):
    """The notebook network's run needs about 78 MB at its largest (two 33 MB checkpoints while one replaces the
    other, the 11 MB model): a 6 MB tmpfs is refused at once, with both numbers, and nothing is left on it."""
    disk = small_disk("6m")
    code, out, err = cli("train", "--out", str(disk / "run"), "--device", "cpu")
    assert one_line(code, err) == (f"error: not enough space in {disk}/run for this notebook run (checkpoints, "
                                   "model): it needs about 78.6 MB and 6.3 MB is free; free some space or choose "
                                   "another --out")
    assert out == "" and list(disk.iterdir()) == []  # refused before the data was read or anything written


def test_a_read_only_place_is_one_sentence(read_only, trained_run, tmp_path, cli):
    (tmp_path / "empty").mkdir()
    ro = read_only(tmp_path / "empty")
    err = one_line(*cli("train", "--out", str(ro / "run"))[::2])
    assert err == f"error: cannot make the directory {ro}/run: the file system is read-only"
    ro_run = read_only(trained_run)  # resuming needs the run directory writable: its lock, then its files
    err = one_line(*cli("train", "--resume", str(ro_run), "--epochs", "2")[::2])
    assert err == f"error: cannot lock {ro_run} for writing: the file system is read-only"
    err = one_line(*cli("export", "--model", str(trained_run), "--out", str(ro / "m.safetensors"))[::2])
    assert err == f"error: cannot write m.safetensors in {ro}: the file system is read-only"
