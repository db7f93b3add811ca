"""Kill and resume: SIGKILL, SIGTERM or SIGINT mid-epoch, or a disk filling up, then `train --resume`, and the
result equals an uninterrupted run exactly; --overwrite, and one writer per run directory, with real processes."""

from __future__ import annotations

import errno
import json
import os
import shutil
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
    wait_for(lambda: (killed / "metrics.jsonl").exists(), proc)  # epoch 1 done, epoch 2 starting
    first = rows(killed)[0]  # written just after the checkpoint
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


# ---------------------------------------------------------------- signals, full disks, one writer
def without_timing(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(run)]


def same_model(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def whole(mnist_dir, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one is compared with (TRAIN: 3 epochs, seed 0, fp32 on the CPU)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    r = subprocess.run([*TRAIN, "--data-dir", str(mnist_dir), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def in_epoch_2(run: Path, proc: subprocess.Popen) -> None:
    """Return once `proc` is well inside epoch 2's training (epoch 1's row is written after its checkpoint)."""
    wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
    time.sleep(0.3 * rows(run)[0]["seconds"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_epoch_2_saves_epoch_1_and_resume_equals_an_uninterrupted_run(sig, whole, mnist_dir, tmp_path):
    data = ["--data-dir", str(mnist_dir)]
    run = tmp_path / "run"
    proc = subprocess.Popen([*TRAIN, *data, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    in_epoch_2(run, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig  # 143 for SIGTERM, 130 for SIGINT
    assert err.strip() == (f"interrupted by {sig.name} in epoch 2: {run} holds epoch 1 in checkpoint.pt (epoch 2 "
                           f"is not: it was partial); continue with: mnistlab train --resume {run}")
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and len(rows(run)) == 1
    assert not (run / "model.safetensors").exists() and not list(run.glob(".*.tmp"))

    resumed = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume", str(run), *data],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(run) == without_timing(whole) and same_model(run, whole)


def fill(disk: Path) -> Path:
    """Write a file until the file system holding `disk` is full (a real ENOSPC ends it)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_a_disk_filling_up_during_a_checkpoint_is_one_line_and_resume_goes_on(small_disk, whole, mnist_dir):
    """The disk fills between epoch 1 and epoch 2's checkpoint: exit 2 with one sentence (what, where, how much),
    nothing partial left, epoch 1 intact in checkpoint.pt and metrics; once space is freed, --resume finishes the
    run with the uninterrupted run's metrics."""
    data = ["--data-dir", str(mnist_dir)]
    disk = small_disk("120m")  # room for the run (about 78 MB at most) when it starts
    run = disk / "run"
    proc = subprocess.Popen([*TRAIN, *data, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
    filler = fill(disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    line = err.strip()
    assert line.startswith(f"error: cannot write checkpoint.pt in {run}: no space left on the device (it needs 33.")
    assert line.endswith(" free)") and "\n" not in line and "Errno" not in line and "enforce" not in line
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and len(rows(run)) == 1
    assert not list(run.glob(".*.tmp")) and not (run / "model.safetensors").exists()

    filler.unlink()
    resumed = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume", str(run), *data],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(run) == without_timing(whole) and same_model(run, whole)


def test_overwrite_interrupted_before_its_first_checkpoint_keeps_the_old_run(whole, mnist_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run, ignore=shutil.ignore_patterns(".lock"))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = subprocess.Popen([*TRAIN, "--data-dir", str(mnist_dir), "--out", str(run), "--overwrite", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any((p / "config.json").exists() for p in tmp_path.glob(".run.new-*")), proc)  # training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip() == (f"interrupted by SIGTERM in epoch 1: the new run had no complete epoch, so none of it is "
                           f"kept; {run} still holds what it held before --overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no replacement left beside it


def test_overwrite_replaces_the_run_once_its_first_epoch_is_saved(whole, mnist_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run, ignore=shutil.ignore_patterns(".lock"))
    proc = subprocess.Popen([*TRAIN, "--data-dir", str(mnist_dir), "--out", str(run), "--overwrite", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    new = []
    wait_for(lambda: new.extend(tmp_path.glob(".run.new-*")) or new, proc)
    wait_for(lambda: json.loads((run / "config.json").read_text())["seed"] == 1, proc)  # swapped in place
    assert (run / "checkpoint.pt").exists() and len(rows(run)) >= 1  # after its first checkpoint, not before
    assert not (run / "model.safetensors").exists() or len(rows(run)) == 3
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3] and not same_model(run, whole)  # seed 1: another run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_two_racing_processes_one_writes_the_other_is_refused(mnist_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [*TRAIN, "--epochs", "1", "--data-dir", str(mnist_dir), "--out", str(run)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(err for code, err in results if code == 2).strip()
    holder = next(p.pid for p, (code, _) in zip(procs, results, strict=True) if code == 0)
    assert err.startswith((f"error: {run} is in use by process {holder} (mnistlab train ",
                           f"error: {run} already holds a finished run (preset notebook, 1/1 epochs")), err
    assert len(rows(run)) == 1 and load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_the_lock_names_its_holder_and_dies_with_it(mnist_dir, tmp_path):
    """A second writer (a new run or a resume) is refused naming the process; after that process is SIGKILLed
    the lock is gone with it, without any cleanup, and --resume goes on."""
    data = ["--data-dir", str(mnist_dir)]
    run = tmp_path / "run"
    proc = subprocess.Popen([*TRAIN, *data, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    in_epoch_2(run, proc)
    for args in (["--out", str(run), *TRAIN[4:]], ["--resume", str(run)]):
        second = subprocess.run([sys.executable, "-m", "mnistlab", "train", *args, *data], capture_output=True,
                                text=True)
        assert second.returncode == 2
        assert second.stderr.startswith(f"error: {run} is in use by process {proc.pid} (mnistlab train --preset ")
        assert second.stderr.strip().endswith("which is writing into it; wait for it to end, or choose another --out")
        assert len(second.stderr.strip().splitlines()) == 1
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume", str(run), *data],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3]
