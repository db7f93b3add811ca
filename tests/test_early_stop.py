"""Early stopping: the callback's bookkeeping, and on real MNIST the saved model is the best epoch's (what
`evaluate` measures), the checkpoint the last, and a resumed run neither forgets nor trains past the stop."""

from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from mnistlab.files.checkpoints import load_checkpoint
from mnistlab.files.runs import read_metrics
from mnistlab.inference.predict import load_model
from mnistlab.presets import read_run_config
from mnistlab.training.callbacks import EarlyStopping
from mnistlab.training.engine import evaluate
from mnistlab.training.run import load_data

TIMING = {"seconds", "eval_seconds", "images_per_s"}


def test_the_callback_keeps_the_best_weights_and_stops_after_patience():
    net = nn.Linear(2, 1)
    stop = EarlyStopping(2, net)
    vals = [90.0, 92.0, 91.0, 92.0, 95.0]  # the tie at epoch 4 is no improvement: stop after epoch 4
    for epoch, val in enumerate(vals, 1):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        stop.on_epoch_end({"epoch": epoch, "val_acc": val})
        if stop.stop_training:
            break
    assert (stop.best_epoch, stop.best_acc, stop.stopped_epoch) == (2, 92.0, 4)
    assert float(net.weight.detach()[0, 0]) == 4.0  # training left the last weights in place
    assert stop.restore() == 2 and float(net.weight.detach()[0, 0]) == 2.0
    again = EarlyStopping(2, nn.Linear(2, 1))
    again.load_state_dict(stop.state_dict())  # what a resumed run gets from the checkpoint
    assert again.stop_training and again.stopped_epoch == 4 and again.restore() == 2
    assert float(again.evaluated.weight.detach()[0, 0]) == 2.0


def test_never_improving_after_epoch_one():
    stop = EarlyStopping(1, nn.Linear(2, 1))
    for epoch in (1, 2):
        stop.on_epoch_end({"epoch": epoch, "val_acc": 50.0})
    assert stop.stop_training and stop.best_epoch == 1 and stop.stopped_epoch == 2


COMMON = ["--subset", "1500", "--val", "500", "--test-subset", "2000", "--seed", "0", "--device", "cpu", "--quiet"]


def test_the_run_keeps_the_best_epoch_and_resumes_without_training_past_the_stop(cli, mnist_dir, tmp_path):
    data = ["--data-dir", str(mnist_dir)]
    whole = tmp_path / "whole"
    code, out, err = cli("train", "--epochs", "6", "--early-stop", "1", *COMMON, *data, "--out", str(whole))
    assert code == 0, err
    rows = read_metrics(whole)
    vals = [r["val_acc"] for r in rows]
    best = vals.index(max(vals)) + 1
    assert len(rows) < 6 and len(rows) == best + 1  # stopped one epoch after the best, before the 6th
    with safe_open(str(whole / "model.safetensors"), framework="pt") as f:
        meta = {k: f.metadata()[k] for k in ("best_epoch", "stopped_epoch", "epoch", "test_acc")}
    assert meta == {"best_epoch": str(best), "stopped_epoch": str(len(rows)), "epoch": str(best),
                    "test_acc": str(rows[best - 1]["test_acc"])}
    # The saved weights are the best epoch's: evaluating the file gives that epoch's test accuracy, not the last.
    assert rows[best - 1]["test_acc"] != rows[-1]["test_acc"]
    test = load_data(read_run_config(whole)[0], torch.device("cpu"), mnist_dir).evals["test"]
    assert evaluate(load_model(whole / "model.safetensors").model, test)["acc"] == rows[best - 1]["test_acc"]
    ckpt = load_checkpoint(whole / "checkpoint.pt")  # the last state, for --resume
    saved = load_file(str(whole / "model.safetensors"))
    assert ckpt["epoch"] == len(rows) and not torch.equal(ckpt["model"]["d2.weight"], saved["d2.weight"])
    assert torch.equal(ckpt["early_stop"]["best_state"]["d2.weight"], saved["d2.weight"])

    # Resuming the stopped run, even with more epochs, trains nothing.
    code, out, err = cli("train", "--resume", str(whole), "--epochs", "8", *data)
    assert code == 0, err
    assert f"stopped early after epoch {len(rows)}; nothing to do" in out
    assert len(read_metrics(whole)) == len(rows)
    assert torch.equal(load_file(str(whole / "model.safetensors"))["d2.weight"], saved["d2.weight"])

    # A run interrupted before the stop, resumed, ends exactly as the uninterrupted one: same epochs, same model.
    part = tmp_path / "part"
    code, _, err = cli("train", "--epochs", str(best), "--early-stop", "1", *COMMON, *data, "--out", str(part))
    assert code == 0, err
    code, _, err = cli("train", "--resume", str(part), "--epochs", "6", *data)
    assert code == 0, err
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(part)] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    resumed = load_file(str(part / "model.safetensors"))
    assert all(torch.equal(resumed[k], saved[k]) for k in saved)


def test_early_stop_needs_a_validation_split(cli):
    code, _, err = cli("train", "--early-stop", "2", "--subset", "100")
    assert code == 2 and err.strip() == ("error: --early-stop watches validation accuracy: hold out a validation "
                                         "split with --val N")
    code, _, err = cli("train", "--val", "100", "--subset", "100")
    assert code == 2 and "--val 100 leaves none of the 100 --subset images to train on" in err
