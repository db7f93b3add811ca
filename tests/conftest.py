"""Shared fixtures."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


# --- data ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A data root (pass it as `data_dir=` / `--data-dir`) holding verified real MNIST.

    The user's data dir ($MNISTLAB_DATA, else the cache): reused when already there, fetched into it once
    otherwise, never deleted.
    """
    from mnistlab.data import data_dir, fetch

    root = data_dir()
    fetch("mnist", root)
    return root


# --- models ----------------------------------------------------------------------------------------------------
def built_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `build(folder)` fills once per test session, shared read-only by every pytest-xdist worker:
    the first worker to ask builds it under a lock while the others wait, then all reuse it."""
    if worker_id == "master":  # not under xdist
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name  # the session's folder, above each worker's own
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died building it
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def trained_run(mnist_dir, tmp_path_factory, worker_id) -> Path:
    """The run directory of a notebook-preset model trained for 1 epoch on --subset 10000 with seed 0 on the
    CPU in fp32 (about 93.5% test accuracy; the same weights whether or not the CPU has native bf16), in a tmp
    dir, trained once for all workers. It is scored on all 10,000 test images (no test_subset): its metrics
    rows, model metadata and what `evaluate` prints for it are full-test-set figures. Treat it as read-only
    (write evaluations elsewhere)."""
    from mnistlab.training.run import train

    def build(folder: Path) -> None:
        train("notebook", epochs=1, subset=10000, seed=0, device="cpu", amp="off", data_dir=mnist_dir,
              quiet=True, out=folder / "run")

    return built_once(tmp_path_factory, worker_id, "trained", build) / "run"


@pytest.fixture(scope="session")
def runs_tree(mnist_dir, tmp_path_factory) -> Path:
    """A runs directory as the explorer finds one, made by real tiny trainings (CPU, --subset 1000):

        a/                           notebook, 2 epochs, --val 200, done
        sweep-notebook/mlp-e1/       an MLP, 1 epoch, nested like a sweep trial, done
        damaged/                     a copy of a/ with metrics.jsonl cut mid-line and no model.safetensors
        broken-config/               config.json that is not JSON
    Treat it as read-only.
    """
    import shutil

    from mnistlab.training.run import train

    root = tmp_path_factory.mktemp("runs-tree")
    common = dict(subset=1000, seed=0, device="cpu", amp="off", data_dir=mnist_dir, quiet=True)  # fp32 anywhere
    train("notebook", epochs=2, val=200, out=root / "a", **common)
    train("notebook", model="mlp", epochs=1, out=root / "sweep-notebook" / "mlp-e1", **common)
    shutil.copytree(root / "a", root / "damaged")
    text = (root / "a" / "metrics.jsonl").read_text()
    (root / "damaged" / "metrics.jsonl").write_text(text[: len(text.splitlines()[0]) + 40])  # row 2 cut short
    (root / "damaged" / "model.safetensors").unlink()
    (root / "broken-config").mkdir()
    (root / "broken-config" / "config.json").write_text('{"preset": "notebook", "epo')
    return root


@pytest.fixture
def cli(capsys):
    """`cli("predict", "--index", "0")`: the `mnistlab` command run in this process -> (exit code, stdout, stderr)."""
    from mnistlab.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


# --- GPU-only tests --------------------------------------------------------------------------------------------
def pytest_collection_modifyitems(config, items):
    """Tests marked @pytest.mark.gpu need CUDA: without it they are skipped (the only skip allowed in CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- real faults ---------------------------------------------------------------------------------------------
def _mount(*args: str) -> None:
    import subprocess

    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount ({r.stderr.strip() or 'mount failed'}): these tests need root, as in CI")


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(size)`: a real tmpfs of `size` (e.g. "6m") mounted on a fresh folder under tmp_path, unmounted
    afterwards. Skips, with the reason, where mounting is not allowed (not root)."""
    import subprocess

    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """`read_only(folder)`: a read-only bind mount of `folder` (a real EROFS for every write through it),
    unmounted afterwards. Skips, with the reason, where mounting is not allowed."""
    import subprocess

    mounted = []

    def mount(folder: Path) -> Path:
        where = tmp_path / f"ro{len(mounted)}"
        where.mkdir()
        _mount("--bind", str(folder), str(where))
        mounted.append(where)
        _mount("-o", "remount,ro,bind", str(where))
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)
