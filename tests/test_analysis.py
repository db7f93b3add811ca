"""The learning-curve analysis on synthetic metric series: every verdict, the numbers it quotes, its files."""

from __future__ import annotations

import json

import pytest

from mnistlab.exercises.analysis import accuracy_table, analyse, write_analysis
from mnistlab.tables import pct


def series(train_acc, test_acc, train_loss=None, test_loss=None):
    n = len(train_acc)
    train_loss = train_loss or [1.0 / (i + 1) for i in range(n)]
    test_loss = test_loss or [1.0 / (i + 1) for i in range(n)]
    return [{"epoch": i + 1, "train_acc": train_acc[i], "test_acc": test_acc[i], "train_loss": train_loss[i],
             "test_loss": test_loss[i]} for i in range(n)]


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
    assert facts["verdict"] == expected
    assert facts["answer"].startswith("**") and f"({expected}).**" in facts["answer"]


def test_over_fitting_numbers():
    facts = analyse(CASES["over-fitting"])
    assert facts["best_epoch"] == 3 and facts["best_test_acc"] == 98.9
    assert facts["final_gap"] == pytest.approx(99.9 - 98.4)
    assert facts["gap_growth"] == pytest.approx((99.9 - 98.4) - (99.5 - 98.9))
    assert "epoch 3" in facts["answer"] and pct(98.9) in facts["answer"] and pct(98.4) in facts["answer"]


def test_still_improving_quotes_the_trend():
    facts = analyse(CASES["still improving"])
    # last 3 epochs: test 97.8 -> 98.7 = +0.30 pt/epoch
    assert facts["test_acc_slope"] == pytest.approx(0.3)
    assert "+0.30 pt/epoch" in facts["answer"]
    assert facts["best_epoch"] == 5


def test_a_small_dip_is_not_over_fitting():
    facts = analyse(series([99.0, 99.3, 99.5], [98.50, 98.62, 98.52]))  # 0.10 pt: within noise
    assert facts["verdict"] == "plateau"


def test_rising_test_loss_at_flat_accuracy_is_over_fitting():
    facts = analyse(series([98.5, 99.2, 99.6, 99.8], [98.4, 98.5, 98.5, 98.45],
                           train_loss=[0.2, 0.08, 0.04, 0.02], test_loss=[0.05, 0.045, 0.05, 0.06]))
    assert facts["verdict"] == "over-fitting"
    assert facts["min_test_loss_epoch"] == 2 and "lowest at epoch 2 (0.0450)" in facts["answer"]


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
    assert saved["verdict"] == "plateau" and "table" not in saved
