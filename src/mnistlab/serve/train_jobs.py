"""The runs the server trains (`/train`): each one `mnistlab train --live` in its own process, writing a normal
run directory under the runs root; one at a time (a "Compare with SGD" pair: its second run waits for the
first). What a run did is read back from its live.jsonl (training/live.py), so a run outlives the page that
started it, and a restarted server still knows it (as interrupted when no process holds its directory).

States: queued (accepted, not training yet), running, done, cancelled (stopped by cancel, resumable),
failed (the process ended with an error), interrupted (ended without saying so: the server went away, the
process was killed; resumable).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.files.outdir import held
from mnistlab.training.live import LIVE_FILE, append_event

ACTIVE = ("queued", "running")
RESUMABLE = ("cancelled", "interrupted")
STOPPED = (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT)  # exit codes of a stop
MESSAGE_LINES = 20  # the end of the child's output kept for a failure's message


class Busy(Exception):
    """A run is training already (its id is the message)."""


@dataclass
class Job:
    """One run this server started (or will start: the second of a pair)."""

    id: str
    run_dir: Path
    command: list[str]
    state: str = "queued"
    proc: subprocess.Popen | None = field(default=None, repr=False)
    cancelled: bool = False
    stopping: bool = False  # the server is shutting down
    waiter: threading.Thread | None = field(default=None, repr=False)
    returncode: int | None = None
    message: str = ""
    then: Job | None = field(default=None, repr=False)  # started when this one is done
    pair: list[str] = field(default_factory=list)  # the ids of a compare pair, in order


def tail(path: Path, offset: int, line: int) -> tuple[list[tuple[int, dict[str, Any]]], int, int]:
    """The whole lines of `path` from byte `offset` (where line `line` ended) as (line number, event), the offset
    and line number after them: a stream reads each byte of a growing file once."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset, line
    out = []
    end = data.rfind(b"\n") + 1  # a last line without its newline is being written: left for later
    for raw in data[:end].splitlines():
        line += 1
        try:
            out.append((line, json.loads(raw)))
        except ValueError:
            continue
    return out, offset + end, line


def read_events(path: Path, start: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """(line number from 1, event) for each whole line of `path` after line `start`; a last line without its
    newline (being written) and a line that is not JSON are left out."""
    return [(n, e) for n, e in tail(path, 0, 0)[0] if n > start]


def file_state(run_dir: Path, ask_lock: bool = True) -> dict[str, Any]:
    """What a run's live.jsonl says: its state (the last start's end event, else running while a process holds
    the directory, else interrupted), the last step event and epoch row, and the epochs planned. Without
    `ask_lock` (a run whose process this server watches) the lock is not asked about: asking while the process
    claims its directory would refuse it."""
    events = [e for _, e in read_events(run_dir / LIVE_FILE)]
    starts = [i for i, e in enumerate(events) if e.get("type") == "start"]
    since = events[starts[-1]:] if starts else events
    end = next((e for e in reversed(since) if e.get("type") == "end"), None)
    epochs = [e for e in events if e.get("type") == "epoch"]
    start = events[starts[-1]] if starts else {}
    if end is not None:
        state = str(end.get("state"))
    elif not ask_lock or held(run_dir):
        state = "running" if starts else "queued"
    elif (run_dir / "model.safetensors").is_file() and epochs and epochs[-1].get("epoch") == start.get("epochs"):
        state = "done"  # finished while no server watched it
    else:
        state = "interrupted"
    step = next((e for e in reversed(since) if e.get("type") == "step"), None)
    return {"state": state, "end": end, "step": step, "metrics": epochs[-1] if epochs else None,
            "planned_epochs": start.get("epochs"), "started": bool(starts)}


class Trainer:
    """Starts, watches and cancels the runs trained by this server, under `root` (the served runs directory)."""

    def __init__(self, root: Path, data_dir: str | Path | None = None, shown_root: str | None = None) -> None:
        self.root, self.data_dir = root, data_dir
        self.shown_root = shown_root or str(root)  # the runs directory as the user named it, for commands
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------ starting
    def new_dir(self, stem: str) -> Path:
        """A name under the root that nothing holds yet (`-2`, `-3`, ... when taken)."""
        path, n = self.root / stem, 1
        while path.exists():
            n += 1
            path = self.root / f"{stem}-{n}"
        return path

    def command(self, run_dir: Path, flags: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "mnistlab", "train", *flags, "--out", str(run_dir), "--live", "--quiet"]
        return cmd + (["--data-dir", str(self.data_dir)] if self.data_dir is not None else [])

    def start(self, runs: list[tuple[str, list[str]]]) -> list[Job]:
        """Start a run (or a pair, the second after the first): `runs` = [(folder name, train flags)], the
        folder names relative to the root. Raises Busy naming the run in progress."""
        with self.lock:
            busy = self.active()
            if busy is not None:
                raise Busy(busy.id)
            jobs = []
            for name, flags in runs:
                run_dir = self.root / name
                jobs.append(Job(self.id_of(run_dir), run_dir, self.command(run_dir, flags)))
            for a, b in zip(jobs, jobs[1:], strict=False):
                a.then = b
            for j in jobs:
                j.pair = [x.id for x in jobs] if len(jobs) > 1 else []
                self.jobs[j.id] = j
            self.launch(jobs[0])
            return jobs

    def id_of(self, run_dir: Path) -> str:
        return run_dir.relative_to(self.root).as_posix()

    def active(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state in ACTIVE), None)

    def launch(self, job: Job) -> None:
        """Start `job`'s process and the thread that waits for it (called with the lock held)."""
        job.run_dir.parent.mkdir(parents=True, exist_ok=True)
        job.proc = subprocess.Popen(job.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        job.waiter = threading.Thread(target=self.wait, args=(job,), name=f"train {job.id}", daemon=True)
        job.waiter.start()

    def wait(self, job: Job) -> None:
        """Wait for `job`'s process; record how it ended in its live.jsonl; start the next of a pair."""
        out, _ = job.proc.communicate()
        lines = out.decode(errors="replace").strip().splitlines()[-MESSAGE_LINES:]
        rc = job.proc.returncode
        with self.lock:
            job.returncode = rc
            if rc == 0:
                job.state = "done"
            elif (job.cancelled or job.stopping) and rc in STOPPED:
                job.state = "cancelled" if job.cancelled else "interrupted"
            else:
                job.state = "failed"
            job.message = lines[-1] if lines else ""
            if job.run_dir.is_dir():
                append_event(job.run_dir / LIVE_FILE, {
                    "type": "end", "state": job.state, "returncode": rc, "message": job.message,
                    "resume": self.resume_command(job.id) if job.state in RESUMABLE else None, "time": time.time()})
            nxt = job.then
            if nxt is not None and nxt.state == "queued":
                if job.state == "done":
                    self.launch(nxt)
                else:
                    nxt.state, nxt.message = "cancelled", f"not started: {job.id} ended {job.state}"

    # ------------------------------------------------------------ cancelling
    def cancel(self, run_id: str) -> Job | None:
        """SIGTERM to the run's process (it stops at the next step, keeping its completed epochs); a queued
        second run of a pair is cancelled with it. None when this server is not training `run_id`."""
        with self.lock:
            job = self.jobs.get(run_id)
            if job is None or job.state not in ACTIVE:
                return None
            job.cancelled = True
            if job.proc is not None:
                job.proc.send_signal(signal.SIGTERM)
            else:
                job.state, job.message = "cancelled", "cancelled before it started"
            return job

    def shutdown(self, timeout: float = 60.0) -> None:
        """The server is stopping: its run stops at the next step (SIGTERM; its completed epochs are kept) and is
        recorded as interrupted, with its resume command; a queued second run is not started."""
        with self.lock:
            job = self.active()
            if job is None:
                return
            job.stopping = True
            if job.then is not None:
                job.then.state = "cancelled"
            if job.proc is not None:
                job.proc.send_signal(signal.SIGTERM)
        if job.waiter is not None:
            job.waiter.join(timeout)

    # ------------------------------------------------------------ state
    def resume_command(self, run_id: str) -> str:
        return f"mnistlab train --resume {shlex.quote(str(Path(self.shown_root) / run_id))}"

    def status(self, run_id: str, run_dir: Path) -> dict[str, Any]:
        """The state of a run under the root: this server's record while its process lives, else its files."""
        with self.lock:
            job = self.jobs.get(run_id)
            record = None if job is None else (job.state, job.message, job.pair)
        seen = file_state(run_dir, ask_lock=record is None) if run_dir.is_dir() else {
            "state": "queued", "end": None, "step": None, "metrics": None, "planned_epochs": None, "started": False}
        state = seen["state"]
        message, pair = "", []
        if record is not None:
            state, message, pair = record
            if state == "queued" and seen["started"]:
                state = "running"
        elif seen["end"] is not None:
            message = seen["end"].get("message") or ""
        out = {"id": run_id, "run_dir": str(Path(self.shown_root) / run_id), "state": state,
               "planned_epochs": seen["planned_epochs"], "metrics": seen["metrics"], "step": seen["step"],
               "message": message, "pair": pair,
               "resume": self.resume_command(run_id) if state in RESUMABLE else None,
               "links": links(run_id, (run_dir / "model.safetensors").is_file())}
        return out

    def live(self, run_id: str) -> bool:
        """Whether `run_id` may still write events (this server trains it, or another process holds it)."""
        with self.lock:
            job = self.jobs.get(run_id)
            if job is not None:
                return job.state in ACTIVE
        return held(self.root / run_id)


def links(run_id: str, has_model: bool) -> dict[str, str]:
    """Where a run is seen in the explorer: its page, its explanations and (with a model) its draw page."""
    from urllib.parse import quote

    q = quote(run_id, safe="")
    out = {"explorer": f"/run?id={q}", "explanations": f"/run?id={q}#mistakes"}
    if has_model:
        out["draw"] = f"/draw?run={q}"
    return out
