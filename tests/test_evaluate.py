"""`mnistlab evaluate`: accuracy, per-class accuracy, confusion matrix and the worst mistakes of a saved model."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from mnistlab.data import load_split
from mnistlab.files.checkpoints import save_model
from mnistlab.files.runs import read_metrics
from mnistlab.inference.evaluate import confusion_matrix, evaluate_model
from mnistlab.inference.predict import load_model
from mnistlab.plots import confusion_plot, mistakes_plot


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_evaluate_a_run(trained_run, mnist_dir, tmp_path, cli):
    out = tmp_path / "eval"
    code, text, _ = cli("evaluate", "--model", str(trained_run), "--out", str(out), "--data-dir", str(mnist_dir))
    assert code == 0
    result = json.loads((out / "evaluation.json").read_text())
    # the same weights, the same 10,000 images, fp32 both times: the accuracy training recorded, exactly
    assert result["accuracy"] == read_metrics(trained_run)[-1]["test_acc"]
    assert f"test accuracy {result['accuracy']:.2f}% ({result['correct']:,}/10,000)" in text
    cm = torch.tensor(result["confusion"])
    labels = load_split("mnist", "test", mnist_dir)[1]
    assert cm.shape == (10, 10) and cm.sum() == 10_000 and cm.diag().sum() == result["correct"]
    assert cm.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()  # 980 zeros, 1135 ones, ...
    for c, row in enumerate(result["per_class"]):
        assert row["images"] == int(cm[c].sum()) and row["accuracy"] == pytest.approx(100 * cm[c, c] / cm[c].sum())
    mistakes = result["mistakes"]
    assert len(mistakes) == 24 and all(m["prediction"] != m["label"] for m in mistakes)
    assert all(labels[m["index"]] == m["label"] for m in mistakes)
    confidences = [m["confidence"] for m in mistakes]
    assert confidences == sorted(confidences, reverse=True) and confidences[0] > 0.5
    for name in ("confusion.png", "mistakes.png"):
        assert Image.open(out / name).format == "PNG" and str(out / name) in text


def test_a_bf16_run_records_what_evaluate_prints(mnist_dir, tmp_path, cli):
    """Trained under bf16 autocast (emulated on a CPU without native bf16: the code a bf16 machine runs), the
    run's recorded test accuracy is its saved weights scored in fp32: what `mnistlab evaluate` prints."""
    run = tmp_path / "run"
    code, out, _ = cli("train", "--preset", "fast", "--subset", "1000", "--amp", "bf16", "--device", "cpu",
                       "--data-dir", str(mnist_dir), "--out", str(run))
    assert code == 0 and "precision: training in bf16 autocast, evaluation in fp32 (--amp bf16 on cpu" in out
    env = json.loads((run / "env.json").read_text())
    assert env["amp_dtype"] == "bf16" and isinstance(env["cpu_native_bf16"], bool)
    with open(run / "metrics.csv", newline="") as f:
        last = float(list(csv.DictReader(f))[-1]["test_acc"])
    code, text, _ = cli("evaluate", "--model", str(run / "model.safetensors"), "--out", str(tmp_path / "eval"),
                        "--data-dir", str(mnist_dir))
    assert code == 0 and f"test accuracy {last:.2f}% (" in text
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["accuracy"] == last
    assert load_model(run).test_acc == last  # the model file's metadata says the same


def test_evaluate_default_out_dir_and_other_formats(trained_run, mnist_dir, tmp_path, cli):
    loaded = load_model(trained_run)
    model_file = save_model(loaded.model, tmp_path / "digits.pt", loaded.meta)
    code, out, _ = cli("evaluate", "--model", str(model_file), "--worst", "5", "--format", "json",
                       "--data-dir", str(mnist_dir))
    assert code == 0
    result = json.loads((tmp_path / "digits-evaluation" / "evaluation.json").read_text())
    assert json.loads(out) == result
    assert len(result["mistakes"]) == 5 and result["format"] == "state_dict"
    again = evaluate_model(loaded, data_dir=mnist_dir)  # no out: numbers only, no files
    assert again["confusion"] == result["confusion"] and again["files"] == {}


def test_plots_are_reusable(tmp_path):
    cm = torch.randint(0, 50, (10, 10))
    assert confusion_plot(cm, tmp_path / "cm.png").exists()
    assert confusion_plot(cm[:3, :3].numpy(), tmp_path / "cm3.png", class_names=["cat", "dog", "eel"]).exists()
    images = torch.rand(5, 28, 28)
    out = mistakes_plot(images, [1, 2, 3, 4, 5], [7, 7, 7, 7, 7], [0.9, 0.8, 0.7, 0.6, 0.5], tmp_path / "m.png")
    assert Image.open(out).size[0] > 100
