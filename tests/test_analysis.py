"""The learning-curve analysis on synthetic metric series: every verdict, the noise it weighs differences
against, the continuation that decides question 6 when there is one, the numbers it quotes, its files."""

from __future__ import annotations

import json

import pytest

from mnistlab.lab.analysis import accuracy_table, analyse, table_columns, write_analysis
from mnistlab.tables import pct


def series(train_acc, test_acc, train_loss=None, test_loss=None, val_acc=None, n=10_000):
    k = len(train_acc)
    train_loss = train_loss or [1.0 / (i + 1) for i in range(k)]
    test_loss = test_loss or [1.0 / (i + 1) for i in range(k)]
    rows = [{"epoch": i + 1, "train_acc": train_acc[i], "test_acc": test_acc[i], "train_loss": train_loss[i],
             "test_loss": test_loss[i], "test_n": n} for i in range(k)]
    for i, row in enumerate(rows if val_acc else []):
        row.update(val_acc=val_acc[i], val_loss=test_loss[i], val_n=n)
    return rows


CASES = {
    "still improving": series([96.0, 97.5, 98.3, 98.8, 99.1], [97.0, 97.8, 98.2, 98.5, 98.7]),
    "plateau": series([98.9, 99.2, 99.4, 99.5, 99.55], [98.4, 98.45, 98.5, 98.48, 98.5]),
    "over-fitting": series([98.0, 99.0, 99.5, 99.8, 99.9], [98.3, 98.7, 98.9, 98.6, 98.4],
                           test_loss=[0.06, 0.045, 0.04, 0.05, 0.065]),
    "under-fitting": series([60.0, 72.0, 80.0], [65.0, 75.0, 82.0]),
}


@pytest.mark.parametrize("expected", list(CASES))
def test_each_verdict(expected):
    facts = analyse(CASES[expected])
    assert facts["verdict"] == expected and facts["split"] == "test"  # no validation split: test decides
    assert facts["answer"].startswith("**") and f"({expected}).**" in facts["answer"]


def test_over_fitting_numbers():
    facts = analyse(CASES["over-fitting"])
    assert facts["best_epoch"] == 3 and facts["best_acc"] == 98.9
    assert facts["final_gap"] == pytest.approx(99.9 - 98.4)
    assert facts["gap_growth"] == pytest.approx((99.9 - 98.4) - (99.5 - 98.9))
    assert facts["drop"].exceeds and facts["drop"].value == pytest.approx(-0.5)
    assert "fell from 98.90% (epoch 3) to 98.40%, -0.50 pt, larger than the noise" in facts["answer"]
    assert "stop near epoch 3 (`--early-stop`)" in facts["answer"]


def test_still_improving_quotes_the_trend_and_its_noise():
    facts = analyse(CASES["still improving"])
    assert facts["acc_slope"] == pytest.approx(0.3)  # last 3 epochs: 97.8 -> 98.7
    assert "rose +0.90 pt, larger than the noise (±0.26 pt" in facts["answer"]
    assert facts["best_epoch"] == 5


def test_a_rise_within_the_noise_is_a_plateau():
    # +0.30 pt over 3 epochs is a trend on 10,000 images (noise 0.26 pt) but not on 2,000 (0.58 pt)
    rows = series([99.0, 99.3, 99.5, 99.6], [98.0, 98.1, 98.2, 98.3])
    assert analyse(rows)["verdict"] == "still improving"
    assert analyse(series([99.0, 99.3, 99.5, 99.6], [98.0, 98.1, 98.2, 98.3], n=2_000))["verdict"] == "plateau"


def test_a_small_dip_is_not_over_fitting():
    facts = analyse(series([99.0, 99.3, 99.5], [98.50, 98.62, 98.52]))  # 0.10 pt: within noise
    assert facts["verdict"] == "plateau"


def test_rising_test_loss_at_flat_accuracy_is_over_fitting():
    facts = analyse(series([98.5, 99.2, 99.6, 99.8], [98.4, 98.5, 98.5, 98.45],
                           train_loss=[0.2, 0.08, 0.04, 0.02], test_loss=[0.05, 0.045, 0.05, 0.06]))
    assert facts["verdict"] == "over-fitting"
    assert facts["min_loss_epoch"] == 2 and "lowest at epoch 2 (0.0450)" in facts["answer"]


# The full lab's run: validation loss rising from epoch 2 while accuracy creeps up (the numbers a real run gave).
FULL = dict(train_acc=[95.1, 98.41, 99.07, 99.43, 99.63], test_acc=[97.55, 98.23, 98.31, 98.37, 98.17],
            val_acc=[97.6, 98.2, 98.3, 98.35, 98.3], train_loss=[0.16, 0.05, 0.03, 0.018, 0.011],
            test_loss=[0.074, 0.053, 0.054, 0.056, 0.059])


def continued(base, val, test):
    more = series([99.7, 99.8, 99.85], [t for t in test], val_acc=list(val), train_loss=[0.008, 0.006, 0.005],
                  test_loss=[0.062, 0.064, 0.066])
    for i, row in enumerate(more):
        row["epoch"] = len(base) + i + 1
    return base + more


def test_question_6_agrees_with_the_continuation_within_the_noise():
    base = series(**FULL)
    facts = analyse(base, continued=continued(base, [98.3, 98.35, 98.4], [98.3, 98.35, 98.41]))
    assert facts["split"] == "val" and facts["verdict"] == "plateau"  # the loss alone said over-fitting
    a = facts["answer"]
    assert a.startswith("**Hardly (plateau).** Training this very run on to 8 epochs took validation accuracy from "
                        "98.30% (epoch 5) to 98.40%: +0.10 pt, within the noise")
    assert "More epochs neither clearly help nor hurt." in a and "No (over-fitting)" not in a
    assert "the first sign of over-fitting" in a  # the rising loss is still quoted
    assert "Test accuracy, reported and not used to decide: 98.17% after epoch 5, 98.41% after epoch 8: " \
           "+0.24 pt, within the noise" in a


def test_question_6_follows_a_continuation_beyond_the_noise_either_way():
    base = series(**FULL)
    up = analyse(base, continued=continued(base, [98.5, 98.6, 98.7], [98.5, 98.6, 98.7]))
    assert up["verdict"] == "still improving" and "+0.40 pt, larger than the noise" in up["answer"]
    assert "though accuracy still rises" in up["answer"]
    down = analyse(base, continued=continued(base, [98.1, 98.0, 97.9], [98.1, 98.0, 97.9]))
    assert down["verdict"] == "over-fitting" and "-0.40 pt, larger than the noise" in down["answer"]
    assert "More epochs will not help" in down["answer"]


def test_one_epoch_and_empty():
    assert analyse(series([97.0], [97.5]))["verdict"] == "plateau"
    assert analyse(series([50.0], [60.0]))["verdict"] == "under-fitting"
    with pytest.raises(ValueError):
        analyse([])


def test_table_and_files(tmp_path):
    history = CASES["plateau"]
    table = accuracy_table(history)
    assert [r["epoch"] for r in table] == [1, 2, 3, 4, 5]
    assert table[0]["gap"] == pytest.approx(0.5)
    write_analysis(tmp_path, analyse(history))
    csv_lines = (tmp_path / "accuracy.csv").read_text().splitlines()
    assert csv_lines[0] == "epoch,train_acc,test_acc,train_loss,test_loss,gap" and len(csv_lines) == 6
    assert json.loads((tmp_path / "accuracy.json").read_text())[4]["test_acc"] == 98.5
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["verdict"] == "plateau" and "table" not in saved and saved["rise"]["exceeds_noise"] is False
    with_val = series(**FULL)
    assert table_columns(with_val) == ["epoch", "train_acc", "val_acc", "test_acc", "train_loss", "val_loss",
                                       "test_loss", "gap"]
    assert accuracy_table(with_val)[4]["gap"] == pytest.approx(99.63 - 98.3)  # against validation
    assert pct(98.17) in analyse(with_val)["answer"]
