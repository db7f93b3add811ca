"""Run directories: what a training run leaves behind, always written atomically.

    runs/<preset>-<timestamp>/
      config.json      the resolved Config (preset + overrides)
      env.json         python/torch versions, device, threads, git commit, world size, training precision
                       (a resumed run: also the environments it trained in `earlier`)
      metrics.csv      one row per epoch (epoch, train_loss, train_acc, test_loss, test_acc, seconds, ...)
      metrics.jsonl    the same rows as JSON lines
      checkpoint.pt    model + optimizer + scheduler + epoch + RNG + history; torch.load(weights_only=True)
      model.safetensors  the trained weights, model name and config in the metadata
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mnistlab import __version__
from mnistlab.errors import MnistlabError, WriteError, os_error_sentence
from mnistlab.tables import size as size_text

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files get the permissions a plain open() would give them

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_s"]


# ---------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`.

    On any failure the temporary file is removed and `path` keeps what it held. An OSError (a full disk, a
    read-only file system, no permission) becomes a WriteError saying what was being written, where, and, for
    a full disk, how much it needs (`size` bytes, when the caller knows) and how much is free.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(write_failure(path, e, size)) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_failure(path: Path, e: OSError, size: int | None = None) -> str:
    """One sentence for a failed write of `path`: what, where, why, and for a full disk the space it needs."""
    line = os_error_sentence(e, f"cannot write {path.name} in {path.parent}")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path.parent)
        need = f"it needs {size_text(size)}, " if size is not None else ""
        line += f" ({need}{size_text(free)} free)" if free is not None else ""
    return line


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding `path` (its nearest existing
    ancestor); None when it cannot be asked."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def atomic_write(path: str | Path, data: str | bytes | memoryview) -> Path:
    data = data.encode() if isinstance(data, str) else data
    with atomic_path(path, len(data)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MnistlabError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise MnistlabError(f"{path}: not valid JSON ({e})") from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_metrics(run_dir: str | Path, history: list[dict[str, Any]], name: str = "metrics") -> None:
    """`<name>.csv` and `<name>.jsonl`: one row per epoch, the standard columns first."""
    run_dir = Path(run_dir)
    extra = sorted({k for row in history for k in row} - set(METRIC_COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS + extra, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run_dir / f"{name}.csv", buf.getvalue())
    atomic_write(run_dir / f"{name}.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def read_metrics(run_dir: str | Path, name: str = "metrics") -> list[dict[str, Any]]:
    path = Path(run_dir) / f"{name}.jsonl"
    if not path.exists():
        raise MnistlabError(f"{path}: not found (is {run_dir} a mnistlab run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- run directories
def new_run_dir(preset: str, out: str | Path | None = None, root: str | Path = "runs") -> Path:
    """`out` if given, else a new runs/<preset>-<YYYYmmdd-HHMMSS>[-N]: made with an exclusive mkdir, so two
    runs started in the same second (in two processes) never get the same directory."""
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    Path(root).mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = Path(root) / (f"{preset}-{stamp}" if n == 1 else f"{preset}-{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def latest_run(root: str | Path = "runs") -> Path | None:
    """The run directory under `root` whose model.safetensors was written last."""
    models = list(Path(root).glob("*/model.safetensors"))
    return max(models, key=lambda p: p.stat().st_mtime).parent if models else None


def remove_partial_files(run_dir: str | Path) -> list[Path]:
    """Delete temporary files a killed process left behind (the files they were to replace are intact)."""
    leftovers = list(Path(run_dir).glob(".*.tmp"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def environment(device: torch.device, world_size: int = 1, backend: str | None = None,
                amp_dtype: str | None = None, cpu_native_bf16: bool | None = None) -> dict[str, Any]:
    """What a run ran on: versions, device, threads, git commit, and the precision it trained in:
    `amp_dtype` ("bf16" | "fp16" | None for fp32; evaluation is always fp32) and `cpu_native_bf16`."""
    env: dict[str, Any] = {
        "mnistlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "world_size": world_size,
        "backend": backend,
        "amp_dtype": amp_dtype,
        "cpu_native_bf16": cpu_native_bf16,
        "git_commit": git_commit(),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
    return env


def record_environment(path: Path, now: dict[str, Any], start_epoch: int) -> None:
    """Write env.json: `now`, the environment training runs on from epoch `start_epoch` + 1. A resumed run
    whose recorded environment differs keeps it, and any it kept, under `earlier`, each with `until_epoch`:
    a run started in bf16 on one machine and finished in fp32 on another says so."""
    earlier: list[dict[str, Any]] = []
    if start_epoch > 0 and path.exists():
        try:
            before = read_json(path)
        except MnistlabError:
            before = None  # unreadable: nothing to keep
        if isinstance(before, dict):
            earlier = before.pop("earlier", [])
            if before != now:
                earlier.append({**before, "until_epoch": start_epoch})
    write_json(path, {**now, "earlier": earlier} if earlier else now)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_model()
    return device.type


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
