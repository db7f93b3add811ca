"""A bounded load test of `mnistlab serve` on loopback: `clients` concurrent clients for `seconds` seconds.

The server is the real `mnistlab serve` in a subprocess; each client (an asyncio task with its own keep-alive
connection) posts what the page posts, alternating a 280x280 PNG of a test digit (multipart) and a 28x28
JSON pixel grid, back to back. Latency is measured per request on the client side.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from mnistlab.data import load_split
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.files.runs import cpu_model, write_json
from mnistlab.inference.predict import model_file

PAYLOADS = 32  # distinct test digits the clients cycle through


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise MnistlabError(f"mnistlab serve exited with code {proc.returncode}: {tail[0]}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise MnistlabError(f"mnistlab serve did not answer on {url} within {timeout:.0f} s")


@contextlib.contextmanager
def running_server(model: str | Path | None = None, *, data_dir: str | Path | None = None, port: int | None = None,
                   threads: int = 1, timeout: float = 90.0, runs: str | Path | None = None) -> Iterator[str]:
    """Run `mnistlab serve` on 127.0.0.1 in a subprocess (`runs`: with the runs explorer over that folder);
    yields its base URL and stops it afterwards."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "mnistlab", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(threads)]
    if model is not None:
        cmd += ["--model", str(model)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    if runs is not None:
        cmd += ["--runs", str(runs)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc, log, timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def payloads(n: int = PAYLOADS, data_dir: str | Path | None = None) -> list[tuple[str, Any]]:
    """What the page sends: ("png", bytes of a 280x280 canvas-like PNG) and ("pixels", 28x28 list) in turn."""
    images, _ = load_split("mnist", "test", data_dir)
    out: list[tuple[str, Any]] = []
    for i, img in enumerate(images[:n].numpy()):
        if i % 2:
            out.append(("pixels", np.round(img / 255.0, 4).tolist()))
        else:
            buf = io.BytesIO()
            Image.fromarray(img).resize((280, 280), Image.BILINEAR).save(buf, format="PNG")
            out.append(("png", buf.getvalue()))
    return out


async def _client(url: str, work: list[tuple[str, Any]], start: int, step: int, deadline: float,
                  latencies: list[float], errors: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        i = start
        while time.perf_counter() < deadline:
            kind, body = work[i % len(work)]
            i += step
            t0 = time.perf_counter()
            try:
                if kind == "png":
                    r = await client.post("/api/predict", files={"file": ("digit.png", body, "image/png")})
                else:
                    r = await client.post("/api/predict", json={"pixels": body})
                ok = r.status_code == 200 and len(r.json()["probabilities"]) == 10
                reason = f"HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError, KeyError) as e:
                ok, reason = False, type(e).__name__
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000.0)
            else:
                errors.append(reason)


async def _load(url: str, work: list[tuple[str, Any]], clients: int, seconds: float):
    latencies: list[float] = []
    errors: list[str] = []
    await _client(url, work, 0, 1, time.perf_counter() + 0.5, [], errors)  # warm-up, errors still count
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(_client(url, work, k, clients, deadline, latencies, errors) for k in range(clients)))
    return latencies, errors, time.perf_counter() - t0


def bench_serve(model: Any = None, out_dir: str | Path | None = None, clients: int = 8,
                seconds: float = 15) -> dict[str, Any]:
    """Load-test `mnistlab serve` on loopback; returns p50_ms, p99_ms, requests_per_s, errors, clients, seconds.

    `model` is a model file, a run directory, a LoadedModel (its `.path`) or None (the latest run).
    With `out_dir`, the result is also written to `out_dir/serve.json`.
    """
    if clients < 1 or not seconds > 0:
        raise ConfigError(f"need at least 1 client and a positive duration, got {clients} clients, {seconds} s")
    path = getattr(model, "path", model)
    path = model_file(path)
    work = payloads()
    with running_server(path) as url:
        latencies, errors, elapsed = asyncio.run(_load(url, work, clients, seconds))
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    result = {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies) + len(errors),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "model": str(path),
        "cpu": cpu_model(),
        "threads_per_request": 1,
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "serve.json", result)
    return result
