"""Kill and resume: SIGKILL mid-epoch, `train --resume`, and the result equals an uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.files.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow

TIMING = {"seconds", "eval_seconds", "images_per_s"}  # wall-clock columns, the only ones allowed to differ
TRAIN = [sys.executable, "-m", "mnistlab", "train", "--preset", "notebook", "--epochs", "3", "--subset", "2000",
         "--seed", "0", "--device", "cpu", "--amp", "off", "--quiet"]  # fp32 on every machine


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigkill_in_epoch_2_then_resume_equals_an_uninterrupted_run(mnist_dir, tmp_path):
    data = ["--data-dir", str(mnist_dir)]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen([*TRAIN, *data, "--out", str(killed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (killed / "checkpoint.pt").exists(), proc)  # epoch 1 done, epoch 2 starting
    first = rows(killed)[0]  # written just before the checkpoint
    time.sleep(0.3 * first["seconds"])  # well inside epoch 2's training, however fast this machine is
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert len(rows(killed)) == 1 and load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1  # died in epoch 2
    assert not (killed / "model.safetensors").exists()

    resumed = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume", str(killed), *data],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} after epoch 1/3" in resumed.stdout
    straight = subprocess.run([*TRAIN, *data, "--out", str(whole)], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    a, b = load_file(str(killed / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit for bit, tensor by tensor
    ra, rb = rows(killed), rows(whole)
    assert [r["epoch"] for r in ra] == [1, 2, 3]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in ra] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in rb]
    ca, cb = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert ca["epoch"] == cb["epoch"] == 3
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


WRITER = """
import sys, torch
from mnistlab.files.checkpoints import save_checkpoint
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    i += 1
    save_checkpoint(sys.argv[1], {"i": i, "w": torch.full((2_000_000,), float(i))})
"""


def test_sigkill_during_checkpoint_writes_never_leaves_an_unreadable_checkpoint(tmp_path):
    """Kill a process that does nothing but rewrite a 8 MB checkpoint, at several moments; every time the
    file that is there loads completely and is consistent (one whole write, never a mix or a fragment)."""
    path = tmp_path / "checkpoint.pt"
    seen = []
    for n, delay in enumerate([0.05, 0.13, 0.21, 0.34, 0.55, 0.8]):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(1000 * n)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if path.exists():
            ckpt = load_checkpoint(path)
            assert torch.equal(ckpt["w"], torch.full((2_000_000,), float(ckpt["i"])))
            seen.append(ckpt["i"])
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
        assert all(name.startswith(".checkpoint.pt.") and name.endswith(".tmp") for name in leftovers)
    assert len(set(seen)) >= 3  # several different complete writes were found intact
    assert leftovers  # and at least one kill landed mid-write (its temporary file is all that it left)
