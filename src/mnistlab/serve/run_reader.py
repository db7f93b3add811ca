"""The run directories under a root, read for the runs explorer: every folder holding a config.json is a run.

A run's id is its POSIX path relative to the root ("lab-20260101-120000/exercise2/lr0.001-b32-e3").
`RunsRoot.resolve(id)` maps an id back to a folder strictly inside the root, or raises NotFound: empty,
absolute, `..` and backslash ids, symlinks that lead out of the root and folders without config.json are
all refused the same way. Files are read only through `RunsRoot.file`, which applies the same check to
each file, so a symlinked metrics.jsonl pointing elsewhere is never opened.

Reading never raises on what a run directory contains: a missing, truncated or unparsable file is reported
in the run's `problems` (status "corrupt") and whatever could be read is still shown.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MAX_DEPTH = 8  # folders below the root searched for runs (a lab's sweep trials are at depth 3)
MAX_JSON = 8 << 20  # bytes: a config.json, env.json or metrics.jsonl larger than this is not read
LIVE_SECONDS = 120.0  # a run without a model whose files changed this recently is still training
# A run's kind, from a file its parent folder holds, else from the parent folder's name.
PARENT_MARKERS = {"sweep.json": "sweep", "compare.json": "compare", "ensemble.json": "ensemble"}
PARENT_NAMES = {"exercise2": "sweep", "exercise3": "compare", "quirks": "lab"}


class NotFound(Exception):
    """No run with this id inside the root (also for every id that tries to leave it)."""


@dataclass
class Parsed:
    """A file's parsed content and what was wrong with it, cached by (mtime, size)."""

    stamp: tuple[int, int]
    value: Any
    problem: str | None


class RunsRoot:
    """Read-only access to the runs under `root`; parsed files are cached until they change on disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root}: not a directory")
        self._cache: dict[Path, Parsed] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ ids and files
    def inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):  # a symlink loop
            return False

    def resolve(self, run_id: str) -> Path:
        """The run folder of `run_id`; NotFound for anything that is not a run inside the root."""
        parts = PurePosixPath(run_id).parts
        if (not run_id or "\\" in run_id or "\x00" in run_id or run_id.startswith("/")
                or any(p in ("", ".", "..") for p in run_id.split("/")) or len(parts) > MAX_DEPTH):
            raise NotFound(run_id)
        path = self.root.joinpath(*parts)
        if not self.inside(path) or not path.is_dir() or self.file(path, "config.json") is None:
            raise NotFound(run_id)
        return path

    def run_id(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def file(self, run: Path, name: str) -> Path | None:
        """`run/name` when it is a regular file inside the root, else None."""
        path = run / name
        try:
            return path if path.is_file() and self.inside(path) else None
        except OSError:
            return None

    def scan(self) -> list[Path]:
        """Every run folder under the root (symlinked folders are not followed), sorted by id."""
        runs = []
        for top, dirs, files in os.walk(self.root, followlinks=False):
            here = Path(top)
            depth = len(here.relative_to(self.root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
            if depth and "config.json" in files and self.file(here, "config.json"):
                runs.append(here)
        return sorted(runs, key=self.run_id)

    # ------------------------------------------------------------ tolerant parsing
    def _parsed(self, path: Path | None, parse) -> Parsed:
        if path is None:
            return Parsed((0, 0), None, "missing")
        try:
            st = path.stat()
        except OSError as e:
            return Parsed((0, 0), None, f"unreadable ({e.strerror})")
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(path)
        if hit is not None and hit.stamp == stamp:
            return hit
        if st.st_size > MAX_JSON:
            entry = Parsed(stamp, None, f"too large to read ({st.st_size:,} bytes)")
        else:
            try:
                value, problem = parse(path.read_bytes().decode("utf-8", errors="replace"))
                entry = Parsed(stamp, value, problem)
            except OSError as e:
                entry = Parsed(stamp, None, f"unreadable ({e.strerror})")
        with self._lock:
            self._cache[path] = entry
        return entry

    def json_file(self, run: Path, name: str) -> Parsed:
        return self._parsed(self.file(run, name), _parse_object)

    def metrics(self, run: Path) -> Parsed:
        return self._parsed(self.file(run, "metrics.jsonl"), _parse_rows)

    # ------------------------------------------------------------ what the pages show
    def summary(self, run: Path) -> dict[str, Any]:
        """One row of the runs table; never raises for a damaged run."""
        config, env, metrics = self.json_file(run, "config.json"), self.json_file(run, "env.json"), self.metrics(run)
        cfg = config.value or {}
        rows = metrics.value or []
        # A missing env.json or metrics.jsonl is normal (a run reused by compare, one still in epoch 1).
        problems = [f"{name}: {p.problem}" for name, p in
                    (("config.json", config), ("env.json", env), ("metrics.jsonl", metrics))
                    if p.problem and p.problem != "missing"]
        model = self.file(run, "model.safetensors")
        updated = max(_mtime(self.file(run, name)) for name in ("config.json", "metrics.jsonl", "checkpoint.pt",
                                                                "model.safetensors"))
        done = len(rows)
        planned = _int(cfg.get("epochs"))
        if problems:
            status = "corrupt"
        elif self.file(run, "source.json"):
            status = "reused"
        elif model is not None and (planned is None or done >= planned):
            status = "done"
        elif self.cancelled(run, updated):
            status = "cancelled"
        elif time.time() - updated < max(LIVE_SECONDS, 3 * _epoch_seconds(rows)):
            status = "training"
        else:
            status = "interrupted"
        opt_args = cfg.get("opt_args") if isinstance(cfg.get("opt_args"), dict) else {}
        env_value = env.value or {}
        return {
            "id": self.run_id(run), "name": run.name, "kind": self.kind(run), "status": status,
            "problems": problems, "preset": _text(cfg.get("preset")), "model": _text(cfg.get("model")),
            "dataset": _text(cfg.get("dataset")), "epochs": done, "planned_epochs": planned,
            "optimizer": _text(cfg.get("optimizer")), "lr": _number(opt_args.get("lr")),
            "batch_size": _int(cfg.get("batch_size")),
            "precision": precision_of(env_value, cfg),
            "device": _text(env_value.get("device")),
            **_accuracies(rows),
            "seconds": round(sum(_number(r.get("seconds")) or 0.0 for r in rows)
                             + sum(_number(r.get("eval_seconds")) or 0.0 for r in rows), 2),
            "updated": updated, "has_model": model is not None,
        }

    def cancelled(self, run: Path, updated: float) -> bool:
        """Whether the run's live.jsonl (a run watched from /train) ends with its cancellation, and nothing
        changed the run since (`updated`: a resumed run rewrites its metrics)."""
        path = self.file(run, "live.jsonl")
        if path is None or _mtime(path) < updated:
            return False
        try:
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            event = json.loads(last)
            return isinstance(event, dict) and event.get("type") == "end" and event.get("state") == "cancelled"
        except (OSError, ValueError, AttributeError):
            return False

    def detail(self, run: Path) -> dict[str, Any]:
        """The summary, the config, the environment and every epoch's metrics, plus the files present."""
        files = sorted(p.name for p in run.iterdir() if not p.name.startswith(".") and self.file(run, p.name))
        return {**self.summary(run), "config": self.json_file(run, "config.json").value,
                "env": self.json_file(run, "env.json").value, "metrics": self.metrics(run).value or [],
                "files": files}

    def kind(self, run: Path) -> str:
        """train, sweep, compare, ensemble, tune or lab: what made this run, from the folders around it."""
        parent = run.parent
        if parent != self.root:
            for marker, kind in PARENT_MARKERS.items():
                if self.file(parent, marker):
                    return kind
            for prefix in ("sweep", "compare", "tune"):
                if parent.name.startswith(prefix):
                    return prefix
            if parent.name in PARENT_NAMES:
                return PARENT_NAMES[parent.name]
            if run.name.startswith("member-"):
                return "ensemble"
        if run.name == "exercise1" or any((a / "exercise1").is_dir() for a in run.parents
                                          if a != self.root and a.is_relative_to(self.root)):
            return "lab"
        return "train"


def _parse_object(text: str) -> tuple[Any, str | None]:
    try:
        value = json.loads(text)
    except ValueError as e:
        return None, f"not valid JSON ({e})"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None


def _parse_rows(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The readable rows of a metrics.jsonl and, when some line is not, which one (a truncated file)."""
    rows, problem = [], None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or _number(row.get("epoch")) is None:
            problem = problem or f"line {n} is not a metrics row (truncated or damaged); lines after it skipped"
            break
        rows.append(row)
    return rows, problem


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def precision_of(env: dict[str, Any], cfg: dict[str, Any]) -> str | None:
    """What a run trained in: env.json's `amp_dtype` (null means fp32), else the `--amp` it was asked for."""
    if "amp_dtype" in env:
        return _text(env["amp_dtype"]) or "fp32"
    return _text(cfg.get("amp"))


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


def _epoch_seconds(rows: list[dict[str, Any]]) -> float:
    last = rows[-1] if rows else {}
    return (_number(last.get("seconds")) or 0.0) + (_number(last.get("eval_seconds")) or 0.0)


def _accuracies(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for split in ("val", "test"):
        values = [v for r in rows if (v := _number(r.get(f"{split}_acc"))) is not None]
        out[f"best_{split}_acc"] = max(values) if values else None
        out[f"final_{split}_acc"] = _number(rows[-1].get(f"{split}_acc")) if rows else None
    return out
