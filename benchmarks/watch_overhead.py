"""What watching a run costs: the same run trained with the /train page open and without it, alternating.

    python benchmarks/watch_overhead.py [--preset notebook] [--epochs 2] [--subset 20000] [--pairs 5]

"watched": `mnistlab serve --runs TMP` starts the run through `POST /api/train` (so `mnistlab train --live` in
its own process, the observer writing live.jsonl) while a client reads `GET /api/train/{id}/events` as the page
does; "plain": `mnistlab train` with the same settings and seed, no observer, no server. The pairs alternate
(plain first, then watched, then watched first...) so a drift of the machine falls on both. Each run's
training time is the sum of its epochs' `seconds` (metrics.jsonl: the step loop, snapshots included) and its
wall time (the process, data loading and evaluation included). Prints the medians and the overhead
(watched / plain - 1); with --out, writes them with the machine as JSON. The target is at most 5%. Run it with
nothing else on the machine; BENCHMARKS.md records the figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from mnistlab.files.runs import read_metrics
from mnistlab.serve.loadtest import running_server


def settings(args: argparse.Namespace) -> dict:
    return {"preset": args.preset, "epochs": args.epochs, "subset": args.subset, "seed": 0,
            "test_subset": args.test_subset}


def plain(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    s = settings(args)
    cmd = [sys.executable, "-m", "mnistlab", "train", "--preset", s["preset"], "--epochs", str(s["epochs"]),
           "--subset", str(s["subset"]), "--seed", "0", "--test-subset", str(s["test_subset"]), "--out", str(out),
           "--quiet"]  # TensorBoard on, as in the server's runs
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return train_seconds(out), time.perf_counter() - t0


def watched(args: argparse.Namespace, url: str, runs: Path) -> tuple[float, float]:
    """One run through the API with the event stream read to its end, as the open page reads it."""
    t0 = time.perf_counter()
    rid = httpx.post(f"{url}/api/train", json=settings(args), timeout=30).raise_for_status().json()["id"]
    done = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{url}/api/train/{rid}/events", timeout=None) as s:
            for line in s.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:]).get("type") == "end":
                    break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait()
    wall = time.perf_counter() - t0
    state = httpx.get(f"{url}/api/train/{rid}").json()
    if state["state"] != "done":
        raise SystemExit(f"the watched run ended {state['state']}: {state['message']}")
    return train_seconds(runs / rid), wall


def train_seconds(run_dir: Path) -> float:
    return sum(r["seconds"] for r in read_metrics(run_dir))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="notebook")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=20000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="write the result here as JSON")
    args = p.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "watched": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        with running_server(runs=runs, data_dir=args.data_dir) as url:
            for i in range(args.pairs):
                order = ("plain", "watched") if i % 2 == 0 else ("watched", "plain")
                for mode in order:
                    r = plain(args, Path(tmp) / f"plain-{i}") if mode == "plain" else watched(args, url, runs)
                    results[mode].append(r)
                    print(f"pair {i + 1} {mode:8s} train {r[0]:7.2f} s  wall {r[1]:7.2f} s", flush=True)
    med = {m: (statistics.median(t for t, _ in rs), statistics.median(w for _, w in rs)) for m, rs in results.items()}
    overhead = {"train": med["watched"][0] / med["plain"][0] - 1, "wall": med["watched"][1] / med["plain"][1] - 1}
    print(f"median train seconds: plain {med['plain'][0]:.2f}, watched {med['watched'][0]:.2f} "
          f"({overhead['train']:+.1%}); wall: plain {med['plain'][1]:.2f}, watched {med['watched'][1]:.2f} "
          f"({overhead['wall']:+.1%}); target: at most +5%")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "settings": settings(args), "pairs": args.pairs, "runs": results, "median": med, "overhead": overhead,
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
