"""Exercise 1, questions 6 and 7, from a run's per-epoch metrics: the accuracy table and a verdict on
"will the network improve with more epochs, and why", derived from the numbers (never hard-coded).

How long to train is a choice, so question 6 is judged on the held-out split that chooses: validation when the
run has one, else test. Every difference of accuracies is weighed against the noise of an accuracy over that
split's images (stats.Difference). Verdicts, checked in this order:

    over-fitting     held-out accuracy fell from its best by more than the noise while the train/held-out gap
                     grew, or held-out loss has risen from its minimum (by LOSS_RISE) while train loss falls and
                     held-out accuracy no longer rises beyond the noise
    under-fitting    the model does not fit its own training data yet (train accuracy below UNDERFIT_TRAIN_ACC)
    still improving  held-out accuracy rose over the last WINDOW epochs by more than the noise
    plateau          none of these

When the same run was trained further (`continued`: its longer history, e.g. the lab's sweep resuming it), that
measurement answers the question directly and decides: held-out accuracy at the end of the continuation against
the end of this run, higher beyond the noise (still improving), lower beyond it (over-fitting), else plateau
(under-fitting if the model still does not fit its training data); the curve's signs are quoted beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistlab.files.runs import atomic_write, write_json
from mnistlab.stats import Difference, best_epoch
from mnistlab.tables import csv_text, pct, pts

UNDERFIT_TRAIN_ACC = 95.0  # train accuracy (percent) below which the model has not fit its training data
LOSS_RISE = 0.05  # relative rise of held-out loss above its minimum that counts as rising
WINDOW = 3  # epochs used for the recent trend

NAMES = {"val": "validation", "test": "test"}


def table_columns(history: list[dict[str, Any]]) -> list[str]:
    """accuracy.csv's columns: train, validation (when the run has one) and test accuracy and loss, and the gap."""
    splits = ["train", *(["val"] if history and "val_acc" in history[0] else []), "test"]
    return ["epoch", *[f"{s}_acc" for s in splits], *[f"{s}_loss" for s in splits], "gap"]


def accuracy_table(history: list[dict[str, Any]], split: str | None = None) -> list[dict[str, Any]]:
    """Question 7: per epoch, accuracy and loss on each split, and the generalisation gap (train - held-out)."""
    split = split or held_out(history)
    cols = table_columns(history)
    return [{**{c: (int(r[c]) if c == "epoch" else r[c]) for c in cols if c != "gap"},
             "gap": r["train_acc"] - r[f"{split}_acc"]} for r in history]


def held_out(history: list[dict[str, Any]]) -> str:
    """The split question 6 is judged on: "val" when the run holds one out, else "test"."""
    return "val" if history and "val_acc" in history[0] else "test"


def _slope(values: list[float]) -> float:
    """Mean change per epoch over the last WINDOW epochs (0 for a single value)."""
    tail = values[-(WINDOW + 1):]
    return (tail[-1] - tail[0]) / (len(tail) - 1) if len(tail) > 1 else 0.0


def analyse(history: list[dict[str, Any]], split: str | None = None,
            continued: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Trends, best epoch, gap and its growth, the continuation if any, a verdict and a quoted answer to Q6.

    `split` defaults to `held_out(history)`; its image count is read from the rows (`val_n`/`test_n`).
    `continued` is the same run trained for more epochs (its first epochs equal `history`).
    """
    if not history:
        raise ValueError("analyse needs at least one epoch of metrics")
    split = split or held_out(history)
    n = int(history[-1][f"{split}_n"])
    acc = [r[f"{split}_acc"] for r in history]
    loss = [r[f"{split}_loss"] for r in history]
    train = [r["train_acc"] for r in history]
    gaps = [t - a for t, a in zip(train, acc, strict=True)]
    best = best_epoch(acc) - 1
    low = min(range(len(loss)), key=lambda i: (loss[i], i))
    w = min(WINDOW, len(acc) - 1)
    facts: dict[str, Any] = {
        "split": split, "images": n, "epochs": len(history),
        "first_acc": acc[0], "final_acc": acc[-1], "best_acc": acc[best], "best_epoch": best + 1,
        "final_train_acc": train[-1], "final_test_acc": history[-1]["test_acc"],
        "train_acc_slope": _slope(train), "acc_slope": _slope(acc),
        "train_loss_slope": _slope([r["train_loss"] for r in history]), "loss_slope": _slope(loss),
        "rise": Difference(acc[-1], acc[-1 - w], n), "drop": Difference(acc[-1], acc[best], n),
        "final_gap": gaps[-1], "gap_growth": gaps[-1] - gaps[best], "gap_change": gaps[-1] - gaps[0], "window": w,
        "min_loss": loss[low], "min_loss_epoch": low + 1, "final_loss": loss[-1],
        "continuation": continuation(history, continued, split, n),
    }
    facts["verdict"] = verdict(facts)
    facts["answer"] = answer(facts)
    facts["table"] = accuracy_table(history, split)
    return facts


def continuation(history: list[dict[str, Any]], continued: list[dict[str, Any]] | None, split: str,
                 n: int) -> dict[str, Any] | None:
    """The end of the continued run against the end of this one, on the held-out split and on test."""
    if not continued or len(continued) <= len(history):
        return None
    a, b = continued[-1], history[-1]
    return {"epochs": len(continued), "acc": a[f"{split}_acc"], "test_acc": a["test_acc"],
            "difference": Difference(a[f"{split}_acc"], b[f"{split}_acc"], n),
            "test_difference": Difference(a["test_acc"], b["test_acc"], int(a["test_n"]))}


def _loss_rising(f: dict[str, Any]) -> bool:
    return f["final_loss"] > f["min_loss"] * (1 + LOSS_RISE) and f["train_loss_slope"] < 0


def verdict(f: dict[str, Any]) -> str:
    c = f["continuation"]
    if c is not None:
        d = c["difference"]
        if d.exceeds:
            return "still improving" if d.value > 0 else "over-fitting"
        return "under-fitting" if f["final_train_acc"] < UNDERFIT_TRAIN_ACC else "plateau"
    rising = f["rise"].exceeds and f["rise"].value > 0
    dropped = f["drop"].exceeds and f["gap_growth"] > f["drop"].noise
    if f["epochs"] >= 2 and (dropped or (_loss_rising(f) and not rising)):
        return "over-fitting"
    if f["final_train_acc"] < UNDERFIT_TRAIN_ACC:
        return "under-fitting"
    if f["epochs"] >= 2 and rising:
        return "still improving"
    return "plateau"


def answer(f: dict[str, Any]) -> str:
    """Question 6 in words, every number quoted from the metrics."""
    name, w, c, v = NAMES[f["split"]], f["window"], f["continuation"], f["verdict"]
    labels = {"over-fitting": "**No (over-fitting).**", "under-fitting": "**Yes (under-fitting).**",
              "still improving": "**Yes (still improving).**", "plateau": "**Hardly (plateau).**"}
    parts = [labels[v]]
    if c is not None:
        parts.append(f"Training this very run on to {c['epochs']} epochs took {name} accuracy from "
                     f"{pct(f['final_acc'])} (epoch {f['epochs']}) to {pct(c['acc'])}: {c['difference'].words()}.")
        if v == "plateau":
            parts.append("More epochs neither clearly help nor hurt.")
        elif v == "under-fitting" and not c["difference"].exceeds:
            parts.append(f"{f['images']:,} {name} images cannot resolve a smaller change.")
    elif v == "over-fitting" and f["drop"].exceeds:
        parts.append(f"{name.capitalize()} accuracy fell from {pct(f['best_acc'])} (epoch {f['best_epoch']}) to "
                     f"{pct(f['final_acc'])}, {f['drop'].words()}, while the gap grew by "
                     f"{pts(f['gap_growth'])}.")
    elif v in ("over-fitting", "plateau"):
        parts.append(f"Over the last {w} epoch(s) {name} accuracy moved {f['rise'].words()}: it no longer rises.")
    elif v == "still improving":
        parts.append(f"Over the last {w} epoch(s) {name} accuracy rose {f['rise'].words()}, so a few more epochs "
                     "should help, with diminishing returns.")
    if v == "under-fitting":
        parts.append(f"The model fits only {pct(f['final_train_acc'])} of its own training images: more epochs (or "
                     "a larger learning rate or model) will raise both curves.")
    if _loss_rising(f):
        parts.append(f"{name.capitalize()} loss was lowest at epoch {f['min_loss_epoch']} ({f['min_loss']:.4f}) "
                     f"and is {f['final_loss']:.4f} after epoch {f['epochs']} while train loss keeps falling: the "
                     "model grows more confident on the images it gets wrong, the first sign of over-fitting"
                     + (", though accuracy still rises." if v == "still improving" else "."))
    if v == "over-fitting":
        parts.append(f"More epochs will not help: stop near epoch {f['best_epoch']} (`--early-stop`), or "
                     "regularise (augmentation, dropout, weight decay).")
    elif v == "plateau" and c is None:
        parts.append("The network has learned what this model and learning rate allow; a lower learning rate or "
                     "a better model moves it further.")
    parts.append(f"{name.capitalize()} accuracy went from {pct(f['first_acc'])} to {pct(f['final_acc'])}; the best "
                 f"was {pct(f['best_acc'])} at epoch {f['best_epoch']} of {f['epochs']}. The generalisation gap "
                 f"(train - {name} accuracy) is {pts(f['final_gap'])} at the end, {pts(f['gap_change'])} since "
                 "epoch 1.")
    if f["split"] != "test":
        later = f", {pct(c['test_acc'])} after epoch {c['epochs']}: {c['test_difference'].words()}" if c else ""
        parts.append(f"Test accuracy, reported and not used to decide: {pct(f['final_test_acc'])} after epoch "
                     f"{f['epochs']}{later}.")
    return " ".join(parts)


def write_analysis(run_dir: str | Path, facts: dict[str, Any]) -> None:
    """accuracy.csv and accuracy.json (question 7) and analysis.json (question 6) in `run_dir`."""
    run_dir = Path(run_dir)
    atomic_write(run_dir / "accuracy.csv", csv_text(facts["table"]))
    write_json(run_dir / "accuracy.json", facts["table"])
    write_json(run_dir / "analysis.json", _plain({k: v for k, v in facts.items() if k != "table"}))


def _plain(obj: Any) -> Any:
    """`obj` with every Difference replaced by its dict, for JSON."""
    if isinstance(obj, Difference):
        return obj.as_dict()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def analyse_run(run_dir: str | Path, data_dir: str | Path | None = None,
                continued: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Questions 6 and 7 for a finished run directory: (facts, evaluation). Writes accuracy.csv/json,
    analysis.json, curves.png, and (through `evaluate_model`) confusion.png, mistakes.png, evaluation.json."""
    from mnistlab.files.runs import read_metrics
    from mnistlab.inference.evaluate import evaluate_model
    from mnistlab.inference.predict import load_model
    from mnistlab.plots import curves_plot

    run_dir = Path(run_dir)
    history = read_metrics(run_dir)
    facts = analyse(history, continued=continued)
    write_analysis(run_dir, facts)
    curves_plot(history, run_dir / "curves.png", title=f"{run_dir.name}: accuracy and loss per epoch")
    return facts, evaluate_model(load_model(run_dir / "model.safetensors"), "test", data_dir, out=run_dir)
