"""Watch it learn: start a run from the browser and follow it live (`mnistlab serve --runs DIR`).

    GET  /train                        the page (static/train.html, train.js)
    POST /api/train                    {"preset", "optimizer", "lr", "batch_size", "epochs", "seed", "subset",
                                        "double_softmax"} (+ optional "test_subset", "compare") -> {"id", "run_dir"}
    GET  /api/train/{id}               the state and the last metrics
    GET  /api/train/{id}/events        server-sent events: the run's live.jsonl, one event per line, id = line
                                       number (Last-Event-ID resumes), then an "end" event
    POST /api/train/{id}/cancel        SIGTERM to the run's process: it stops at the next step, resumable

Every field is checked here, with a 422 naming it; a start while a run trains is 409 naming that run. The run
itself is `mnistlab train --live` in its own process (serve/train_jobs.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, StreamingResponse

from mnistlab.errors import ConfigError
from mnistlab.experiments.compare import OPTIMIZER_DEFAULTS
from mnistlab.presets import PRESETS, resolve
from mnistlab.serve.run_reader import NotFound, RunsRoot
from mnistlab.serve.train_jobs import Busy, Trainer, tail
from mnistlab.training.live import LIVE_FILE

STATIC = Path(__file__).with_name("static")
# The form's optimizers: name -> (the --optimizer class, its --opt momentum)
OPTIMIZERS = {"adam": ("adam", None), "sgd": ("sgd", 0.0),
              "sgd-momentum": ("sgd", OPTIMIZER_DEFAULTS["SGD"]["momentum"])}
BOUNDS = {"epochs": (1, 20), "batch_size": (8, 2048), "subset": (100, 60000), "test_subset": (100, 10000),
          "seed": (0, 2**31 - 1)}
LR_BOUNDS = (1e-6, 10.0)
FIELDS = ("preset", "optimizer", "lr", "batch_size", "epochs", "seed", "subset", "double_softmax", "test_subset",
          "compare")
POLL = 0.25  # seconds between looks at a live.jsonl that has nothing new
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies drop idle connections)


def refuse(name: str, why: str) -> HTTPException:
    return HTTPException(422, f"{name}: {why}")


def _int(body: dict[str, Any], name: str, optional: bool = False) -> int | None:
    value = body.get(name)
    if value is None and optional:
        return None
    lo, hi = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(name, f"expected a whole number from {lo} to {hi}{' or null' if optional else ''}, "
                           f"got {json.dumps(value)}")
    if not lo <= value <= hi:
        raise refuse(name, f"must be from {lo} to {hi}, got {value}")
    return value


def check_request(body: Any) -> tuple[list[str], dict[str, Any], bool]:
    """The `mnistlab train` flags of a start request, its Config overrides, and whether it asks for the SGD
    comparison. Raises a 422 naming the first bad field."""
    if not isinstance(body, dict):
        raise HTTPException(422, "body: expected a JSON object of the form's fields")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise refuse(unknown[0], f"unknown field (the fields are {', '.join(FIELDS)})")
    preset = body.get("preset", "notebook")
    if preset not in PRESETS:
        raise refuse("preset", f"expected one of {', '.join(PRESETS)}, got {json.dumps(preset)}")
    optimizer = body.get("optimizer", "adam")
    if optimizer not in OPTIMIZERS:
        raise refuse("optimizer", f"expected one of {', '.join(OPTIMIZERS)}, got {json.dumps(optimizer)}")
    flags, over = ["--preset", preset], {}
    lr = body.get("lr")
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr):
            raise refuse("lr", f"expected a number, got {json.dumps(lr)}")
        if not LR_BOUNDS[0] <= lr <= LR_BOUNDS[1]:
            raise refuse("lr", f"must be from {LR_BOUNDS[0]:g} to {LR_BOUNDS[1]:g}, got {lr:g}")
        over["lr"] = float(lr)
    for name in ("batch_size", "epochs", "seed"):
        if name in body:
            over[name] = _int(body, name)
    for name in ("subset", "test_subset"):
        value = _int(body, name, optional=True)
        if value is not None:
            over[name] = value
    for name in ("double_softmax", "compare"):
        if not isinstance(body.get(name, False), bool):
            raise refuse(name, f"expected true or false, got {json.dumps(body[name])}")
    if body.get("double_softmax"):
        over["double_softmax"] = True
    cls, momentum = OPTIMIZERS[optimizer]
    over["optimizer"] = cls
    if momentum is not None:
        over["opt_args"] = {"momentum": momentum}
    if body.get("compare") and cls == "sgd":
        raise refuse("compare", "compares the run with SGD; choose another optimizer for the first run")
    try:
        resolve(preset, **over)
    except ConfigError as e:
        raise HTTPException(422, str(e)) from None
    for key, value in over.items():
        if key == "opt_args":
            flags += [a for k, v in value.items() for a in ("--opt", f"{k}={v}")]
        elif value is True:
            flags.append("--" + key.replace("_", "-"))
        else:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags, over, bool(body.get("compare"))


def sgd_flags(flags: list[str]) -> list[str]:
    """The flags of the comparison's SGD run: the same with SGD with momentum at compare's default rate."""
    out, skip = [], False
    for a in flags:
        if skip:
            skip = False
            continue
        if a in ("--optimizer", "--lr", "--opt"):
            skip = True
            continue
        out.append(a)
    sgd = OPTIMIZER_DEFAULTS["SGD"]
    return out + ["--optimizer", "sgd", "--lr", str(sgd["lr"]), "--opt", f"momentum={sgd['momentum']}"]


def same_site(request: Request) -> None:
    """Refuse (403) a request another site's page makes the browser send: training spends the machine, and a
    form or fetch from any page can reach a server on loopback. Browsers name the page's origin in `Origin`."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"requests from another site ({origin}) may not start or cancel runs")


def sse(n: int | None, event: dict[str, Any]) -> bytes:
    head = f"id: {n}\n" if n is not None else ""
    return f"{head}data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def train_router(trainer: Trainer) -> APIRouter:
    """The page and the API (mount with `app.include_router`)."""
    router = APIRouter()
    runs = RunsRoot(trainer.root)

    def run_dir(run_id: str) -> Path:
        """The folder of a run started here, or of a run under the root that has a live.jsonl; else 404."""
        with trainer.lock:
            job = trainer.jobs.get(run_id)
        if job is not None:
            return job.run_dir
        try:
            path = runs.resolve(run_id)
        except NotFound:
            path = None
        if path is None or runs.file(path, LIVE_FILE) is None:
            raise HTTPException(404, f"no live run {run_id!r} under the served directory")
        return path

    @router.get("/train", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "train.html")

    @router.post("/api/train", tags=["train"], status_code=201)
    async def start(request: Request) -> dict[str, Any]:
        """Start a run (with "compare": true, a pair: this one, then the same with SGD with momentum, from the
        same seed: the same initial weights and batch order). 409 while a run trains."""
        same_site(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send the fields as JSON (content-type: application/json)")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise HTTPException(422, "body: not valid JSON") from None
        flags, over, compare = check_request(body)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if compare:
            base = trainer.new_dir(f"compare-{stamp}").name
            plan = [(f"{base}/{body.get('optimizer', 'adam')}", flags), (f"{base}/sgd-momentum", sgd_flags(flags))]
        else:
            plan = [(trainer.new_dir(f"watch-{body.get('preset', 'notebook')}-{stamp}").name, flags)]
        try:
            jobs = trainer.start(plan)
        except Busy as e:
            raise HTTPException(409, f"a run is training: {e}; cancel it or wait for it to end") from None
        first = jobs[0]
        answer = {"id": first.id, "run_dir": str(Path(trainer.shown_root) / first.id)}
        if len(jobs) > 1:
            answer["then"] = {"id": jobs[1].id, "run_dir": str(Path(trainer.shown_root) / jobs[1].id)}
        return answer

    @router.get("/api/train", tags=["train"])
    def current() -> dict[str, Any]:
        """The run this server trains now, if any: {"id": ...} or {"id": null}."""
        with trainer.lock:
            job = trainer.active()
            return {"id": job.id if job else None, "pair": job.pair if job else []}

    @router.get("/api/train/{run_id:path}/events", tags=["train"])
    async def events(run_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: every line of the run's live.jsonl after Last-Event-ID (a header, or the
        `last_id` query for a first connection), then an "end" event once the run has ended."""
        path = run_dir(run_id)
        raw = request.headers.get("last-event-id") or request.query_params.get("last_id") or "0"
        try:
            last = max(0, int(raw))
        except ValueError:
            raise HTTPException(422, f"Last-Event-ID: expected a line number, got {raw!r}") from None
        return StreamingResponse(stream(run_id, path, last, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream(run_id: str, path: Path, last: int, request: Request) -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        offset, line = 0, 0  # each byte of the file is read once; the lines up to `last` are not sent
        quiet_since = time.monotonic()
        while True:
            alive = trainer.live(run_id)  # asked before reading, so no line written before the end is missed
            new, offset, line = await asyncio.to_thread(tail, path / LIVE_FILE, offset, line)
            for n, event in new:
                if n <= last:
                    continue
                yield sse(n, event)
                if event.get("type") == "end":
                    return
            if new:
                quiet_since = time.monotonic()
            elif not alive:
                status = trainer.status(run_id, path)
                yield sse(None, {"type": "end", "state": status["state"], "message": status["message"],
                                 "resume": status["resume"]})
                return
            elif time.monotonic() - quiet_since > KEEPALIVE:
                quiet_since = time.monotonic()
                yield b": waiting\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL)

    @router.get("/api/train/{run_id:path}", tags=["train"])
    def state(run_id: str) -> dict[str, Any]:
        """The run's state (queued, running, done, cancelled, failed, interrupted), its last epoch's metrics
        row and last step event, the resume command when it can be continued, and where to see it."""
        return trainer.status(run_id, run_dir(run_id))

    @router.post("/api/train/{run_id:path}/cancel", tags=["train"], status_code=202)
    def cancel(run_id: str, request: Request) -> dict[str, Any]:
        """Stop the run at its next step (SIGTERM): its completed epochs are kept, `mnistlab train --resume`
        continues it. 409 when it is not training."""
        same_site(request)
        path = run_dir(run_id)
        if trainer.cancel(run_id) is None:
            raise HTTPException(409, f"run {run_id!r} is not training ({trainer.status(run_id, path)['state']})")
        return {"id": run_id, "state": "cancelling"}

    return router
