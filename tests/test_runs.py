"""Run directories: atomic writes, leftovers of killed processes, the latest run; claimed output directories
(one writer, no silent overwrite, room), with real processes, a real tmpfs and a real read-only mount."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnistlab.errors import ConfigError, WriteError
from mnistlab.files.outdir import DirInUse, check_space, claim_dir, scoped
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


# ---------------------------------------------------------------- claimed output directories
HOLDER = """
import sys, time
from mnistlab.files.outdir import claim_dir
claim = claim_dir(sys.argv[1], "x")
print("holding", flush=True)
time.sleep(600)
"""


def test_a_directory_held_by_another_process_is_refused_until_it_dies(tmp_path):
    """The flock is the kernel's: refused while the holder lives, named by its pid; free once it is SIGKILLed,
    with no cleanup."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(DirInUse, match=rf"^{out} is in use by process {proc.pid} \(.*\), which is writing"):
            claim_dir(out, "x")
        with pytest.raises(DirInUse, match=f"process {proc.pid}"):
            claim_dir(out, "x", resume=True)
    finally:
        proc.kill()
        proc.wait()
    with claim_dir(out, "x") as claim:  # empty apart from its lock: taken
        assert claim.work == out and (out / ".lock").read_text().split("\n")[0] == str(os.getpid())


STARTER = """
import sys, time
from pathlib import Path
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
from mnistlab.files.runs import new_run_dir
print(new_run_dir("p", root=sys.argv[1]))
"""


def test_default_run_names_never_collide_even_in_the_same_second(tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "runs"), str(go)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(0.5)
    go.touch()
    made = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert len(set(made)) == 4 and all(Path(m).is_dir() for m in made)


def test_what_a_directory_holds_decides_the_refusal(trained_run, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"file is a file, not a directory; choose another --out$"):
        claim_dir(tmp_path / "file", "x")
    with pytest.raises(ConfigError, match=r"/file/run: .*/file is a file, so no directory can be made under it$"):
        claim_dir(tmp_path / "file" / "run", "x")
    with pytest.raises(ConfigError) as e:
        claim_dir(trained_run, "x")
    acc = read_metrics(trained_run)[0]["test_acc"]
    assert str(e.value) == (f"{trained_run} already holds a finished run (preset notebook, 1/1 epochs, test accuracy "
                            f"{acc:.2f}%): continue it with --resume {trained_run}, choose another --out, or pass "
                            "--overwrite to replace it")
    with pytest.raises(ConfigError, match=r"^.* is not empty \(1 entry: file\); choose another --out$"):
        claim_dir(tmp_path, "x", kind="sweep")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".metrics.csv.x1y2.tmp").write_text("a killed writer's leftover")
    with claim_dir(empty, "x"):  # nothing but a leftover: taken
        pass


def test_overwrite_keeps_the_old_contents_until_commit(tmp_path):
    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    (out / "old.txt").write_text("old")
    with claim_dir(out, "x", overwrite=True) as claim:  # released without commit: a failed replacement
        assert claim.replacing and claim.work.parent == tmp_path and claim.work.name.startswith(".out.new-")
        (claim.work / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # the lock goes with its holder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with claim_dir(out, "x", overwrite=True) as claim:
        (claim.work / "new.txt").write_text("new")
        assert claim.commit() == out and claim.work == out and not claim.replacing
        assert out.stat().st_mode & 0o777 == 0o750  # the replacement keeps the directory's permissions
        assert sorted(p.name for p in out.iterdir()) == [".lock", "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_claim_taken_again_in_the_same_process_is_shared(tmp_path):
    @scoped
    def inner(path):
        return claim_dir(path, "x")

    with claim_dir(tmp_path / "a", "x") as outer:
        (outer.work / "lr_find.json").write_text("{}")  # what the caller wrote first does not refuse it
        assert inner(tmp_path / "a") is outer and outer.holders == 1
    assert not outer.fds  # released once the caller's `with` ends
    with claim_dir(tmp_path / "a", "x", kind="sweep", resume=True):
        pass


def test_a_full_disk_is_refused_with_both_numbers(small_disk):
    disk = small_disk("1m")
    check_space(disk, 500_000, "this")
    with pytest.raises(WriteError, match=rf"^not enough space in {disk} for a run: it needs about 2.0 MB and "
                                         r"1.0 MB is free; free some space or choose another --out$"):
        check_space(disk, 2_000_000, "a run")


def test_a_read_only_directory_is_one_sentence(read_only, tmp_path):
    (tmp_path / "src").mkdir()
    ro = read_only(tmp_path / "src")
    with pytest.raises(WriteError, match=rf"^cannot make the directory {ro}/run: the file system is read-only$"):
        claim_dir(ro / "run", "x")
    with pytest.raises(WriteError, match=rf"^cannot write metrics.csv in {ro}: the file system is read-only$"):
        write_metrics(ro, [{"epoch": 1}])
