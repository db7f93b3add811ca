"""scripts/gpu-check.sh: --dry-run lists every step, each mnistlab command in it is one the CLI accepts, and
without a GPU the real run stops at once with one line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
STEPS = ["gpu-tests", "bench", "fast-graphs", "lab", "notebook", "ddp"]


def _run(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def _steps(out: str) -> dict[str, list[str]]:
    """name -> argv of each step the dry run lists."""
    steps = {}
    for line in out.splitlines()[1:]:
        name, _, rest = line.strip().partition(" ")
        steps[name] = shlex.split(rest.split(")", 1)[1])
    return steps


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "results"
    r = _run("--dry-run", "--out", str(out), "--data-dir", "/data/mnist")
    assert r.returncode == 0, r.stderr
    steps = _steps(r.stdout)
    assert list(steps) == STEPS
    assert not out.exists()  # nothing ran, nothing was written
    assert steps["gpu-tests"][-3:] == ["-m", "gpu", "tests"]
    assert steps["bench"][3:] == ["bench", "--device", "cuda", "--epochs", "5", "--out", f"{out}/bench",
                                  "--data-dir", "/data/mnist"]
    assert "--cuda-graphs" in steps["fast-graphs"] and "--ensemble" in steps["fast-graphs"]
    assert steps["ddp"][1:4] == ["-m", "torch.distributed.run", "--standalone"]


@pytest.mark.parametrize("step", [s for s in STEPS if s != "gpu-tests"])
def test_every_mnistlab_command_is_accepted_by_the_cli(step, tmp_path):
    from mnistlab.cli import build_parser

    argv = _steps(_run("--dry-run", "--out", str(tmp_path)).stdout)[step]
    args = build_parser().parse_args(argv[argv.index("mnistlab") + 1:])  # exits 2 on an unknown option
    assert args.device == "cuda"


def test_without_a_gpu_it_stops_with_one_line(tmp_path):
    bare = tmp_path / "bin"  # a PATH with bash and the basics but no nvidia-smi
    bare.mkdir()
    for tool in ("bash", "dirname", "date", "wc", "sed", "cat"):
        (bare / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    r = _run("--out", str(tmp_path / "results"), path=str(bare))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: no NVIDIA GPU found (nvidia-smi lists none); --dry-run shows what would run"]
    assert not (tmp_path / "results").exists()


def test_unknown_option_is_one_line_and_exit_2():
    r = _run("--bogus")
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown option --bogus (see --help)"
