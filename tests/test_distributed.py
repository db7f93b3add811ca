"""DistributedDataParallel under torchrun: two real gloo ranks on the CPU, and the sharding they rely on.

The torchrun runs use SGD with momentum rather than the notebook's Adam: Adam's update hardly changes when
every gradient is scaled by a constant, so a wrong DDP loss scaling would go unnoticed with it. They train in
fp32 (`--amp off`) to compare with a single process to 1e-5 on any CPU; one more run trains under bf16
autocast (emulated where the CPU lacks it), whose metrics must still be the fp32 score of its saved model.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistlab.data import load_split
from mnistlab.data.loader import DeviceLoader
from mnistlab.errors import ConfigError, DataError
from mnistlab.files.checkpoints import load_checkpoint, model_from, read_safetensors
from mnistlab.training import distributed
from mnistlab.training.distributed import DistEnv, RankSeed
from mnistlab.training.engine import evaluate
from mnistlab.training.run import train

RECIPE = dict(optimizer="sgd", lr=0.02, opt_args={"momentum": 0.9}, batch_size=64, subset=2000, seed=3, amp="off")
RECIPE_ARGS = ["--preset", "notebook", "--optimizer", "sgd", "--lr", "0.02", "--opt", "momentum=0.9",
               "--batch-size", "64", "--subset", "2000", "--seed", "3", "--device", "cpu", "--amp", "off"]
EPOCHS = 2


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 ...` (a free port: other runs may be going on)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def mnistlab_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return torchrun("-m", "mnistlab", "train", *args, cwd=cwd)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(mnist_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A two-rank gloo run of RECIPE for EPOCHS epochs, started in an empty directory."""
    cwd = tmp_path_factory.mktemp("ddp")
    r = mnistlab_train(*RECIPE_ARGS, "--epochs", str(EPOCHS), "--data-dir", str(mnist_dir), "--out", "run",
                       cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd / "run", r


@pytest.fixture(scope="module")
def ddp_bf16_run(mnist_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """RECIPE for 1 epoch on two gloo ranks, trained under bf16 autocast."""
    cwd = tmp_path_factory.mktemp("ddp-bf16")
    r = mnistlab_train(*RECIPE_ARGS, "--amp", "bf16", "--epochs", "1", "--data-dir", str(mnist_dir), "--out",
                       "run", cwd=cwd)  # the last --amp wins
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd / "run", r


# ---------------------------------------------------------------- two real ranks
@pytest.mark.slow
def test_only_rank_0_writes_and_prints(ddp_run):
    run_dir, r = ddp_run
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run"]  # no second run dir, no runs/
    names = sorted(p.name for p in run_dir.iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents.")]
    assert len(events) == 1  # one TensorBoard writer: rank 0's
    assert [n for n in names if n not in events] == [
        "checkpoint.pt", "config.json", "env.json", "metrics.csv", "metrics.jsonl", "model.safetensors"]
    assert [row["epoch"] for row in rows(run_dir)] == list(range(1, EPOCHS + 1))  # one row per epoch
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == EPOCHS + 1
    assert r.stdout.count("epoch 1/2") == 1 and r.stdout.count("test accuracy") == 1
    env = json.loads((run_dir / "env.json").read_text())
    assert env["world_size"] == 2 and env["backend"] == "gloo"
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 64  # global, as asked
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == EPOCHS


@pytest.mark.slow
@pytest.mark.parametrize("run, amp", [("ddp_run", None), ("ddp_bf16_run", "bf16")])
def test_test_set_evaluated_once_in_total(run, amp, mnist_dir, request):
    run_dir, _ = request.getfixturevalue(run)
    assert json.loads((run_dir / "env.json").read_text())["amp_dtype"] == amp
    last = rows(run_dir)[-1]
    assert all(row["test_n"] == 10_000 for row in rows(run_dir))
    # The sharded, all-reduced metrics equal one process evaluating the saved model on the whole test set
    # (in fp32, whatever the training precision): a rank that skipped or repeated part of its shard would
    # change the correct count or the loss.
    model = model_from(*read_safetensors(run_dir / "model.safetensors"))
    images, labels = load_split("mnist", "test", mnist_dir)
    full = evaluate(model, DeviceLoader(images, labels, 1000))
    assert full["n"] == 10_000
    assert round(full["acc"] * 100) == round(last["test_acc"] * 100)  # the same number of correct images
    assert full["loss"] == pytest.approx(last["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_matches_single_process_with_same_seed_and_global_batch(ddp_run, mnist_dir):
    """Two ranks of 32 see the same global batches of 64 and step on the same mean gradient as one process
    of 64; only the floating-point summation order differs (about 1e-8 relative after 2 epochs here), so
    losses must agree to 1e-5 relative and test accuracy to 0.05 points (5 of 10,000 images). A wrong loss
    scale, a rank seeing the wrong shard or unsynchronised weights would differ by far more."""
    run_dir, _ = ddp_run
    single = train("notebook", epochs=EPOCHS, device="cpu", data_dir=mnist_dir, quiet=True, write_run=False,
                   **RECIPE).history
    for one, two in zip(single, rows(run_dir), strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)
        assert abs(two["test_acc"] - one["test_acc"]) <= 0.05
        assert two["train_acc"] == pytest.approx(one["train_acc"], abs=0.1)


@pytest.mark.slow
def test_resume_under_torchrun(ddp_run, mnist_dir, tmp_path):
    full_dir, _ = ddp_run
    data = ["--data-dir", str(mnist_dir)]
    r = mnistlab_train(*RECIPE_ARGS, "--epochs", "1", *data, "--out", "part", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = mnistlab_train("--resume", "part", "--epochs", str(EPOCHS), *data, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("resuming part after epoch 1/2") == 1
    resumed, full = rows(tmp_path / "part"), rows(full_dir)
    assert [row["epoch"] for row in resumed] == [1, 2]
    for a, b in zip(resumed, full, strict=True):  # the same run as the uninterrupted one
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part"]

    # ranks that would resume from different checkpoints (a run directory not on shared storage) stop
    script = tmp_path / "mixed.py"
    script.write_text(
        "import os, sys\nfrom mnistlab.cli import main\n"
        f"run = {str(full_dir)!r} if os.environ['RANK'] == '0' else 'part'\n"
        f"sys.exit(main(['train', '--resume', run, '--epochs', '3', '--data-dir', {str(mnist_dir)!r}]))\n")
    r = torchrun(str(script), cwd=tmp_path)
    assert r.returncode != 0
    assert "the ranks loaded different checkpoints" in r.stderr
    assert len(rows(full_dir)) == EPOCHS  # nothing was trained


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_together_after_the_epoch(ddp_run, mnist_dir, tmp_path):
    """torchrun passes SIGTERM on to its ranks; they agree at the end of the epoch in progress (one all-reduce
    of the flag), stop together with that epoch saved, rank 0 alone says so, and --resume goes on."""
    full_dir, _ = ddp_run
    data = ["--data-dir", str(mnist_dir)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mnistlab",
           "train", *RECIPE_ARGS, "--epochs", "3", *data, "--out", "part"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = tmp_path / "part"
    deadline = time.monotonic() + 300
    while not (part / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    time.sleep(0.3 * rows(part)[0]["seconds"])  # inside epoch 2's training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert err.count("interrupted by SIGTERM") == 1, err[-3000:]  # rank 0 only
    assert ("interrupted by SIGTERM after epoch 2: part holds epochs 1-2 in checkpoint.pt; continue with: "
            "mnistlab train --resume part") in err
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 2 and not (part / "model.safetensors").exists()
    for a, b in zip(rows(part), rows(full_dir), strict=True):  # the same epochs as the uninterrupted run
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
    r = mnistlab_train("--resume", "part", *data, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["epoch"] for row in rows(part)] == [1, 2, 3] and (part / "model.safetensors").exists()


@pytest.mark.slow
def test_global_batch_must_divide_by_world_size(tmp_path, mnist_dir):
    r = mnistlab_train("--batch-size", "33", "--subset", "200", "--epochs", "1", "--device", "cpu",
                       "--data-dir", str(mnist_dir), "--out", "run", cwd=tmp_path)
    assert r.returncode != 0
    assert "error: --batch-size 33 is the global batch and must be divisible by the world size 2" in r.stderr
    frames = [line for line in r.stderr.splitlines() if line.lstrip().startswith('File "')]
    ours = [f for f in frames if "<frozen" not in f and "/torch/" not in f]
    assert frames and not ours, ours  # one line per rank; the only traceback is torchrun's own report
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_rank_failing_alone_stops_every_rank(tmp_path, mnist_dir):
    """Rank 1 cannot load its data: rank 0 must stop too (not wait in DDP's first collective) and say why."""
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys\nimport mnistlab.training.run as t\nfrom mnistlab.cli import main\n"
        "from mnistlab.errors import DataError\nload = t.load_data\n"
        "def load_data(*a, **k):\n"
        "    if os.environ['RANK'] == '1':\n        raise DataError('no MNIST under /nowhere')\n"
        "    return load(*a, **k)\n"
        "t.load_data = load_data\n"
        f"sys.exit(main(['train', '--subset', '200', '--device', 'cpu', '--data-dir', {str(mnist_dir)!r}]))\n")
    r = torchrun(str(script), cwd=tmp_path)
    assert r.returncode != 0
    assert "error: rank 1: no MNIST under /nowhere" in r.stderr
    assert "error: stopping because rank 1 failed" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.gpu
def test_nccl_one_rank_per_gpu(tmp_path, mnist_dir):
    """On CUDA the backend is nccl with one rank per GPU; more ranks than GPUs is a clear error."""
    r = mnistlab_train("--subset", "2000", "--epochs", "1", "--batch-size", "64", "--device", "cuda",
                       "--data-dir", str(mnist_dir), "--out", "run", cwd=tmp_path)
    if torch.cuda.device_count() < 2:
        assert r.returncode != 0 and "2 ranks on this node but 1 CUDA GPU(s)" in r.stderr
        return
    assert r.returncode == 0, r.stderr[-3000:]
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["world_size"] == 2 and env["backend"] == "nccl" and env["device"] == "cuda:0"
    assert rows(tmp_path / "run")[0]["test_n"] == 10_000


# ---------------------------------------------------------------- in-process units
def _loaders(n: int, batch: int, world: int, **kw) -> list[DeviceLoader]:
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    return [DeviceLoader(images, torch.arange(n), batch, rank=r, world_size=world, **kw) for r in range(world)]


@pytest.mark.parametrize("n, batch, world", [(1000, 100, 2), (1000, 100, 3), (9, 4, 4), (103, 10, 8)])
def test_evaluation_shards_cover_each_image_once(n, batch, world):
    """The unshuffled (test) loaders' shards: each image once across ranks, even when the last global batch
    is smaller than the world (some ranks then get an empty slice but still take the step)."""
    loaders = _loaders(n, batch, world)
    labels = torch.cat([y for ld in loaders for _, y in ld.epoch(0)])
    assert sorted(labels.tolist()) == list(range(n))
    assert len({len(list(ld.epoch(0))) for ld in loaders}) == 1


@pytest.mark.parametrize("world", [2, 3, 5])
def test_ranks_share_one_seeded_order_and_rebuild_it(world):
    """Every rank draws the same permutation for (seed, epoch); interleaving the ranks' slices of each step
    gives back exactly the single-process global batches, in order."""
    ranks = _loaders(103, 10, world, shuffle=True, seed=11)
    single = _loaders(103, 10, 1, shuffle=True, seed=11)[0]
    for epoch in (1, 2):
        assert all(torch.equal(ld.order(epoch), single.order(epoch)) for ld in ranks)
        for step, (glob, size) in enumerate(single.shard(epoch)):
            parts = [ld.shard(epoch)[step] for ld in ranks]
            assert all(g == size for _, g in parts)
            rebuilt = torch.empty_like(glob)
            for r, (idx, _) in enumerate(parts):
                rebuilt[r::world] = idx
            assert torch.equal(rebuilt, glob)


def test_rank_seed_differs_per_rank_and_ignores_history():
    def draw(rank: int, epoch: int, before: int = 0) -> torch.Tensor:
        torch.rand(before)  # whatever ran earlier must not matter
        RankSeed(5, rank).on_epoch_start(epoch, 1)
        return torch.rand(4)

    assert torch.equal(draw(1, 3), draw(1, 3, before=17))
    assert not torch.equal(draw(0, 3), draw(1, 3))
    assert not torch.equal(draw(1, 3), draw(1, 4))


def test_per_rank_batch_and_single_process_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.per_rank_batch(64, DistEnv(world_size=4)) == 16
    with pytest.raises(ConfigError, match="must be divisible by the world size 3.*--batch-size 30"):
        distributed.per_rank_batch(32, DistEnv(world_size=3))
    single = DistEnv()
    assert not single.active and single.is_main and distributed.setup("cpu") == single  # no WORLD_SIZE
    assert distributed.same_everywhere(single, [1.0, 2.0])
    distributed.agree(single, None)
    with pytest.raises(DataError, match="missing"):
        distributed.agree(single, DataError("missing"))
