"""Latency of POST /api/explain against the real `mnistlab serve` on loopback: one client, one image per request,
what the draw page sends with "why?" on (a 280x280 canvas PNG, multipart), back to back.

    python benchmarks/explain_latency.py --model runs/notebook-... [--method ig] [--requests 300] [--threads 1]

Prints p50/p95/p99 and writes them (with the machine) to --out as JSON when given. Run it with nothing else on
the machine; BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time

import httpx
import numpy as np
import torch
from PIL import Image

from mnistlab.data import load_split
from mnistlab.files.runs import cpu_model
from mnistlab.inference.explain import IG_STEPS, METHODS
from mnistlab.inference.predict import model_file
from mnistlab.serve.loadtest import running_server

DIGITS = 32  # distinct test digits cycled through


def canvas_pngs(n: int, data_dir: str | None) -> list[bytes]:
    images, _ = load_split("mnist", "test", data_dir)
    out = []
    for img in images[:n].numpy():
        buf = io.BytesIO()
        Image.fromarray(img).resize((280, 280), Image.BILINEAR).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run directory or model file (the notebook model)")
    p.add_argument("--method", default="ig", choices=list(METHODS))
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="the server's --threads (torch threads per request)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="write the result here as JSON")
    args = p.parse_args()
    pngs = canvas_pngs(DIGITS, args.data_dir)
    path = model_file(args.model)
    with running_server(path, data_dir=args.data_dir, threads=args.threads) as url, \
            httpx.Client(base_url=url, timeout=30.0) as client:
        latencies, deltas = [], []
        for i in range(args.warmup + args.requests):
            t0 = time.perf_counter()
            r = client.post(f"/api/explain?method={args.method}",
                            files={"file": ("drawing.png", pngs[i % len(pngs)], "image/png")})
            ms = (time.perf_counter() - t0) * 1000.0
            r.raise_for_status()
            if i >= args.warmup:
                latencies.append(ms)
                if r.json()["convergence_delta"] is not None:
                    deltas.append(abs(r.json()["convergence_delta"]))
    lat = np.asarray(latencies)
    result = {
        "method": args.method, "n_steps": IG_STEPS if args.method == "ig" else None, "requests": len(lat),
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1),
        "max_abs_delta": round(max(deltas), 4) if deltas else None, "server_threads": args.threads,
        "model": str(path), "cpu": cpu_model(), "torch": torch.__version__, "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
