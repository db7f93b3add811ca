"""Run directories: atomic writes, leftovers of killed processes, the latest run."""

from __future__ import annotations

import os
import time

import pytest

from mnistlab.files.runs import atomic_path, latest_run, read_metrics, remove_partial_files, write_metrics


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_partial_files_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"good")
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    removed = remove_partial_files(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_latest_run_follows_the_model_file_not_the_folder(tmp_path):
    old, new = tmp_path / "a", tmp_path / "b"
    for i, run in enumerate((old, new)):
        run.mkdir()
        (run / "model.safetensors").write_bytes(b"x")
        os.utime(run / "model.safetensors", (time.time() - 100 + i * 50,) * 2)
    (old / "evaluate").mkdir()  # touching an old run's folder must not make it the latest
    assert latest_run(tmp_path) == new
    assert latest_run(tmp_path / "none") is None


def test_metrics_round_trip(tmp_path):
    rows = [{"epoch": 1, "train_loss": 0.5, "train_acc": 90.0, "test_loss": 0.4, "test_acc": 91.0,
             "seconds": 1.0, "images_per_s": 10.0, "lr": 0.001}]
    write_metrics(tmp_path, rows)
    assert read_metrics(tmp_path) == rows
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_acc")


def test_atomic_files_get_ordinary_permissions(tmp_path):
    path = tmp_path / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
