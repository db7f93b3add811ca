"""Exercise 3 and Exercise 2 as experiments over `training.train`:

    compare("notebook", ["adam", "sgd"])     every optimizer from the same initial weights and data order
    sweep("notebook", lrs=[5e-4, 1e-3, 2e-3], epochs=[5, 8], jobs=2)   a grid, reusing longer runs

Both write a directory of per-run subdirectories (each a normal run directory with metrics.csv) plus a
side-by-side table (CSV and Markdown/JSON), a figure and a verdict computed from the numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistlab.checkpoints import model_metadata, read_safetensors, save_safetensors
from mnistlab.distributed import usable_cpus
from mnistlab.errors import ConfigError
from mnistlab.presets import Config, optimizer_class, parse_value, resolve, validate
from mnistlab.report.blocks import csv_text, md_table, pct, pts
from mnistlab.runs import atomic_write, new_run_dir, read_json, read_metrics, write_json, write_metrics
from mnistlab.training import build, init_weights, train

# Where the preset's (Adam) learning rate would be wrong for another optimizer: explicit, overridable defaults.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 0.01, "momentum": 0.9},
    "Adadelta": {"lr": 1.0},
    "Adagrad": {"lr": 0.01},
}
DEFAULT_WHY = {
    "SGD": "plain SGD at Adam's lr 1e-3 learns far more slowly (its step is the raw gradient times lr, with no "
           "per-weight scaling and no momentum; on small runs it barely moves)",
    "Adadelta": "Adadelta is designed for lr 1.0 (pytorch/examples uses it)",
    "Adagrad": "Adagrad's accumulated squared gradients shrink its steps quickly",
}
# Settings that do not change what a run computes epoch by epoch.
NEUTRAL_KEYS = {"epochs", "description", "preset", "device", "compile", "cuda_graphs", "channels_last"}


def _jsonable(cfg: Config) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict()))


def same_run(a: Config, b: Config) -> bool:
    """True when `a` and `b` compute the same epochs (same model, data order, optimizer, ...) up to their length."""
    da, db = _jsonable(a), _jsonable(b)
    return all(da.get(k) == db.get(k) for k in set(da) | set(db) if k not in NEUTRAL_KEYS)


def save_state(state: dict[str, torch.Tensor], cfg: Config, path: str | Path) -> Path:
    """Initial weights as safetensors (with the usual model metadata), so runs can prove where they started."""
    model = build(cfg, torch.device("cpu"))
    model.load_state_dict(state)
    return save_safetensors(model, path, model_metadata(cfg, {"role": "initial weights"}))


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# ---------------------------------------------------------------- compare (Exercise 3)
def parse_optimizers(spec: str | Sequence[str]) -> list[tuple[str, str]]:
    """"adam,sgd,plain-sgd=sgd" -> [(label, optimizer class name)], labels unique."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[tuple[str, str]] = []
    for item in items:
        label, _, name = item.partition("=")
        label = label.strip().lower()
        out.append((label, optimizer_class(name.strip() or label).__name__))
    labels = [label for label, _ in out]
    if len(out) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"compare needs at least two distinct optimizer labels, got {', '.join(labels) or 'none'}")
    return out


def parse_scoped_opts(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """`--opt sgd:lr=0.01` items -> {"sgd": {"lr": 0.01}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        scope, colon, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not colon or not eq or not scope.strip() or not key.strip():
            raise ConfigError(f"--opt expects OPTIMIZER:KEY=VALUE for compare, got {item!r}")
        out.setdefault(scope.strip().lower(), {})[key.strip()] = parse_value(value)
    return out


def optimizer_config(base: Config, label: str, name: str, opts: dict[str, Any] | None = None,
                     use_defaults: bool = True) -> tuple[Config, list[str]]:
    """`base` trained with optimizer `name`: the preset's arguments for its own optimizer, else the explicit
    OPTIMIZER_DEFAULTS (said in the notes), then the user's `opts`."""
    notes = []
    if name == base.optimizer:
        args = dict(base.opt_args)
    else:
        args = {"lr": base.lr} if "lr" in base.opt_args else {}
        applied = {k: v for k, v in OPTIMIZER_DEFAULTS.get(name, {}).items() if k not in (opts or {})}
        if use_defaults and applied:
            args.update(applied)
            told = ", ".join(f"{k} {v}" for k, v in applied.items())
            notes.append(f"{label}: {DEFAULT_WHY[name]}, so it uses {told} instead of the preset's lr {base.lr:g} "
                         f"(override with --opt {label}:lr=...; `mnistlab sweep --optimizer {name.lower()} "
                         f"--lr ...` finds a good one)")
    for key, value in (opts or {}).items():
        args[key] = value
    cfg = dataclasses.replace(base, optimizer=name, opt_args=args, model_args=dict(base.model_args),
                              schedule_args=dict(base.schedule_args))
    validate(cfg)
    return cfg, notes


@dataclass
class CompareResult:
    run_dir: Path
    configs: dict[str, Config]
    histories: dict[str, list[dict[str, Any]]]
    table: list[dict[str, Any]]
    verdict: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> list[str]:
        return self.notes + self.verdict["lines"]


def compare(preset: str = "notebook", optimizers: str | Sequence[str] = ("adam", "sgd"),
            opts: dict[str, dict[str, Any]] | None = None, *, out: str | Path | None = None,
            data_dir: str | Path | None = None, quiet: bool = False, use_defaults: bool = True,
            init_state: dict[str, torch.Tensor] | None = None, reuse: dict[str, str | Path] | None = None,
            config: Config | None = None, **overrides: Any) -> CompareResult:
    """Train `preset` once per optimizer from the same initial weights and data order; table, figure, verdict.

    `opts` maps an optimizer label to its arguments ({"sgd": {"lr": 0.05}}). `reuse` maps a label to an
    existing run directory to take its metrics from instead of training, once it is checked to be the same
    run (same settings, same seed; its initial.safetensors, if any, equal to this comparison's start).
    """
    base = config or resolve(preset, **overrides)
    specs = parse_optimizers(optimizers)
    unknown = set(opts or {}) - {label for label, _ in specs}
    if unknown:
        raise ConfigError(f"--opt names {', '.join(sorted(unknown))}, which is not among the optimizers compared")
    run_dir = new_run_dir(f"compare-{base.preset}", out)
    init_state = init_state if init_state is not None else init_weights(base)
    save_state(init_state, base, run_dir / "initial.safetensors")
    configs, histories, notes = {}, {}, []
    for i, (label, name) in enumerate(specs, 1):
        cfg, why = optimizer_config(base, label, name, (opts or {}).get(label), use_defaults)
        configs[label], notes = cfg, notes + why
        if not quiet:
            args = ", ".join(f"{k}={v}" for k, v in cfg.opt_args.items())
            print(f"[compare {i}/{len(specs)}] {label}: {name}({args})", flush=True)
        source = (reuse or {}).get(label)
        if source is not None:
            histories[label] = _reuse_run(Path(source), cfg, init_state, run_dir / label)
            notes.append(f"{label}: metrics reused from {source} (same settings, initial weights and data order)")
        else:
            histories[label] = train(config=cfg, out=run_dir / label, data_dir=data_dir, quiet=quiet,
                                     init_state=init_state).history
    table = side_by_side(histories)
    verdict = compare_verdict(histories)
    result = CompareResult(run_dir, configs, histories, table, verdict, notes)
    _write_compare(result)
    return result


def _reuse_run(source: Path, cfg: Config, init_state: dict[str, torch.Tensor], dest: Path) -> list[dict[str, Any]]:
    src_cfg = Config.from_dict(read_json(source / "config.json"))
    history = read_metrics(source)
    if not same_run(src_cfg, cfg) or len(history) < cfg.epochs:
        raise ConfigError(f"{source}: not the same run as this comparison's {cfg.optimizer} "
                          f"(settings differ or fewer than {cfg.epochs} epochs); cannot reuse it")
    initial = source / "initial.safetensors"
    start = read_safetensors(initial)[0] if initial.exists() else init_weights(src_cfg)
    if not states_equal(start, init_state):
        raise ConfigError(f"{source}: started from other initial weights; cannot reuse it")
    history = history[: cfg.epochs]
    write_json(dest / "config.json", cfg.to_dict())
    write_json(dest / "source.json", {"reused_from": str(source)})
    write_metrics(dest, history)
    return history


def side_by_side(histories: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per epoch: each label's train/test accuracy and loss."""
    rows = []
    for e in range(max(len(h) for h in histories.values())):
        row: dict[str, Any] = {"epoch": e + 1}
        for label, h in histories.items():
            for key in ("train_acc", "test_acc", "train_loss", "test_loss"):
                row[f"{label}_{key}"] = h[e][key] if e < len(h) else None
        rows.append(row)
    return rows


def _epochs_to_reach(history: list[dict[str, Any]], target: float) -> int | None:
    return next((int(r["epoch"]) for r in history if r["test_acc"] >= target), None)


def compare_verdict(histories: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Against the first label: who is ahead each epoch, the final gap, epochs each needs for the other's final."""
    labels = list(histories)
    ref = labels[0]
    lines, pairs = [], []
    for other in labels[1:]:
        a, b = histories[ref], histories[other]
        n = min(len(a), len(b))
        ahead = [ref if a[e]["test_acc"] >= b[e]["test_acc"] else other for e in range(n)]
        gap = a[n - 1]["test_acc"] - b[n - 1]["test_acc"]
        reach = {ref: _epochs_to_reach(a, b[n - 1]["test_acc"]), other: _epochs_to_reach(b, a[n - 1]["test_acc"])}
        pairs.append({"reference": ref, "other": other, "ahead": ahead, "final_gap": gap, "epochs_to_reach": reach})
        leads = {lab: ahead.count(lab) for lab in (ref, other)}
        lines.append(f"{ref} vs {other}: {ref} ahead on test accuracy in {leads[ref]} of {n} epochs, {other} in "
                     f"{leads[other]}; after epoch {n}: {pct(a[n - 1]['test_acc'])} vs {pct(b[n - 1]['test_acc'])} "
                     f"({ref} {pts(gap)}).")
        for x, y in ((ref, other), (other, ref)):
            target = histories[y][n - 1]["test_acc"]
            e = reach[x]
            lines.append(f"{x} reaches {y}'s final {pct(target)} " +
                         (f"at epoch {e}." if e else f"in none of its {len(histories[x])} epochs."))
    return {"pairs": pairs, "lines": lines}


def _write_compare(r: CompareResult) -> None:
    atomic_write(r.run_dir / "compare.csv", csv_text(r.table))
    write_json(r.run_dir / "compare.json", {
        "configs": {k: c.to_dict() for k, c in r.configs.items()}, "notes": r.notes, "verdict": r.verdict,
        "table": r.table})
    atomic_write(r.run_dir / "compare.md", compare_markdown(r))
    from mnistlab.plots import compare_plot

    compare_plot(r.histories, r.run_dir / "compare.png")


def compare_markdown(r: CompareResult) -> str:
    headers, rows = compare_table(r)
    return md_table(headers, rows) + "\n" + "".join(f"- {line}\n" for line in r.summary)


def compare_table(r: CompareResult) -> tuple[list[str], list[list[str]]]:
    """(headers, formatted rows) of the side-by-side table: train and test accuracy and loss per optimizer."""
    labels = list(r.histories)
    headers = ["epoch"] + [f"{lab} {k}" for lab in labels for k in ("train acc", "test acc", "train loss",
                                                                      "test loss")]
    rows = []
    for row in r.table:
        cells = [str(row["epoch"])]
        for lab in labels:
            vals = [row[f"{lab}_{k}"] for k in ("train_acc", "test_acc", "train_loss", "test_loss")]
            cells += ["-" if v is None else (pct(v) if i < 2 else f"{v:.4f}") for i, v in enumerate(vals)]
        rows.append(cells)
    return headers, rows


# ---------------------------------------------------------------- sweep (Exercise 2)
RUN_FILES = ("config.json", "env.json", "metrics.csv", "metrics.jsonl", "checkpoint.pt")


@dataclass
class Job:
    """One training run of the grid; it serves every epoch setting in `serves`."""

    label: str
    config: Config
    run_dir: Path
    serves: list[int]
    source: Path | None = None  # an existing run: reused as is, or resumed when shorter
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    how: str = "trained"


@dataclass
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    preset_row: dict[str, Any] | None
    curves: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)

    @property
    def gain(self) -> float | None:
        return None if self.preset_row is None else self.best["final_test_acc"] - self.preset_row["final_test_acc"]

    @property
    def summary(self) -> list[str]:
        b, p = self.best, self.preset_row
        line = f"best: {b['label']}, {b['epochs']} epochs: {pct(b['final_test_acc'])} test accuracy"
        if p is not None:
            line += (f", {pts(self.gain)} over the preset's setting ({p['label']}, {p['epochs']} epochs: "
                     f"{pct(p['final_test_acc'])})")
        else:
            line += " (the preset's own setting is not in the grid: add it to measure the gain)"
        return [*self.notes, line + "."]


def _label(lr: float, batch_size: int) -> str:
    return f"lr={lr:g} batch={batch_size}"


def plan(base: Config, lrs: Sequence[float], epochs: Sequence[int], batch_sizes: Sequence[int], run_dir: Path,
         reuse: bool = True, runs: Sequence[str | Path] = ()) -> tuple[list[Job], list[str]]:
    """The training runs the grid needs: with an epoch-independent schedule, one run of the longest setting
    per (lr, batch size) serves the shorter ones; existing `runs` of the same setting are reused or resumed."""
    reusable = reuse and base.schedule in (None, "step")
    existing = [(Path(p), Config.from_dict(read_json(Path(p) / "config.json"))) for p in runs]
    jobs, notes = [], []
    for lr, bs in itertools.product(lrs, batch_sizes):
        label = _label(lr, bs)
        groups = [sorted(epochs)] if reusable else [[e] for e in sorted(epochs)]
        for serves in groups:
            cfg = dataclasses.replace(base, opt_args={**base.opt_args, "lr": float(lr)}, batch_size=int(bs),
                                      epochs=max(serves), model_args=dict(base.model_args),
                                      schedule_args=dict(base.schedule_args))
            validate(cfg)
            job = Job(label, cfg, run_dir / f"lr{lr:g}-b{bs}-e{cfg.epochs}", serves)
            for path, other in existing:
                if same_run(other, cfg) and (other.epochs == cfg.epochs or reusable):
                    job.source = path
                    job.how = f"reused {path}" if other.epochs >= cfg.epochs else \
                        f"resumed {path} from epoch {other.epochs}"
                    break
            if len(serves) > 1:
                notes.append(f"{label}: one {cfg.epochs}-epoch run serves epochs {', '.join(map(str, serves))} "
                             f"(schedule {base.schedule or 'constant'} does not depend on the number of epochs, "
                             "so epoch k of a longer run is epoch k of a shorter one)")
            if job.source is not None:
                notes.append(f"{label}, {cfg.epochs} epochs: {job.how} instead of training again")
            jobs.append(job)
    return jobs, notes


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def run_job(job: Job, data_dir: str | Path | None, quiet: bool) -> tuple[list[dict[str, Any]], float]:
    """Train (or reuse/resume) one job; returns (history, wall seconds)."""
    t0 = time.perf_counter()
    if job.source is not None:
        history = read_metrics(job.source)
        if len(history) >= job.config.epochs:
            return history[: job.config.epochs], 0.0
        for name in RUN_FILES:
            if (job.source / name).exists():
                atomic_write(job.run_dir / name, (job.source / name).read_bytes())
        history = train(resume=job.run_dir, epochs=job.config.epochs, data_dir=data_dir, quiet=quiet).history
    else:
        history = train(config=job.config, out=job.run_dir, data_dir=data_dir, quiet=quiet).history
    return history, time.perf_counter() - t0


def sweep(preset: str = "notebook", lrs: Sequence[float] | None = None, epochs: Sequence[int] | None = None,
          batch_sizes: Sequence[int] | None = None, *, jobs: int = 1, out: str | Path | None = None,
          data_dir: str | Path | None = None, quiet: bool = False, reuse: bool = True,
          runs: Sequence[str | Path] = (), config: Config | None = None, **overrides: Any) -> SweepResult:
    """Train the grid lrs x epochs x batch sizes around `preset`; sweep.csv, sweep.json, sweep.png, the best.

    `jobs` > 1 trains configurations in that many spawned processes, the CPU threads divided between them.
    `runs` are existing run directories the grid may reuse (same settings) instead of training again.
    """
    base = config or resolve(preset, **overrides)
    lrs = list(lrs or [base.lr])
    epochs = list(epochs or [base.epochs])
    batch_sizes = list(batch_sizes or [base.batch_size])
    if min(epochs) < 1 or min(batch_sizes) < 1 or min(lrs) <= 0:
        raise ConfigError("sweep values must be positive")
    run_dir = new_run_dir(f"sweep-{base.preset}", out)
    todo, notes = plan(base, lrs, epochs, batch_sizes, run_dir, reuse, runs)
    jobs = max(1, min(int(jobs), len(todo)))
    if jobs > 1:
        threads = max(1, usable_cpus() // jobs)
        notes.append(f"{len(todo)} runs in {jobs} parallel processes, {threads} CPU thread(s) each")
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(run_job, job, data_dir, True) for job in todo]
            for i, (job, fut) in enumerate(zip(todo, futures, strict=True), 1):
                job.history, job.seconds = fut.result()
                if not quiet:
                    print(f"[sweep {i}/{len(todo)}] {job.label}, {job.config.epochs} epochs: "
                          f"{pct(job.history[-1]['test_acc'])} ({job.how})", flush=True)
    else:
        for i, job in enumerate(todo, 1):
            if not quiet:
                print(f"[sweep {i}/{len(todo)}] {job.label}, {job.config.epochs} epochs ({job.how})", flush=True)
            job.history, job.seconds = run_job(job, data_dir, quiet)
    rows = [_row(job, e) for job in todo for e in job.serves]
    rows.sort(key=lambda r: (r["lr"], r["batch_size"], r["epochs"]))
    best = max(rows, key=lambda r: (r["final_test_acc"], -r["epochs"]))
    preset_row = next((r for r in rows if r["lr"] == base.lr and r["batch_size"] == base.batch_size
                       and r["epochs"] == base.epochs), None)
    curves = {job.label: job.history for job in todo if job.config.epochs == max(job.serves)}
    result = SweepResult(run_dir, rows, best, preset_row, curves, notes)
    atomic_write(run_dir / "sweep.csv", csv_text(rows))
    write_json(run_dir / "sweep.json", {"rows": rows, "best": best, "preset": preset_row, "gain": result.gain,
                                        "notes": notes, "base": base.to_dict(),
                                        "runs": [{"dir": j.run_dir, "how": j.how, "wall_seconds": j.seconds}
                                                 for j in todo]})
    from mnistlab.plots import sweep_plot

    sweep_plot(curves, rows, run_dir / "sweep.png")
    return result


def _row(job: Job, epochs: int) -> dict[str, Any]:
    h = job.history[:epochs]
    best = max(range(len(h)), key=lambda i: (h[i]["test_acc"], -i))
    how = job.how if epochs == job.config.epochs else f"epochs 1-{epochs} of the {job.config.epochs}-epoch run"
    return {
        "label": job.label, "lr": job.config.lr, "batch_size": job.config.batch_size, "epochs": epochs,
        "final_test_acc": h[-1]["test_acc"], "best_test_acc": h[best]["test_acc"], "best_epoch": best + 1,
        "final_train_acc": h[-1]["train_acc"],
        "seconds": round(sum(r["seconds"] + r.get("eval_seconds", 0.0) for r in h), 2),
        "source": how, "run_dir": str(job.source if job.how.startswith("reused") else job.run_dir),
    }
