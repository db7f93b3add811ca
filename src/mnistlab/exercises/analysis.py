"""Exercise 1, questions 6 and 7, from a run's per-epoch metrics: the accuracy table and a verdict on
"will the network improve with more epochs, and why", derived from the numbers (never hard-coded).

Verdicts, checked in this order:
    over-fitting     test accuracy fell from its best by more than noise while the train/test gap grew, or test
                     loss has risen from its minimum (by LOSS_RISE) while train loss falls and accuracy is flat
    under-fitting    the model does not fit its own training data yet (train accuracy below UNDERFIT_TRAIN_ACC)
    still improving  test accuracy is still rising by more than PLATEAU_SLOPE points per epoch
    plateau          test accuracy moves less than PLATEAU_SLOPE points per epoch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistlab.files.runs import atomic_write, write_json
from mnistlab.tables import csv_text, pct, pts

PLATEAU_SLOPE = 0.10  # points of test accuracy per epoch below which the curve is flat
UNDERFIT_TRAIN_ACC = 95.0  # train accuracy (percent) below which the model has not fit its training data
DROP_TOL = 0.15  # points: about one standard error of an accuracy near 98.5% on 10,000 test images
LOSS_RISE = 0.05  # relative rise of test loss above its minimum that counts as rising
WINDOW = 3  # epochs used for the recent trend

TABLE_COLUMNS = ["epoch", "train_acc", "test_acc", "train_loss", "test_loss", "gap"]


def accuracy_table(history: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """Question 7: per epoch, train/held-out accuracy and loss and the generalisation gap (train - held-out)."""
    return [{
        "epoch": int(r["epoch"]), "train_acc": r["train_acc"], "test_acc": r[f"{split}_acc"],
        "train_loss": r["train_loss"], "test_loss": r[f"{split}_loss"],
        "gap": r["train_acc"] - r[f"{split}_acc"],
    } for r in history]


def _slope(values: list[float]) -> float:
    """Mean change per epoch over the last WINDOW epochs (0 for a single value)."""
    tail = values[-(WINDOW + 1):]
    return (tail[-1] - tail[0]) / (len(tail) - 1) if len(tail) > 1 else 0.0


def analyse(history: list[dict[str, Any]], split: str = "test") -> dict[str, Any]:
    """Trends, best epoch, gap and its growth, a verdict and a quoted answer to question 6."""
    if not history:
        raise ValueError("analyse needs at least one epoch of metrics")
    table = accuracy_table(history, split)
    test = [r["test_acc"] for r in table]
    train = [r["train_acc"] for r in table]
    gaps = [r["gap"] for r in table]
    best = max(range(len(test)), key=lambda i: (test[i], -i))
    test_loss = [r["test_loss"] for r in table]
    low = min(range(len(test_loss)), key=lambda i: (test_loss[i], i))
    n = len(table)
    facts = {
        "epochs": n,
        "first_test_acc": test[0], "final_test_acc": test[-1],
        "best_test_acc": test[best], "best_epoch": table[best]["epoch"],
        "final_train_acc": train[-1],
        "train_acc_slope": _slope(train), "test_acc_slope": _slope(test),
        "train_loss_slope": _slope([r["train_loss"] for r in table]),
        "test_loss_slope": _slope([r["test_loss"] for r in table]),
        "final_gap": gaps[-1], "gap_growth": gaps[-1] - gaps[best], "gap_change": gaps[-1] - gaps[0],
        "window": min(WINDOW, n - 1),
        "min_test_loss": test_loss[low], "min_test_loss_epoch": table[low]["epoch"], "final_test_loss": test_loss[-1],
    }
    facts["verdict"] = verdict(facts, n)
    facts["answer"] = answer(facts)
    facts["table"] = table
    return facts


def verdict(f: dict[str, Any], n: int) -> str:
    dropped = f["best_test_acc"] - f["final_test_acc"] > DROP_TOL and f["gap_growth"] > DROP_TOL
    loss_rising = (f["final_test_loss"] > f["min_test_loss"] * (1 + LOSS_RISE) and f["train_loss_slope"] < 0
                   and f["test_acc_slope"] <= PLATEAU_SLOPE)
    if n >= 2 and (dropped or loss_rising):
        return "over-fitting"
    if f["final_train_acc"] < UNDERFIT_TRAIN_ACC:
        return "under-fitting"
    if n >= 2 and f["test_acc_slope"] > PLATEAU_SLOPE:
        return "still improving"
    return "plateau"


def answer(f: dict[str, Any]) -> str:
    """Question 6 in words, every number quoted from the metrics."""
    w = f["window"]
    trend = (f"Over the last {w} epoch(s) train accuracy changed by {pts(f['train_acc_slope'])}/epoch and test "
             f"accuracy by {pts(f['test_acc_slope'])}/epoch; train loss by {f['train_loss_slope']:+.4f}/epoch, "
             f"test loss by {f['test_loss_slope']:+.4f}/epoch.")
    best = (f"Test accuracy went from {pct(f['first_test_acc'])} to {pct(f['final_test_acc'])}; the best was "
            f"{pct(f['best_test_acc'])} at epoch {f['best_epoch']} of {f['epochs']}.")
    gap = (f"The generalisation gap (train - test accuracy) is {pts(f['final_gap'])} at the end, "
           f"{pts(f['gap_change'])} since epoch 1.")
    v = f["verdict"]
    if v == "over-fitting":
        why = (f"**No (over-fitting).** Test accuracy has flattened ({pts(f['test_acc_slope'])}/epoch) while the "
               "model memorises the training set: test loss was lowest at epoch "
               f"{f['min_test_loss_epoch']} ({f['min_test_loss']:.4f}) and is {f['final_test_loss']:.4f} now, while "
               f"train loss keeps falling; the gap grew by {pts(f['gap_growth'])} since the best test epoch. More "
               f"epochs will not help: stop near epoch {f['best_epoch']}, or regularise (augmentation, dropout, "
               "weight decay).")
    elif v == "under-fitting":
        why = (f"**Yes (under-fitting).** The model fits only {pct(f['final_train_acc'])} of its own training "
               "images: more epochs (or a larger learning rate/model) will raise both curves.")
    elif v == "still improving":
        why = ("**Yes, a little (still improving).** Test accuracy is still rising by more than "
               f"{PLATEAU_SLOPE:.2f} pt/epoch, so a few more epochs should help, with diminishing returns; "
               "watch the gap, which signals over-fitting when it grows while test accuracy stalls.")
    else:
        why = ("**Hardly (plateau).** Test accuracy moves less than "
               f"{PLATEAU_SLOPE:.2f} pt/epoch: the network has learned what this model and learning rate allow; "
               "more epochs mostly widen the gap. A lower learning rate or a better model moves it further.")
    return " ".join([why, best, trend, gap])


def write_analysis(run_dir: str | Path, facts: dict[str, Any]) -> None:
    """accuracy.csv and accuracy.json (question 7) and analysis.json (question 6) in `run_dir`."""
    run_dir = Path(run_dir)
    atomic_write(run_dir / "accuracy.csv", csv_text(facts["table"], TABLE_COLUMNS))
    write_json(run_dir / "accuracy.json", facts["table"])
    write_json(run_dir / "analysis.json", {k: v for k, v in facts.items() if k != "table"})


def analyse_run(run_dir: str | Path, data_dir: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Questions 6 and 7 for a finished run directory: (facts, evaluation). Writes accuracy.csv/json,
    analysis.json, curves.png, and (through `evaluate_model`) confusion.png, mistakes.png, evaluation.json."""
    from mnistlab.files.runs import read_metrics
    from mnistlab.plots import curves_plot
    from mnistlab.use.evaluate import evaluate_model
    from mnistlab.use.predict import load_model

    run_dir = Path(run_dir)
    history = read_metrics(run_dir)
    facts = analyse(history)
    write_analysis(run_dir, facts)
    curves_plot(history, run_dir / "curves.png", title=f"{run_dir.name}: accuracy and loss per epoch")
    return facts, evaluate_model(load_model(run_dir / "model.safetensors"), "test", data_dir, out=run_dir)
