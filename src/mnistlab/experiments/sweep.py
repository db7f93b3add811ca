"""Exercise 2: `sweep("notebook", lrs=[5e-4, 1e-3, 2e-3], epochs=[5, 8], jobs=2)` trains a grid, reusing
longer runs for shorter epoch settings, and writes a table of the grid, a figure and the chosen setting.

The setting is chosen by validation accuracy (the last `val` training images, `DEFAULT_VAL` = 10,000 by
default, which no run of the grid trains on); the test accuracy of every setting is reported beside it and never
used to choose.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import ConfigError
from mnistlab.experiments.trial import make_spec, reuse_problem, run_trial, same_run
from mnistlab.files.outdir import claim_dir, scoped
from mnistlab.files.runs import atomic_write, read_metrics, write_json
from mnistlab.presets import Config, read_run_config, resolve
from mnistlab.stats import Difference, best_epoch
from mnistlab.tables import csv_text, pct
from mnistlab.training.device import flush_denormals_everywhere
from mnistlab.training.distributed import usable_cpus

# ---------------------------------------------------------------- sweep (Exercise 2)

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
    """The grid's rows (see `_row`), the row chosen by validation accuracy (`best`) and the preset's own."""

    run_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    preset_row: dict[str, Any] | None
    curves: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)
    val_n: int = 0
    test_n: int = 0

    @property
    def gain(self) -> float | None:
        """Test accuracy of the chosen setting minus the preset's (reported, not what chose)."""
        return None if self.preset_row is None else self.best["test_acc"] - self.preset_row["test_acc"]

    @property
    def gain_noise(self) -> Difference | None:
        if self.preset_row is None:
            return None
        return Difference(self.best["test_acc"], self.preset_row["test_acc"], self.test_n)

    @property
    def summary(self) -> list[str]:
        b, p = self.best, self.preset_row
        lines = [f"chosen by validation accuracy (the last {self.val_n:,} training images, which no run trains "
                 f"on): {describe(b)}, validation {pct(b['val_acc'])}; test accuracy {pct(b['test_acc'])}, "
                 "reported, not used to choose."]
        if p is None:
            lines.append("The preset's own setting is not in the grid: add it to measure the gain.")
        elif p is b:
            lines.append("That is the preset's own setting: the grid found nothing better on validation.")
        else:
            lead = Difference(b["val_acc"], p["val_acc"], self.val_n)
            lines.append(f"Against the preset's setting ({describe(p)}: validation {pct(p['val_acc'])}, test "
                         f"{pct(p['test_acc'])}): validation {lead.words()}"
                         + ("" if lead.exceeds else ", so the choice itself is uncertain")
                         + f"; test {self.gain_noise.words()}.")
        return [*self.notes, *lines]


def describe(row: dict[str, Any]) -> str:
    """"lr=0.002 batch=32, 8 epochs"; with early stopping "lr=0.002 batch=32, up to 8 epochs (model of epoch 5)"."""
    if row["model_epoch"] != row["epochs"]:
        return f"{row['label']}, up to {row['epochs']} epochs (model of epoch {row['model_epoch']})"
    return f"{row['label']}, {row['epochs']} epochs"


def choose(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest validation accuracy; on a tie, the fewest epochs, then the first listed."""
    return max(rows, key=lambda r: (r["val_acc"], -r["epochs"]))


def _label(lr: float, batch_size: int) -> str:
    return f"lr={lr:g} batch={batch_size}"


def plan(base: Config, lrs: Sequence[float], epochs: Sequence[int], batch_sizes: Sequence[int], run_dir: Path,
         reuse: bool = True, runs: Sequence[str | Path] = ()) -> tuple[list[Job], list[str]]:
    """The training runs the grid needs: with an epoch-independent schedule, one run of the longest setting
    per (lr, batch size) serves the shorter ones; existing `runs` of the same setting are reused or resumed."""
    reusable = reuse and base.schedule in (None, "step")
    existing, notes = [], []
    for p in map(Path, runs):
        if (problem := reuse_problem(p)) is not None:
            notes.append(f"{p}: {problem}; not reused")
            continue
        existing.append((p, read_run_config(p)[0]))
    jobs = []
    for lr, bs in itertools.product(lrs, batch_sizes):
        label = _label(lr, bs)
        groups = [sorted(epochs)] if reusable else [[e] for e in sorted(epochs)]
        for serves in groups:
            cfg = resolve(base=base, lr=lr, batch_size=int(bs), epochs=max(serves))
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
    flush_denormals_everywhere()


def run_job(job: Job, data_dir: str | Path | None, quiet: bool) -> tuple[list[dict[str, Any]], float]:
    """Train (or reuse/resume) one job; returns (history, wall seconds)."""
    t0 = time.perf_counter()
    if job.source is not None:
        history = read_metrics(job.source)
        if len(history) >= job.config.epochs:
            return history[: job.config.epochs], 0.0
    history = run_trial(job.config, job.run_dir, source=job.source, data_dir=data_dir, quiet=quiet).history
    return history, time.perf_counter() - t0


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: the grid lrs x epochs x batch sizes around `base` (an empty axis: the base's own value),
    trained in `jobs` processes; `runs` are existing run directories it may reuse (same settings) instead of
    training again, `reuse` lets one run of the longest setting serve the shorter ones."""

    base: Config
    lrs: Sequence[float] = ()
    epochs: Sequence[int] = ()
    batch_sizes: Sequence[int] = ()
    jobs: int = 1
    reuse: bool = True
    runs: Sequence[str | Path] = ()
    out: str | Path | None = None
    data_dir: str | Path | None = None
    quiet: bool = False


def sweep(preset: str = "notebook", lrs: Sequence[float] | None = None, epochs: Sequence[int] | None = None,
          batch_sizes: Sequence[int] | None = None, *, config: Config | None = None, **kwargs: Any) -> SweepResult:
    """Train the grid lrs x epochs x batch sizes around `preset`; sweep.csv, sweep.json, sweep.png, the best.

    Keywords naming a `SweepSpec` field (jobs, reuse, runs, out, data_dir, quiet) set it; the others override
    the preset (val defaults to `DEFAULT_VAL`), or `config` is the base. `jobs` > 1 trains configurations in
    that many spawned processes, the CPU threads divided between them.
    """
    return run_sweep(make_spec(SweepSpec, "sweep", preset, config, kwargs, validation=True, lrs=lrs or (),
                               epochs=epochs or (), batch_sizes=batch_sizes or ()))


@scoped  # the sweep directory stays locked while it runs
def run_sweep(spec: SweepSpec) -> SweepResult:
    """Train `spec`'s grid; sweep.csv, sweep.json, sweep.png and the setting chosen on validation."""
    base, data_dir, quiet = spec.base, spec.data_dir, spec.quiet
    lrs = list(spec.lrs or [base.lr])
    epochs = list(spec.epochs or [base.epochs])
    batch_sizes = list(spec.batch_sizes or [base.batch_size])
    if min(epochs) < 1 or min(batch_sizes) < 1 or min(lrs) <= 0:
        raise ConfigError("sweep values must be positive")
    run_dir = claim_dir(spec.out, f"sweep-{base.preset}", kind="sweep").path
    todo, notes = plan(base, lrs, epochs, batch_sizes, run_dir, spec.reuse, spec.runs)
    jobs = max(1, min(int(spec.jobs), len(todo)))
    if jobs > 1:
        threads = max(1, usable_cpus() // jobs)
        notes.append(f"{len(todo)} runs in {jobs} parallel processes, {threads} CPU thread(s) each")
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(run_job, job, data_dir, True) for job in todo]
            for i, (job, fut) in enumerate(zip(todo, futures, strict=True), 1):
                job.history, job.seconds = fut.result()
                if not quiet:
                    print(f"[sweep {i}/{len(todo)}] {job.label}, {job.config.epochs} epochs: validation "
                          f"{pct(job.history[-1]['val_acc'])} ({job.how})", flush=True)
    else:
        for i, job in enumerate(todo, 1):
            if not quiet:
                print(f"[sweep {i}/{len(todo)}] {job.label}, {job.config.epochs} epochs ({job.how})", flush=True)
            job.history, job.seconds = run_job(job, data_dir, quiet)
    rows = [_row(job, e) for job in todo for e in job.serves]
    rows.sort(key=lambda r: (r["lr"], r["batch_size"], r["epochs"]))
    best = choose(rows)
    preset_row = next((r for r in rows if r["lr"] == base.lr and r["batch_size"] == base.batch_size
                       and r["epochs"] == base.epochs), None)
    curves = {job.label: job.history for job in todo if job.config.epochs == max(job.serves)}
    last = todo[0].history[-1]
    result = SweepResult(run_dir, rows, best, preset_row, curves, notes, int(last["val_n"]), int(last["test_n"]))
    atomic_write(run_dir / "sweep.csv", csv_text(rows))
    noise = result.gain_noise
    write_json(run_dir / "sweep.json", {"rows": rows, "chosen_by": "val_acc", "best": best, "preset": preset_row,
                                        "gain": result.gain, "gain_noise": noise.as_dict() if noise else None,
                                        "summary": result.summary, "notes": notes, "base": base.to_dict(),
                                        "runs": [{"dir": j.run_dir, "how": j.how, "wall_seconds": j.seconds}
                                                 for j in todo]})
    from mnistlab.plots import sweep_plot

    sweep_plot(curves, rows, run_dir / "sweep.png", chosen=best)
    return result


def _row(job: Job, epochs: int) -> dict[str, Any]:
    """One setting of the grid: the first `epochs` epochs of its job (fewer if early stopping ended it).

    val_acc/test_acc are those of the setting's model: its last epoch, or with early stopping its best
    validation epoch (`model_epoch`), exactly what a run of this setting alone would have saved (the stopping
    rule only looks back, so a longer run's first epochs are the shorter run's). best_val_acc/best_epoch: the
    highest validation accuracy over the epochs; final_*: the last epoch trained.
    """
    h = job.history[:epochs]
    best = best_epoch([r["val_acc"] for r in h]) - 1
    model = best if job.config.early_stop else len(h) - 1
    how = job.how if epochs == job.config.epochs else f"epochs 1-{epochs} of the {job.config.epochs}-epoch run"
    return {
        "label": job.label, "lr": job.config.lr, "batch_size": job.config.batch_size, "epochs": epochs,
        "trained": len(h), "model_epoch": model + 1, "val_acc": h[model]["val_acc"],
        "test_acc": h[model]["test_acc"], "best_val_acc": h[best]["val_acc"], "best_epoch": best + 1,
        "final_val_acc": h[-1]["val_acc"], "final_test_acc": h[-1]["test_acc"], "final_train_acc": h[-1]["train_acc"],
        "seconds": round(sum(r["seconds"] + r.get("eval_seconds", 0.0) for r in h), 2),
        "source": how, "run_dir": str(job.source if job.how.startswith("reused") else job.run_dir),
    }
