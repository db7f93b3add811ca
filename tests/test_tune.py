"""`mnistlab tune` on Optuna: the --space parser, pruning, and workers sharing one study (a journal file with
--jobs 2, a real PostgreSQL server with two commands) surviving a worker killed mid-trial."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mnistlab.errors import ConfigError
from mnistlab.experiments.space import parse_space
from mnistlab.experiments.tune import tune
from mnistlab.experiments.tune_report import load
from mnistlab.files.checkpoints import load_checkpoint
from mnistlab.files.runs import read_json, read_metrics
from mnistlab.inference.evaluate import evaluate_model
from mnistlab.inference.predict import load_model
from mnistlab.presets import stored_config
from mnistlab.training.run import train

# A tiny budget: 800 training images in batches of 100, 200 validation images, one CPU thread per worker.
# Heartbeats every 3 s: a killed worker's trial is failed after 6 s, while a live worker on a busy machine is
# never mistaken for a dead one.
SMALL = ["--preset", "notebook", "--subset", "1000", "--val", "200", "--batch-size", "100", "--device", "cpu"]
SMALL_KW = dict(subset=1000, val=200, batch_size=100, device="cpu")


# ---------------------------------------------------------------- the search space
def test_space_parser_and_its_errors():
    space = parse_space(["lr=1e-4..1e-2:log", "epochs=2..10", "batch-size=32,64,128", "optimizer=sgd,rmsprop",
                         "opt.momentum=0.8..0.99"], "notebook", val=500)
    assert space.specs == ["lr=0.0001..0.01:log", "epochs=2..10", "batch_size=32,64,128",
                           "optimizer=sgd,rmsprop", "opt.momentum=0.8..0.99"]
    assert [d.kind for d in space.dims] == ["float", "int", "choice", "choice", "float"]
    cfg = space.config({"lr": 0.005, "epochs": 3, "batch_size": 64, "optimizer": "sgd", "opt.momentum": 0.85})
    assert (cfg.optimizer, cfg.opt_args, cfg.epochs, cfg.batch_size, cfg.val) == (
        "SGD", {"lr": 0.005, "momentum": 0.85}, 3, 64, 500)
    assert parse_space(["lr=1e-3,2e-3", "epochs=1..3"]).grid() == {"lr": [1e-3, 2e-3], "epochs": [1, 2, 3]}
    bad = {
        "lr": "expected NAME=LOW..HIGH[:log] or NAME=A,B,C",
        "colour=1..2": "'colour' is not a tunable setting; choose from lr, epochs",
        "seed=0..9": "'seed' is not a tunable setting",
        "epochs=1.5..3": "epochs takes whole numbers",
        "batch_size=32,x": "'x' is not a whole number",
        "lr=0..1e-2:log": "a log range needs a positive low end",
        "lr=1e-2..1e-4": "the low end must be below the high end",
        "lr=1e-4..1e-2:ln": "unknown flag 'ln' (only :log)",
        "lr=a..b": "a range needs two numbers",
        "optimizer=1..3": "optimizer takes listed values",
        "optimizer=adam,adamm": "unknown optimizer 'adamm'",
        "epochs=0..3": "epochs must be at least 1, got 0",
        "lr=1e-3,,2e-3": "empty value in the list",
        "lr=1e-3,1e-3": "a value is listed twice",
    }
    for spec, message in bad.items():
        with pytest.raises(ConfigError, match=f"^--space {spec!r}" if spec == "lr" else None) as e:
            parse_space([spec])
        assert message in str(e.value) and spec in str(e.value), (spec, str(e.value))
    with pytest.raises(ConfigError, match="^--space optimizer=adam with opt.momentum=0.8: bad arguments for "
                                          "optimizer Adam: .* unexpected keyword argument 'momentum'"):
        parse_space(["optimizer=adam,sgd", "opt.momentum=0.8..0.99"])  # every combination's optimizer is built
    with pytest.raises(ConfigError, match="epochs is already in the space"):
        parse_space(["epochs=1..3", "epochs=2,4"])
    with pytest.raises(ConfigError, match="grid sampler needs listed values, e.g. lr=0.0001,0.01"):
        parse_space(["lr=1e-4..1e-2"]).grid()


def test_bad_tune_options_are_one_line_errors(cli, tmp_path):
    cases = [
        (["--space", "lr=0..1:log"], "error: --space lr=0..1:log: a log range needs a positive low end"),
        (["--space", "momentum=0.8..0.9"], "'momentum' is not a tunable setting"),
        (["--space", "lr=1e-4..1e-2", "--sampler", "grid"], "the grid sampler needs listed values"),
        (["--space", "lr=1e-4..1e-2", "--lr", "1e-3"], "lr is both fixed (--lr) and tuned (--space)"),
        (["--space", "lr=1e-4..1e-2", "--val", "0"],
         "tune chooses by validation accuracy: hold out a validation split"),
        (["--space", "optimizer=adam,sgd", "--sampler", "cmaes"], "cmaes searches numeric ranges only"),
        (["--space", "lr=1e-4..1e-2", "--storage", "mysql://u@h/db"], "use a journal file path, sqlite:///FILE"),
        ([], "give at least one --space"),
        (["--report", "--study", "none", "--storage", str(tmp_path / "no.log")], "no such journal file"),
    ]
    for args, message in cases:
        code, out, err = cli("tune", "--out", str(tmp_path / "t"), *args)
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "t").exists()  # nothing was started


# ---------------------------------------------------------------- pruning
@pytest.mark.slow
def test_pruned_trials_stop_at_once_and_are_recorded_pruned(mnist_dir, tmp_path):
    """A pruner that prunes everything (accuracy below 100%): each 3-epoch trial stops after epoch 1. The grid
    sampler gives one trial per listed learning rate."""
    out = tmp_path / "study"
    level, filters = optuna.logging.get_verbosity(), list(warnings.filters)
    result = tune("notebook", ["lr=1e-3,2e-3"], sampler="grid", pruner=optuna.pruners.ThresholdPruner(lower=100.0),
                  out=out, epochs=3, data_dir=mnist_dir, quiet=True, **SMALL_KW)
    assert (optuna.logging.get_verbosity(), warnings.filters) == (level, filters)  # the caller's, untouched
    assert [t.state for t in result.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert sorted(t.params["lr"] for t in result.trials) == [1e-3, 2e-3] and result.best is None
    for t in result.trials:
        run = Path(t.user_attrs["run_dir"])
        history = read_metrics(run)
        assert [r["epoch"] for r in history] == [1]  # epochs 2 and 3 never ran
        assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
        assert t.intermediate_values == {1: history[0]["val_acc"]} and "test_acc" not in t.user_attrs
        cfg = read_json(run / "config.json")
        assert cfg["epochs"] == 3 and cfg["opt_args"]["lr"] == t.params["lr"]
        assert cfg["description"].startswith(f"tune study notebook, trial {t.number}: lr=")


@pytest.mark.slow
def test_with_early_stopping_a_trial_is_scored_by_its_saved_model(mnist_dir, tmp_path):
    """--early-stop keeps the best epoch's weights: the trial's value and test accuracy are that epoch's (what
    `mnistlab evaluate` gives for its model.safetensors), not the last epoch's."""
    result = tune("notebook", ["lr=1e-3,2e-3,4e-3"], sampler="grid", pruner="none", out=tmp_path / "study",
                  epochs=6, early_stop=1, data_dir=mnist_dir, quiet=True, **SMALL_KW)
    stopped = 0
    for t in result.trials:
        run = Path(t.user_attrs["run_dir"])
        history = read_metrics(run)
        vals = [r["val_acc"] for r in history]
        best = vals.index(max(vals))
        stopped += len(history) < 6
        assert t.value == vals[best] and t.user_attrs["test_acc"] == history[best]["test_acc"]
        assert evaluate_model(load_model(run / "model.safetensors"), "test", mnist_dir)["accuracy"] == \
            t.user_attrs["test_acc"]
    assert stopped > 0  # at least one trial's last epoch is not its model's


# ---------------------------------------------------------------- workers sharing a study, one killed
def rows(run: Path) -> list[dict]:
    return read_metrics(run) if (run / "metrics.jsonl").exists() else []


def kill_a_worker_mid_trial(study: str, url: str, procs: list[subprocess.Popen], epochs: int,
                            timeout: float = 600) -> tuple[int, int]:
    """SIGKILL the worker of a running trial that has finished epoch 1 (checkpoint written) but not its last
    epoch; returns (pid, trial number)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, p.communicate()
        with contextlib.suppress(ConfigError):  # the study may not exist yet
            for t in load(study, url).get_trials(states=(TrialState.RUNNING,)):
                run = Path(t.user_attrs.get("run_dir", "/nonexistent"))
                if 0 < len(rows(run)) < epochs:  # epoch 1's row is written after its checkpoint
                    pid = int(t.user_attrs["worker"].rsplit(":", 1)[1])
                    os.kill(pid, signal.SIGKILL)
                    return pid, t.number
        time.sleep(0.05)
    raise AssertionError("no trial to interrupt")


def check_study(study: str, url: str, n: int, killed: int | None = None) -> list:
    """Exactly `n` finished trials, each trained into its own run directory; the killed trial FAILED and was
    retried from its checkpoint (its first epoch copied, not trained again)."""
    trials = load(study, url).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n, [(t.number, t.state) for t in trials]
    assert len({t.number for t in trials}) == len(trials)
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert run.name == f"trial-{t.number:04d}"
        assert read_json(run / "config.json")["description"].startswith(f"tune study {study}, trial {t.number}:")
        epochs = [r["epoch"] for r in rows(run)]
        assert epochs == list(range(1, len(epochs) + 1))  # every epoch once: no trial ran twice
        if t.state != TrialState.FAIL:
            assert sorted(t.intermediate_values) == epochs
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if killed is None:
        assert failed == []
        return trials
    assert [t.number for t in failed] == [killed]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed)
    assert retry.state == TrialState.COMPLETE and retry.params == failed[0].params
    first = rows(Path(failed[0].user_attrs["run_dir"]))[0]
    assert rows(Path(retry.user_attrs["run_dir"]))[0] == first  # the same wall-clock seconds: resumed, not rerun
    return trials


def check_report(cli, study: str, storage: list[str], out: Path, trials: list, mnist_dir: Path) -> None:
    """`--report` writes study.csv, best.json and the plots; best.json trains to the recorded val accuracy."""
    code, stdout, err = cli("tune", "--report", "--study", study, *storage, "--out", str(out))
    assert code == 0, err
    assert "optuna-dashboard" in stdout
    table = (out / "study.csv").read_text().splitlines()
    assert table[0].startswith("number,state,lr") and len(table) == 1 + len(trials)
    for name in ("history.png", "parallel.png"):
        assert (out / name).stat().st_size > 0
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    cfg = stored_config(json.loads((out / "best.json").read_text()), "best.json")[0]
    assert cfg.lr == best.params["lr"] and f"trial {best.number}" in cfg.description
    threads = torch.get_num_threads()  # the worker's thread count: CPU sums are only bitwise equal for it
    torch.set_num_threads(read_json(Path(best.user_attrs["run_dir"]) / "env.json")["torch_threads"])
    try:
        again = train(config=cfg, data_dir=mnist_dir, quiet=True, write_run=False)
    finally:
        torch.set_num_threads(threads)
    assert again.history[again.model_epoch - 1]["val_acc"] == best.value
    assert again.test_acc == best.user_attrs["test_acc"]


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnistlab", "tune", *SMALL, "--space", "lr=5e-4..4e-3:log", *args]


@pytest.mark.slow
def test_journal_study_with_two_jobs_survives_a_killed_worker(cli, mnist_dir, tmp_path):
    out = tmp_path / "study"
    url = str(out / "journal.log")  # the default storage
    cmd = tune_cmd("--epochs", "3", "--pruner", "none", "--trials", "2", "--jobs", "2", "--heartbeat", "3",
                   "--study", "kill", "--out", str(out), "--data-dir", str(mnist_dir))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, killed = kill_a_worker_mid_trial("kill", url, [proc], epochs=3)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "2 worker processes, 1 CPU thread(s) each" in stdout and "was killed by signal 9" in stdout
    assert "study kill: 2 trials finished" in stdout
    trials = check_study("kill", url, 2, killed)
    check_report(cli, "kill", [], out, trials, mnist_dir)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # the study is complete already
    assert again.returncode == 0 and "study kill: 2 trials finished" in again.stdout
    assert len(load("kill", url).get_trials()) == len(trials)


# ---------------------------------------------------------------- a real PostgreSQL server
def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.fail("PostgreSQL's server programs are missing: sh scripts/system-deps.sh installs them")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL cluster in a temp dir, on a free loopback port, stopped at the end. The server
    refuses to run as root, so under root it runs as the `postgres` system user (else `nobody`)."""
    root = Path(tempfile.mkdtemp(prefix="mnistlab-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if "postgres" in {p.pw_name for p in pwd.getpwall()} else "nobody"
        shutil.chown(root, user)
        prefix = ["runuser", "-u", user, "--"]
    data, port = root / "data", _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(_pg_bin("initdb"), "-D", str(data), "-U", "mnistlab", "--auth=trust", "--no-sync")
        run(_pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off", "start")
        try:
            run(_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mnistlab", "tune")
            yield f"postgresql://mnistlab@127.0.0.1:{port}/tune"
        finally:
            run(_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_commands_share_a_postgresql_study_and_survive_a_killed_worker(cli, mnist_dir, tmp_path,
                                                                           postgres_url):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two single-threaded workers on this machine
    common = ["--storage", postgres_url, "--heartbeat", "3", "--data-dir", str(mnist_dir), "--quiet"]
    # Two workers, TPE with successive halving: together exactly 4 finished trials.
    out = tmp_path / "shared"
    cmd = tune_cmd("--space", "epochs=1..2", "--trials", "4", "--study", "shared", "--out", str(out), *common)
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    for w in workers:
        _, stderr = w.communicate(timeout=600)
        assert w.returncode == 0, stderr
    trials = check_study("shared", postgres_url, 4)
    check_report(cli, "shared", ["--storage", postgres_url], out, trials, mnist_dir)

    # Another study: one of two workers killed mid-trial; the other fails its trial by heartbeat and resumes it.
    out = tmp_path / "kill"
    cmd = tune_cmd("--epochs", "3", "--pruner", "none", "--trials", "2", "--study", "kill", "--out", str(out),
                   *common)
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    pid, killed = kill_a_worker_mid_trial("kill", postgres_url, workers, epochs=3)
    for w in workers:
        _, stderr = w.communicate(timeout=600)
        assert w.returncode == (-signal.SIGKILL if w.pid == pid else 0), stderr
    check_study("kill", postgres_url, 2, killed)


def _open_after(barrier, url: str) -> None:
    from mnistlab.experiments.study import open_storage
    barrier.wait()
    open_storage(url, heartbeat=5)


@pytest.mark.slow
def test_workers_started_at_once_on_an_empty_database_all_open_it(postgres_url):
    """Every worker creates the storage's missing tables; started together on an empty database they would
    collide in CREATE TABLE without the schema lock."""
    import multiprocessing

    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE empty_at_start")
    url = postgres_url.rsplit("/", 1)[0] + "/empty_at_start"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    workers = [ctx.Process(target=_open_after, args=(barrier, url)) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * 6
    with psycopg.connect(url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"studies", "trials", "trial_heartbeats"} <= tables
