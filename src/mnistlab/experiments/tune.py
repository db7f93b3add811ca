"""`tune()`: Exercise 2 as a search, on Optuna. Trials sample a `--space` around a preset, each trains an
ordinary run directory through the trial runner sweep uses, reports its validation accuracy after every
epoch (the pruner may stop it there), and is judged by the validation accuracy of the model it saves: its best
epoch's under `--early-stop`, else its last epoch's. The test accuracy of
completed trials is recorded beside it and never used to choose.

    tune("notebook", ["lr=1e-4..1e-2:log", "epochs=2..10"], trials=30, sampler="tpe", pruner="asha")

Several workers (`jobs` processes here, or the same command on other machines sharing a PostgreSQL
storage) work on one study until it holds exactly `trials` finished (complete or pruned) trials.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.experiments.pruning import Pruning
from mnistlab.experiments.space import Space, parse_space
from mnistlab.experiments.study import (
    MAX_RETRY,
    Admission,
    counts,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    quiet_optuna,
    retried_from,
    storage_url,
)
from mnistlab.experiments.trial import config_json, held_out, run_trial
from mnistlab.files.checkpoints import load_checkpoint
from mnistlab.tables import pct
from mnistlab.training.device import flush_denormals_everywhere
from mnistlab.training.distributed import usable_cpus


@dataclass
class Settings:
    """What every worker of one `tune` command needs (sent to spawned processes)."""

    study: str
    url: str
    out: Path
    space: Space
    trials: int
    sampler: str | optuna.samplers.BaseSampler = "tpe"
    pruner: str | optuna.pruners.BasePruner = "asha"
    heartbeat: int = 60
    data_dir: str | Path | None = None
    quiet: bool = False

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two commands work on the same question: the base config and the space."""
        base = {k: v for k, v in config_json(self.space.base).items() if k not in ("description", "device")}
        fixed = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.space.overrides.items())
        command = f"mnistlab tune --preset {self.space.preset} {fixed} " + " ".join(
            f"--space {s}" for s in self.space.specs)
        return {"base": base, "space": self.space.specs, "command": " ".join(command.split()),
                "preset": self.space.preset, "overrides": self.space.overrides}


@dataclass
class TuneResult:
    study: str
    storage: str
    out: Path
    trials: list[FrozenTrial] = field(repr=False)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # what the report wrote, and the dashboard command

    @property
    def finished(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    @property
    def best(self) -> FrozenTrial | None:
        done = [t for t in self.trials if t.state == TrialState.COMPLETE]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    @property
    def summary(self) -> list[str]:
        pruned = sum(t.state == TrialState.PRUNED for t in self.trials)
        n = len(self.finished)
        lines = [*self.notes, f"study {self.study}: {n} trial{'s' * (n != 1)} finished ({pruned} pruned) "
                 f"in {self.seconds:.0f}s"]
        if (b := self.best) is not None:
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.params.items())
            lines.append(f"best: trial {b.number} ({params}): {pct(b.value)} validation accuracy, "
                         f"{pct(b.user_attrs['test_acc'])} test accuracy (reported, not used to choose)")
        return lines + self.written


def trial_dir(out: Path, number: int) -> Path:
    return Path(out) / f"trial-{number:04d}"


@dataclass(frozen=True)
class TuneSpec:
    """One `tune` command: the parsed `space` (its preset and fixed overrides), the study's size `trials`
    (None: 30, or the grid's size for the grid sampler), `sampler` and `pruner` (names, see
    experiments.study, or ready Optuna objects), the study's name (default: the preset) and `storage`,
    `jobs` worker processes here, and `report` files written into `out` (default runs/tune-<study>)."""

    space: Space
    trials: int | None = None
    sampler: str | optuna.samplers.BaseSampler = "tpe"
    pruner: str | optuna.pruners.BasePruner = "asha"
    study: str | None = None
    storage: str | None = None
    out: str | Path | None = None
    jobs: int = 1
    heartbeat: int = 60
    data_dir: str | Path | None = None
    quiet: bool = False
    report: bool = True


@quiet_optuna()
def tune(preset: str = "notebook", space: Sequence[str] = (), **kwargs: Any) -> TuneResult:
    """Run (or continue) the study until it holds `trials` finished trials; returns its trials.

    `space`: `--space` specs (see experiments.space). Keywords naming a `TuneSpec` field (trials, sampler,
    pruner, study, storage, out, jobs, heartbeat, data_dir, quiet, report) set it; the others fix settings
    for every trial (val defaults to `DEFAULT_VAL`).
    """
    names = {f.name for f in dataclasses.fields(TuneSpec)} - {"space"}
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    overrides = held_out("tune", kwargs)
    tuned = [s.partition("=")[0].strip().replace("-", "_") for s in space]
    if clash := sorted(set(tuned) & set(overrides)):
        raise ConfigError(f"{clash[0]} is both fixed (--{clash[0].replace('_', '-')}) and tuned (--space)")
    return run_tune(TuneSpec(parse_space(space, preset, **overrides), **fields))


@quiet_optuna()
def run_tune(spec: TuneSpec) -> TuneResult:
    """Run (or continue) `spec`'s study until it holds its trials finished."""
    parsed, trials, sampler, pruner, jobs, heartbeat = (spec.space, spec.trials, spec.sampler, spec.pruner,
                                                         spec.jobs, spec.heartbeat)
    name = spec.study or parsed.preset
    out = Path(spec.out) if spec.out is not None else Path("runs") / f"tune-{name}"
    notes = []
    if trials is None:
        trials = parsed.grid_size() if sampler == "grid" else 30
    elif sampler == "grid" and trials > parsed.grid_size():
        notes.append(f"the grid has {parsed.grid_size()} points: {parsed.grid_size()} trials, not {trials}")
        trials = parsed.grid_size()
    if trials < 1 or heartbeat < 1 or jobs < 1:
        raise ConfigError("--trials, --heartbeat and --jobs must be at least 1")
    s = Settings(name, storage_url(spec.storage, out), out, parsed, trials, sampler, pruner, heartbeat,
                 spec.data_dir, spec.quiet)
    make_sampler(sampler, parsed)  # bad names fail here, before any worker starts
    make_pruner(pruner)
    handle = open_study(name, open_storage(s.url, heartbeat), s.identity)
    t0 = time.perf_counter()
    if jobs == 1:
        work(s)
    else:
        notes += run_workers(s, jobs)
    trials_now = handle.get_trials()
    result = TuneResult(name, s.url, out, trials_now, time.perf_counter() - t0, notes)
    if len(result.finished) < trials:
        raise MnistlabError(f"study {name}: {len(result.finished)} of {trials} trials finished; "
                            "run the same command again to continue")
    if spec.report and result.best is not None:
        from mnistlab.experiments.tune_report import write_report

        result.written = write_report(handle, s.url, out)
    return result


def run_workers(s: Settings, jobs: int) -> list[str]:
    """`jobs` spawned worker processes, usable CPUs divided between them; notes on workers that died."""
    threads = max(1, usable_cpus() // jobs)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(s, threads), daemon=False) for _ in range(jobs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    notes = [f"{jobs} worker processes, {threads} CPU thread(s) each"]
    for i, p in enumerate(procs):
        if p.exitcode and p.exitcode < 0:
            notes.append(f"worker {i} (pid {p.pid}) was killed by signal {-p.exitcode}; the others went on")
        elif p.exitcode:
            notes.append(f"worker {i} (pid {p.pid}) stopped with exit code {p.exitcode}")
    return notes


def _worker_main(s: Settings, threads: int) -> None:
    torch.set_num_threads(threads)
    flush_denormals_everywhere()
    try:
        work(s)
    except MnistlabError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


@quiet_optuna()
def work(s: Settings) -> None:
    """One worker: start trials until the study holds `s.trials` finished ones; while the remaining trials
    run elsewhere, wait for them (a trial whose worker dies is failed by heartbeat and queued again here)."""
    storage = open_storage(s.url, s.heartbeat)
    study = open_study(s.study, storage, s.identity, sampler=make_sampler(s.sampler, s.space),
                       pruner=make_pruner(s.pruner))
    admission = Admission(s.url, storage, s.study)
    announce = [] if s.quiet else [_announce]
    while True:
        with admission.held():
            optuna.storages.fail_stale_trials(study)
            n = counts(study)
            if n.finished >= s.trials:
                return
            if n.waiting or n.finished + n.running < s.trials:
                try:
                    study.optimize(lambda trial: objective(trial, s, admission), n_trials=1, callbacks=announce)
                except KeyboardInterrupt:  # the trial is FAIL: queue it again, to resume on the next run
                    _requeue(study)
                    raise
                continue
        time.sleep(min(2.0, s.heartbeat / 2))


def _requeue(study: optuna.Study) -> None:
    mine = f"{socket.gethostname()}:{os.getpid()}"
    failed = [t for t in study.get_trials(states=(TrialState.FAIL,)) if t.user_attrs.get("worker") == mine]
    if failed:
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, failed[-1])


def objective(trial: optuna.Trial, s: Settings, admission: Admission) -> float:
    """Train one sampled configuration into `<out>/trial-NNNN`; the validation accuracy of its saved model (the
    best epoch's under early stopping, else the last epoch's).

    A retry of a failed trial (Optuna's `failed_trial` system attribute) continues from the failed trial's
    checkpoint when this machine has it. A pruned trial raises optuna.TrialPruned once the epoch the
    pruner stopped it at is written.
    """
    admission.release()  # this trial exists: other workers may start theirs
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    params = s.space.suggest(trial)
    described = ", ".join(f"{k}={v}" for k, v in params.items())
    cfg = dataclasses.replace(s.space.config(params),
                              description=f"tune study {s.study}, trial {trial.number}: {described}")
    run_dir = trial_dir(s.out, trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    pruning = Pruning(trial, cfg.epochs)
    source = None
    if (failed := retried_from(frozen)) is not None and (trial_dir(s.out, failed) / "checkpoint.pt").exists():
        source = trial_dir(s.out, failed)
        pruning.report(load_checkpoint(source / "checkpoint.pt")["history"])  # the metrics may lag it an epoch
    result = run_trial(cfg, run_dir, source=source, callbacks=(pruning,), data_dir=s.data_dir, quiet=True)
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
    saved = result.model_row  # with --early-stop, the best epoch's: the saved model's
    trial.set_user_attr("test_acc", saved["test_acc"])
    return saved["val_acc"]


def _announce(study: optuna.Study, t: FrozenTrial) -> None:
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    vals = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
    how = {TrialState.COMPLETE: f"complete after {len(vals)} epoch{'s' * (len(vals) != 1)}",
           TrialState.PRUNED: f"pruned after epoch {len(vals)}"}.get(t.state, t.state.name.lower())
    value = t.value if t.state == TrialState.COMPLETE else vals[-1] if vals else None
    val = f": validation {pct(value)}" if value is not None else ""
    seconds = t.duration.total_seconds() if t.duration else 0.0
    print(f"[tune {study.study_name}] trial {t.number} {how}{val} ({params}) {seconds:.0f}s", flush=True)
