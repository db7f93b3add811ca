"""The bench harness (`mnistlab bench`): the lab notebook's pipeline against mnistlab, side by side on one machine.

Contenders, each in its own spawned process (so peak RSS is per contender), driven epoch by epoch in
turn by this process (so load drift on a shared machine hits both alike):

- **reference**: the lab notebook's own pipeline re-created without torchvision (`bench.reference`).
- **mnistlab**: the `notebook` preset through `train()`, the path `mnistlab train` takes (an engine callback
  hands each epoch's start to the parent).

After each of its epochs, the mnistlab contender's process measures the floor of its step (`bench.floor`:
the isolated time of each kernel one step needs, at the step's shapes and precision); the step's ratio to it
is taken epoch by epoch, each epoch against the floor measured right after it, so the host's drift over a run
moves both alike.

Then the `fast` preset's time to accuracy over several seeds (training wall from the engine, excluding
start-up, data loading and evaluation). Results: `bench.json` and `bench.md` in the output directory.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab.bench.floor import step_floor
from mnistlab.bench.reference import ReferencePipeline
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.files.checkpoints import model_metadata, save_safetensors
from mnistlab.files.runs import atomic_write, cpu_model, write_json
from mnistlab.models import unwrap
from mnistlab.presets import Config, resolve
from mnistlab.training.device import (
    amp_dtype,
    amp_name,
    cpu_supports_bf16,
    flush_denormals_everywhere,
    pick_device,
)
from mnistlab.training.engine import Callback
from mnistlab.training.optim import make_optimizer
from mnistlab.training.process import without_kept_memory
from mnistlab.training.run import train

CONTENDERS = ("reference", "mnistlab")
WARMUP_IMAGES = 4096  # the `fast` child's untimed first training (16 steps of 256)


@dataclass
class BenchOptions:
    """What to measure: `subset`/`test_subset` limit the images (None = all) for --quick runs."""

    epochs: int = 1
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    subset: int | None = None
    test_subset: int | None = None
    fast_subset: int | None = None
    data_dir: str | None = None
    device: str = "auto"
    serve_seconds: float = 15.0
    model_out: str | None = None  # where the `fast` run of the first seed saves its model (for --serve)
    floor_reps: int = 200  # timed calls of each kernel of the floor


# ---------------------------------------------------------------- the mnistlab contender
class _Driven(Callback):
    """The `notebook` preset through `train()`, the path `mnistlab train` takes, driven by the parent: before
    each epoch it waits for the parent's "epoch" request, answering "floor" requests meanwhile (the floor of
    the step is measured between epochs, on copies: the model is not changed); after each epoch it sends the
    epoch's training seconds."""

    def __init__(self, cfg: Config, conn, floor_reps: int) -> None:
        self.cfg, self.conn, self.floor_reps = cfg, conn, floor_reps
        self.device = pick_device(cfg.device)
        self.amp = amp_dtype(cfg.amp, self.device)  # what train() chooses for this Config here

    def on_train_start(self, model, optimizer, train) -> None:
        self.model, self.train = unwrap(model), train
        self.conn.send(("ready", train.num_samples))

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.serve(until="epoch")

    def on_epoch_end(self, metrics) -> None:
        self.conn.send(("epoch", metrics["seconds"]))

    def serve(self, until: str) -> None:
        """Answer "floor" requests until the parent asks for `until`."""
        while (request := self.conn.recv()) != until:
            self.conn.send((request, self.floor()))

    def floor(self) -> dict[str, Any]:
        """The floor of this contender's step and its steps per epoch."""
        x, _ = self.train.batch(self.train.shard(1)[0][0])  # one full batch of the step's size
        out = step_floor(self.model, lambda params: make_optimizer(self.cfg, params, self.device), x, self.amp,
                         reps=self.floor_reps)
        return out | {"amp": str(self.amp or torch.float32).removeprefix("torch."), "batch_size": len(x),
                      "steps_per_epoch": len(self.train), "threads": torch.get_num_threads()}


def _mnistlab(opts: BenchOptions, conn) -> dict[str, Any]:
    """The mnistlab contender's process: train() driven epoch by epoch; its fp32 test accuracy."""
    cfg = resolve("notebook", subset=opts.subset, test_subset=opts.test_subset, device=opts.device,
                  epochs=opts.epochs)
    driven = _Driven(cfg, conn, opts.floor_reps)
    result = train(config=cfg, data_dir=opts.data_dir, quiet=True, write_run=False, callbacks=[driven])
    driven.serve(until="finish")  # the floor after the last epoch
    return {"test_acc": result.test_acc}  # evaluated in fp32 after the last epoch, like every model figure


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size of this process (or its largest finished child) in MiB."""
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def _contender(name: str, opts: BenchOptions, conn) -> None:
    """Child process: set up `name`, then answer "epoch" / "finish" requests over `conn`."""
    try:
        if name == "mnistlab":
            flush_denormals_everywhere()  # as `mnistlab train` trains; the reference as the lab's code: neither
            stats = _mnistlab(opts, conn)
        else:
            c = ReferencePipeline(pick_device(opts.device), opts.data_dir, opts.subset, opts.test_subset)
            conn.send(("ready", c.n))
            while (request := conn.recv()) != "finish":
                conn.send((request, c.epoch()))
            stats = {"test_acc": c.test_acc()}
        stats["peak_rss_mb"] = round(peak_rss_mb(), 1)
        if name == "reference":
            stats["worker_peak_rss_mb"] = round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1)
        conn.send(("done", stats))
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{name}: {type(e).__name__}: {e}"))


def _fast_seeds(opts: BenchOptions, conn) -> None:
    """Child process: train the `fast` preset once per seed; report accuracies and training seconds."""
    try:
        flush_denormals_everywhere()

        def train_seed(seed: int, subset: int | None):
            return train("fast", seed=seed, subset=subset, test_subset=opts.test_subset, device=opts.device,
                         data_dir=opts.data_dir, quiet=True, write_run=False)

        # One untimed warm-up on WARMUP_IMAGES: kernel selection (oneDNN primitives, cuDNN), the allocator's
        # first growth and CUDA context start-up are per-process costs, not per-training ones.
        warm_images = min(opts.fast_subset or WARMUP_IMAGES, WARMUP_IMAGES)
        warm = train_seed(opts.seeds[0], warm_images)
        out = []
        for seed in opts.seeds:
            r = train_seed(seed, opts.fast_subset)
            out.append((r.test_acc, sum(h["seconds"] for h in r.history)))
            if opts.model_out and seed == opts.seeds[0]:
                save_safetensors(r.model, opts.model_out, model_metadata(r.config, {"test_acc": r.test_acc}))
        warmup = sum(h["seconds"] for h in warm.history)
        conn.send(("done", {"results": out, "warmup_seconds": warmup, "warmup_images": warm_images,
                            "peak_rss_mb": round(peak_rss_mb(), 1), "config": r.config.to_dict()}))
    except Exception as e:  # noqa: BLE001
        conn.send(("error", f"fast: {type(e).__name__}: {e}"))


def _recv(conn, proc) -> tuple[str, Any]:
    try:
        kind, value = conn.recv()
    except EOFError:
        proc.join()
        raise MnistlabError(f"benchmark process exited unexpectedly (exit code {proc.exitcode})") from None
    if kind == "error":
        raise MnistlabError(value)
    return kind, value


def _spawn(target, *args, plain: bool = False):
    """Start `target(*args, conn)` in a fresh process; `plain`: with the environment a plain `python` would
    have, without the allocator setting the `mnistlab` command starts with (the lab notebook's pipeline)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=False)
    environ = dict(os.environ)
    if plain:  # a spawned process inherits this one's environment at start()
        os.environ.clear()
        os.environ.update(without_kept_memory(environ))
    try:
        proc.start()
    finally:
        os.environ.clear()
        os.environ.update(environ)
    child.close()
    return proc, parent


def race_contenders(opts: BenchOptions, log=print) -> dict[str, Any]:
    """reference vs mnistlab, epochs interleaved; per contender seconds_per_epoch, images_per_s, ..."""
    procs = {name: _spawn(_contender, name, opts, plain=name == "reference") for name in CONTENDERS}
    try:
        n = {name: _recv(conn, proc)[1] for name, (proc, conn) in procs.items()}
        seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        floors: list[dict[str, Any]] = []
        for e in range(1, opts.epochs + 1):
            for name, (proc, conn) in procs.items():
                conn.send("epoch")
                seconds[name].append(_recv(conn, proc)[1])
                log(f"epoch {e}/{opts.epochs}  {name:9s} {seconds[name][-1]:7.2f} s")
            proc, conn = procs["mnistlab"]
            conn.send("floor")
            floors.append(_recv(conn, proc)[1])
        out: dict[str, Any] = {}
        for name, (proc, conn) in procs.items():
            conn.send("finish")
            stats = _recv(conn, proc)[1]
            spe = sum(seconds[name]) / len(seconds[name])
            out[name] = {"epochs": opts.epochs, "train_images": n[name], "epoch_seconds": seconds[name],
                         "seconds_per_epoch": spe, "images_per_s": n[name] / spe, **stats}
    finally:
        for proc, conn in procs.values():
            conn.close()
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    out["speedup"] = out["reference"]["seconds_per_epoch"] / out["mnistlab"]["seconds_per_epoch"]
    out["floor"] = floor_summary(floors, seconds["mnistlab"])
    return out


def floor_summary(floors: list[dict[str, Any]], epoch_seconds: list[float]) -> dict[str, Any]:
    """One floor from those measured after each epoch: each kernel's median over them and their sum
    (`floor_ms`), the mean step (`step_ms`), and per epoch that epoch's step against the floor measured right
    after it (`epochs`); `ratio` is the median of those ratios."""
    steps = floors[0]["steps_per_epoch"]
    kernels = {name: statistics.median(f["kernels"][name] for f in floors) for name in floors[0]["kernels"]}
    per_epoch = [{"step_ms": 1e3 * s / steps, "floor_ms": f["floor_ms"], "ratio": 1e3 * s / steps / f["floor_ms"]}
                 for s, f in zip(epoch_seconds, floors, strict=True)]
    return floors[0] | {"kernels": kernels, "floor_ms": sum(kernels.values()),
                        "step_ms": 1e3 * statistics.fmean(epoch_seconds) / steps,
                        "ratio": statistics.median(e["ratio"] for e in per_epoch), "epochs": per_epoch}


def time_fast_preset(opts: BenchOptions) -> dict[str, Any]:
    """The `fast` preset over `opts.seeds`: test accuracies, training seconds, mean, min, share >= 99%."""
    proc, conn = _spawn(_fast_seeds, opts)
    try:
        res = _recv(conn, proc)[1]
    finally:
        conn.close()
        proc.join(timeout=60)
    accs = [a for a, _ in res["results"]]
    secs = [s for _, s in res["results"]]
    return {
        "seeds": list(opts.seeds), "test_accs": accs, "train_seconds": secs,
        "mean_test_acc": sum(accs) / len(accs), "min_test_acc": min(accs),
        "frac_at_least_99": sum(a >= 99.0 for a in accs) / len(accs),
        "mean_train_seconds": sum(secs) / len(secs), "warmup_seconds": res["warmup_seconds"],
        "warmup_images": res["warmup_images"], "peak_rss_mb": res["peak_rss_mb"],
        "subset": opts.fast_subset, "config": res["config"],
    }


def machine(device: str = "auto") -> dict[str, Any]:
    """CPU model, cores, GPU, torch version, native bf16, load average, and `amp_dtype`: the precision each
    contender trains in ("bf16" | "fp16" | None for fp32; every test accuracy is evaluated in fp32)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    dev = pick_device(device)
    precision = {"reference": None,  # the notebook's loop has no autocast
                 **{name: amp_name(amp_dtype(resolve(preset).amp, dev))
                    for name, preset in (("mnistlab", "notebook"), ("fast", "fast"))}}
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "cpu_native_bf16": cpu_supports_bf16(), "device": device,
            "amp_dtype": precision, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def run_benchmark(opts: BenchOptions, out_dir: str | Path, *, serve: bool = False, log=print) -> dict[str, Any]:
    """The whole benchmark; writes out_dir/bench.json and out_dir/bench.md and returns the results."""
    if opts.epochs < 1 or not opts.seeds:
        raise ConfigError("bench needs at least 1 epoch and 1 seed")
    out_dir = Path(out_dir)
    if serve:  # checked first: a missing extra should not cost a whole benchmark
        try:
            import uvicorn  # noqa: F401  (the served process's)

            from mnistlab.serve.loadtest import bench_serve  # fastapi, and httpx for the clients
        except ImportError as e:
            raise ConfigError(f"--serve needs the 'serve' extra ({e.name} is missing): "
                              "pip install 'mnistlab[serve]'") from None
        out_dir.mkdir(parents=True, exist_ok=True)
        opts = dataclasses.replace(opts, model_out=str(out_dir / "fast.safetensors"))  # serve what it trains
    result: dict[str, Any] = {"machine": machine(opts.device), "options": vars(opts) | {"seeds": list(opts.seeds)}}
    t0 = time.perf_counter()
    result.update(race_contenders(opts, log))
    log(f"speedup {result['speedup']:.2f}x, step {result['floor']['ratio']:.2f}x its floor; "
        f"fast preset, {len(opts.seeds)} seeds ...")
    result["fast"] = time_fast_preset(opts)
    if serve:
        result["serve"] = bench_serve(model=opts.model_out, out_dir=out_dir, clients=8, seconds=opts.serve_seconds)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = time.perf_counter() - t0
    write_json(out_dir / "bench.json", result)
    atomic_write(out_dir / "bench.md", markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    """bench.json as Markdown tables."""
    m = r["machine"]
    trained_in = {k: f"{v} autocast" if v else "fp32" for k, v in m["amp_dtype"].items()}
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch {m['torch']}, "
        f"native bf16 {'yes' if m['cpu_native_bf16'] else 'no'}; load average {m['loadavg'][0]} at start, "
        f"{m.get('loadavg_end', ['?'])[0]} at end.",
        "",
        f"| contender ({r['reference']['epochs']} epoch(s), {r['mnistlab']['train_images']} images) | trained in | "
        "s/epoch | images/s | peak RSS (MiB) | test acc (%) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    names = {"reference": "notebook pipeline (DataLoader, 2 workers)", "mnistlab": "mnistlab `notebook` preset"}
    for key in CONTENDERS:
        c = r[key]
        rss = f"{c['peak_rss_mb']:.0f}"
        if "worker_peak_rss_mb" in c:
            rss += f" (+ workers {c['worker_peak_rss_mb']:.0f} each)"
        lines.append(f"| {names[key]} | {trained_in[key]} | {c['seconds_per_epoch']:.2f} | "
                     f"{c['images_per_s']:.0f} | {rss} | {c['test_acc']:.2f} |")
    lines += ["", f"Speedup: **{r['speedup']:.2f}x**. Test accuracies are evaluated in fp32.", "",
              *floor_markdown(r["floor"])]
    f = r["fast"]
    lines += [
        "",
        "| `fast` preset | seeds | mean test acc (%) | min (%) | seeds >= 99.0% | mean train wall (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {', '.join(f'{a:.2f}' for a in f['test_accs'])} | {len(f['seeds'])} | {f['mean_test_acc']:.2f} | "
        f"{f['min_test_acc']:.2f} | {100 * f['frac_at_least_99']:.0f}% | {f['mean_train_seconds']:.2f} |",
        "", f"`fast` trained in {trained_in['fast']}. Per seed: {', '.join(f'{t:.2f}' for t in f['train_seconds'])} s, "
        "after one untimed warm-up on "
        f"{f['warmup_images']} images ({f['warmup_seconds']:.2f} s).",
    ]
    if "serve" in r:
        s = r["serve"]
        lines += ["", f"Serving ({s.get('clients')} clients, {s.get('seconds')} s): p50 {s.get('p50_ms')} ms, "
                  f"p99 {s.get('p99_ms')} ms, {s.get('requests_per_s')} requests/s, {s.get('errors')} errors."]
    return "\n".join(lines) + "\n"


def floor_markdown(fl: dict[str, Any]) -> list[str]:
    """The floor of the mnistlab step as a table, and the step's ratio to it."""
    lines = [f"Floor of the mnistlab step ({fl['amp']}, batch {fl['batch_size']}, torch threads {fl['threads']}; "
             "each kernel alone, the median of its calls; measured after each epoch, the median over them):", "",
             "| kernel | shapes | ms |", "| --- | --- | ---: |"]
    lines += [f"| {name} | {fl['shapes'][name]} | {ms:.3f} |" for name, ms in fl["kernels"].items()]
    each = ", ".join(f"{e['ratio']:.2f}x" for e in fl["epochs"])
    lines += [f"| **floor** | | **{fl['floor_ms']:.3f}** |", "",
              f"Step: {fl['step_ms']:.3f} ms (the epochs' mean wall time over their {fl['steps_per_epoch']} steps). "
              f"Each epoch's step against the floor measured right after it: {each}; median **{fl['ratio']:.2f}x** "
              f"its floor."]
    return lines


QUICK = dict(epochs=1, seeds=(0, 1), subset=640, test_subset=500, fast_subset=1024, serve_seconds=3.0,
             floor_reps=20)
