"""A tuning study's report: study.csv (one row per trial), best.json (the chosen config, for
`mnistlab train --config best.json`), Optuna's matplotlib views as PNGs, and the optuna-dashboard command."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnistlab.errors import ConfigError
from mnistlab.experiments.space import Space
from mnistlab.experiments.study import open_storage, quiet_optuna, retried_from
from mnistlab.files.runs import atomic_path, atomic_write, write_json
from mnistlab.tables import csv_text, pct

PLOTS = {
    "history.png": "plot_optimization_history",
    "importances.png": "plot_param_importances",
    "parallel.png": "plot_parallel_coordinate",
}


@quiet_optuna()
def load(study: str, url: str) -> optuna.Study:
    """An existing study, or a ConfigError naming what is missing."""
    if "://" not in url and not Path(url).exists():
        raise ConfigError(f"--storage {url}: no such journal file")
    try:
        return optuna.load_study(study_name=study, storage=open_storage(url, heartbeat=60))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url, heartbeat=60))]
        raise ConfigError(f"no study {study!r} in {url} (studies there: {', '.join(names) or 'none'})") from None


def rows(study: optuna.Study) -> list[dict[str, Any]]:
    """study.csv: number, state, parameters, validation accuracy after each epoch reached, test accuracy of
    completed trials, seconds, the trial it retries and its run directory."""
    trials = study.get_trials(deepcopy=False)
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    epochs = max((max(t.intermediate_values, default=0) for t in trials), default=0)
    out = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update({k: t.params.get(k, "") for k in names})
        row.update({f"val_acc_{e}": t.intermediate_values.get(e, "") for e in range(1, epochs + 1)})
        row["test_acc"] = t.user_attrs.get("test_acc", "") if t.state == TrialState.COMPLETE else ""
        row["seconds"] = round(t.duration.total_seconds(), 2) if t.duration else ""
        row["retry_of"] = "" if (r := retried_from(t)) is None else r
        row["run_dir"] = t.user_attrs.get("run_dir", "")
        out.append(row)
    return out


def best_config(study: optuna.Study, best: FrozenTrial) -> dict[str, Any]:
    """The best trial's config: the study's preset and fixed overrides with the trial's parameters."""
    recorded = study.user_attrs["mnistlab"]
    cfg = Space(recorded["preset"], recorded["overrides"], ()).config(best.params)
    note = (f"best of tune study {study.study_name}: trial {best.number}, {pct(best.value)} validation accuracy "
            f"({pct(best.user_attrs['test_acc'])} test accuracy, not used to choose)")
    return dataclasses.replace(cfg, description=note).to_dict()


def write_report(study: optuna.Study, url: str, out: str | Path) -> list[str]:
    """Write the report files into `out`; lines telling what was written and how to browse the study."""
    out = Path(out)
    atomic_write(out / "study.csv", csv_text(rows(study)))
    written = ["study.csv"]
    notes = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        write_json(out / "best.json", best_config(study, best))
        written.append("best.json")
    import matplotlib

    for name, plot in PLOTS.items():
        try:
            # Optuna sets a pyplot style: keep it out of the caller's figures. Its warnings (few trials for
            # importances, one value on an axis) become a note on the importances, noise elsewhere.
            with matplotlib.rc_context(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                draw = getattr(optuna.visualization.matplotlib, plot)
                _save(draw(study, target_name="validation accuracy (%)"), out / name)
            written.append(name)
            if name == "importances.png":
                notes += [f"{name}: {m}" for m in dict.fromkeys(str(w.message) for w in caught)]
        except (ValueError, RuntimeError) as e:  # e.g. importances need two completed trials
            notes.append(f"{name} not drawn: {str(e).splitlines()[0]}")
    return [*notes, f"written: {', '.join(str(out / w) for w in written)}",
            f"browse the study: optuna-dashboard {url}  (pip install 'mnistlab[tune]' installs it)"]


def _save(ax: Any, path: Path) -> None:
    """Save the figure of Optuna's matplotlib axes atomically and close it (Optuna draws with pyplot)."""
    import matplotlib.pyplot as plt

    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    try:
        fig.set_size_inches(max(fig.get_figwidth(), 7.0), max(fig.get_figheight(), 4.5))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


@quiet_optuna()
def report(study: str, url: str, out: str | Path) -> list[str]:
    """`mnistlab tune --report`: the report of an existing study, from its storage alone."""
    handle = load(study, url)
    if "mnistlab" not in handle.user_attrs:
        raise ConfigError(f"study {study!r} in {url} was not created by mnistlab tune")
    return write_report(handle, url, out)
