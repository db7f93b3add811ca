"""Where a tuning study lives and how its workers share it, on Optuna.

Storage: a journal file by default (no server; safe for parallel workers on one machine, where SQLite would
lock under concurrent writers), `sqlite:///FILE`, or `postgresql://...` for workers on several machines
(through psycopg 3, from the tune extra).

Heartbeats: every running trial records a heartbeat; a trial not heard from for twice the interval (its
worker was killed) is marked FAIL and queued again with the same parameters (Optuna's
RetryHeartbeatStaleTrialCallback). Optuna implements heartbeats for RDB storages only; `HeartbeatJournal`
adds them to the journal file as trial system attributes.

Admission: a worker counts the study's trials and asks for a new one under a lock (a file lock beside a
journal or SQLite file, a PostgreSQL advisory lock), so that several workers together start exactly the
number of trials asked for. The same lock is held while a database storage creates its tables, so workers
started at once on an empty database do not both issue CREATE TABLE.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements; not re-exported
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mnistlab.errors import ConfigError
from mnistlab.experiments.space import Space

HEARTBEAT_KEY = "mnistlab:heartbeat"
MAX_RETRY = 3  # a trial whose worker dies more often than this stays failed



@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Within the block, Optuna's log off but for errors (tune prints its own lines per trial, and a failed
    trial's error once, without Optuna's traceback) and its experimental-feature warnings (heartbeats, the
    constant liar, retry history, matplotlib plots) silenced; the caller's settings come back after it. Also a
    decorator: `@quiet_optuna()`."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


# ---------------------------------------------------------------- storage
def storage_url(storage: str | None, out: str | Path) -> str:
    """The study's storage: `storage` checked, or the journal file `<out>/journal.log`."""
    if storage is None:
        return str(Path(out) / "journal.log")
    scheme = storage.split("://", 1)[0].split("+", 1)[0] if "://" in storage else None
    if scheme is None:
        return storage  # a journal file
    if scheme == "sqlite" and storage.startswith("sqlite:///") and len(storage) > len("sqlite:///"):
        return storage
    if scheme == "postgresql":
        return storage
    raise ConfigError(f"--storage {storage}: use a journal file path, sqlite:///FILE or postgresql://USER@HOST/DB")


def is_journal(url: str) -> bool:
    return "://" not in url


class HeartbeatJournal(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats, kept as a trial system attribute (wall-clock seconds).

    A trial is stale when neither its start nor its last heartbeat is within `grace` seconds.
    """

    def __init__(self, path: str, interval: int, grace: int, on_stale: Callable | None = None) -> None:
        super().__init__(JournalFileBackend(path))
        self.interval, self.grace, self.on_stale = interval, grace, on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            seen = max(float(t.system_attrs.get(HEARTBEAT_KEY, 0.0)), t.datetime_start.timestamp())
            if now - seen > self.grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return self.on_stale


def open_storage(url: str, heartbeat: int) -> optuna.storages.BaseStorage:
    """The storage at `url` with heartbeats every `heartbeat` seconds and retries of stale trials."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    if is_journal(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournal(url, heartbeat, 2 * heartbeat, retry)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine_url = url  # postgresql:// through psycopg 3 (the tune extra's driver), whatever SQLAlchemy's default
    if url.startswith("postgresql://"):
        engine_url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        engine = sqlalchemy.create_engine(engine_url, poolclass=sqlalchemy.pool.NullPool)
        # RDBStorage creates any missing table; two workers doing that at once on an empty PostgreSQL database
        # collide ("duplicate key value violates unique constraint pg_type_typname_nsp_index").
        try:
            with exclusive(url, "schema", engine):
                return RDBStorage(engine_url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                  heartbeat_stale_trial_callback=retry)
        finally:
            engine.dispose()
    except ImportError:
        raise ConfigError(f"--storage {url}: its database driver is not installed; "
                          "pip install 'mnistlab[tune]'") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = str(e.orig if getattr(e, "orig", None) else e).strip().splitlines()[0]
        raise ConfigError(f"--storage {url}: {first}") from None


# ---------------------------------------------------------------- locks shared by the workers
@contextlib.contextmanager
def exclusive(url: str, name: str, engine: sqlalchemy.Engine | None = None) -> Iterator[None]:
    """Held by one worker of the storage at `url` at a time: a PostgreSQL advisory lock keyed by `name`
    (through `engine`), or a file lock beside a journal or SQLite file (the workers share its file system)."""
    if engine is not None and engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"mnistlab-tune:{name}".encode()).digest()[:8], "big", signed=True)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    path = url if is_journal(url) else url[len("sqlite:///"):]
    with open(f"{path}.admission.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Admission:
    """A lock shared by every worker of one study, held while a worker counts trials and starts one."""

    def __init__(self, url: str, storage: optuna.storages.BaseStorage, study: str) -> None:
        self.url, self.storage, self.study = url, storage, study
        self._held: contextlib.ExitStack | None = None

    def acquire(self) -> None:
        engine = self.storage.engine if isinstance(self.storage, RDBStorage) else None
        held = contextlib.ExitStack()
        held.enter_context(exclusive(self.url, f"study:{self.study}", engine))
        self._held = held

    def release(self) -> None:
        """Idempotent: the objective releases the lock as soon as its trial exists."""
        if self._held is not None:
            held, self._held = self._held, None
            held.close()

    @contextlib.contextmanager
    def held(self) -> Iterator[Admission]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


# ---------------------------------------------------------------- samplers, pruners, the study
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("asha", "median", "none")


def make_sampler(name: str | optuna.samplers.BaseSampler, space: Space, seed: int | None = None
                 ) -> optuna.samplers.BaseSampler:
    """tpe (constant liar: running trials count as bad guesses, so parallel workers spread out), random,
    grid (every combination of listed values once), cmaes (numeric dimensions only), or a ready sampler."""
    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "cmaes":
        listed = [d.spec for d in space.dims if d.kind == "choice"]
        if listed:
            raise ConfigError(f"--sampler cmaes searches numeric ranges only; {listed[0]} is a list "
                              "(use --sampler tpe, or a range)")
        try:
            import cmaes  # noqa: F401 - Optuna's CmaEsSampler needs it
        except ImportError:
            raise ConfigError("--sampler cmaes needs the cmaes package: pip install 'mnistlab[tune]'") from None
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def make_pruner(name: str | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    """asha: asynchronous successive halving, rungs at epochs 1, 3, 9, ..., a trial goes on past a rung
    when it is in the top third there; median: stop a trial below the median of earlier trials at the
    same epoch (after 5 trials); none; or a ready pruner."""
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")


@dataclass
class Counts:
    finished: int
    running: int
    waiting: int


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    n = {s: sum(t.state == s for t in trials) for s in TrialState}
    return Counts(n[TrialState.COMPLETE] + n[TrialState.PRUNED], n[TrialState.RUNNING], n[TrialState.WAITING])


def open_study(name: str, storage: optuna.storages.BaseStorage, identity: dict[str, Any], **kwargs: Any
               ) -> optuna.Study:
    """Create the study (maximising validation accuracy) or load it; a study created for another preset or
    space is refused, so that every trial of a study answers the same question."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                **kwargs)
    recorded = study.user_attrs.get("mnistlab")
    if recorded is None:
        study.set_user_attr("mnistlab", identity)
    elif {k: recorded.get(k) for k in ("base", "space")} != {k: identity[k] for k in ("base", "space")}:
        raise ConfigError(f"study {name!r} was created by `{recorded['command']}`; rerun with its --preset, "
                          "overrides and --space, or name a new --study")
    return study


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the failed trial this one retries (the latest of a chain of retries), or None."""
    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[-1] if history else None
