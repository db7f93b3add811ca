"""`mnistlab lab --quick` end to end on real MNIST: artifacts, notebook, report numbers, HTML, reloads."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from mnistlab.errors import UnsafeFileError
from mnistlab.files.runs import read_metrics
from mnistlab.inference.predict import load_model

ARTIFACTS = [
    "report.md", "report.html", "lab_notebook.ipynb", "lab_notebook.html", "summary.json",
    "notebook/exercise1_accuracy.csv", "notebook/mnist_cnn_state_dict.pt",
    "exercise1/inspect.json", "exercise1/metrics.csv", "exercise1/initial.safetensors", "exercise1/model.safetensors",
    "exercise1/accuracy.csv", "exercise1/accuracy.json", "exercise1/analysis.json", "exercise1/curves.png",
    "exercise1/confusion.png", "exercise1/mistakes.png", "exercise1/filters.png", "exercise1/feature-maps.png",
    "exercise1/mistakes-ig.png",
    "exercise2/sweep.csv", "exercise2/sweep.json", "exercise2/sweep.png",
    "exercise3/compare.csv", "exercise3/compare.md", "exercise3/compare.png", "exercise3/initial.safetensors",
    "exercise3/adam/metrics.csv", "exercise3/sgd/metrics.csv", "exercise3/plain-sgd/metrics.csv",
    "exercise4/model.safetensors", "exercise4/model_state_dict.pt", "exercise4/model_pickled.pt",
    "exercise4/exercise4.json", "exercise4/samples.png",
    "quirks/quirks.json", "quirks/double-softmax/metrics.csv",
]


@pytest.fixture(scope="module")
def lab_run(mnist_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("lab") / "lab"
    r = subprocess.run([sys.executable, "-m", "mnistlab", "lab", "--quick", "--out", str(out), "--data-dir",
                        str(mnist_dir), "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.mark.slow
def test_every_artifact_and_the_terminal_output(lab_run):
    out, r = lab_run
    missing = [a for a in ARTIFACTS if not (out / a).is_file() or (out / a).stat().st_size == 0]
    assert not missing
    for i in range(1, 9):
        assert f"[lab {i}/8]" in r.stdout
    assert "lab answers (quick run)" in r.stdout and "E4 reloaded = original" in r.stdout
    env = json.loads((out / "exercise1/env.json").read_text())  # the report states step 1's training precision
    assert f"training precision: {env['amp_dtype'] or 'fp32'} (`--amp auto`)" in (out / "report.md").read_text()
    seconds = json.loads((out / "summary.json").read_text())["seconds"]  # one entry per step, each counted once
    assert set(seconds) == {"inspect", "exercise1", "exercise2", "exercise3", "exercise4", "quirks", "notebook",
                            "write", "total"}
    before_report = sum(v for k, v in seconds.items() if k not in ("write", "total"))
    assert before_report <= seconds["total"]
    assert f"wall time of the steps before this report: {before_report:.0f} s" in (out / "report.md").read_text()


@pytest.mark.slow
def test_the_plain_pytorch_notebook_ran_with_the_labs_settings_and_is_cross_checked(lab_run):
    out, r = lab_run
    nb = nbformat.read(out / "lab_notebook.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code) and not [o for c in code for o in c.outputs
                                                           if o.output_type == "error"]
    assert "import mnistlab" not in "\n".join(c.source for c in code)  # plain PyTorch
    injected = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "train_subset = 1500" in injected and "val_size = 500" in injected and "epochs = 2" in injected
    with (out / "notebook/exercise1_accuracy.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    report = (out / "report.md").read_text()
    lab_test = read_metrics(out / "exercise1")[-1]["test_acc"]
    nb_test = float(rows[-1]["test_acc"])
    assert f"Final test accuracy: notebook {nb_test:.2f}%, lab {lab_test:.2f}%" in report
    assert ("they **agree**" in report) != ("they **differ**" in report)
    assert "notebook E1 test acc vs lab's" in r.stdout and "lab_notebook.ipynb" in r.stdout
    assert "lab_answers" not in report and not (out / "lab_answers.ipynb").exists()


def test_no_notebook_skips_the_step(cli, tmp_path, monkeypatch):
    from mnistlab.errors import ConfigError
    from mnistlab.lab import runner

    seen = []

    def spy(*args, **kwargs):  # what the CLI asks of the lab; nothing is trained
        seen.append(kwargs["notebook"])
        raise ConfigError("stopped here")

    monkeypatch.setattr(runner, "lab", spy)
    assert cli("lab", "--quick", "--no-notebook", "--out", str(tmp_path / "lab"))[0] == 2
    assert cli("lab", "--quick", "--out", str(tmp_path / "lab"))[0] == 2
    assert seen == [False, True]


def _quoted(values) -> set[str]:
    return {f"{v:.2f}%" for v in values}


@pytest.mark.slow
def test_every_accuracy_in_the_report_comes_from_a_metrics_file(lab_run):
    out, _ = lab_run
    report = (out / "report.md").read_text()
    known: set[str] = set()
    for path in out.rglob("metrics.jsonl"):
        known |= _quoted(v for row in read_metrics(path.parent) for k, v in row.items() if k.endswith("_acc"))
    for row in csv.DictReader((out / "exercise2/sweep.csv").open()):
        known |= _quoted(float(row[k]) for k in ("val_acc", "test_acc", "best_val_acc", "final_train_acc"))
    quirks = json.loads((out / "quirks/quirks.json").read_text())
    known |= _quoted([quirks["exact_test_acc"], quirks["notebook_test_acc"]])
    for row in csv.DictReader((out / "notebook/exercise1_accuracy.csv").open()):  # the notebook's own table
        known |= _quoted(float(row[k]) for k in ("train_acc", "val_acc", "test_acc"))
    quoted = re.findall(r"\d+\.\d+%", report)
    assert len(quoted) > 20
    assert set(quoted) <= known
    # The question-7 table is exactly exercise1/metrics: one row per epoch, train, validation and test accuracy.
    m = read_metrics(out / "exercise1")
    for row in m:
        line = f"| {row['epoch']} | {row['train_acc']:.2f}% | {row['val_acc']:.2f}% | {row['test_acc']:.2f}% |"
        assert line in report
    # Exercise 3: Adam's numbers are step 1's, not a new run; Exercise 2 continued step 1's run (resumed).
    assert read_metrics(out / "exercise3/adam") == m
    assert read_metrics(out / "exercise2/lr0.001-b32-e3")[: len(m)] == m
    assert "Training this very run on to 3 epochs took validation accuracy from" in report


@pytest.mark.slow
def test_exercise_2_and_question_6_choose_on_validation(lab_run):
    out, r = lab_run
    report = (out / "report.md").read_text()
    saved = json.loads((out / "exercise2/sweep.json").read_text())
    rows = saved["rows"]
    assert saved["chosen_by"] == "val_acc" and all(x["val_acc"] <= saved["best"]["val_acc"] for x in rows)
    assert all(read_metrics(Path(x["run_dir"]))[0]["val_n"] == 500 for x in rows)  # the held-out images
    assert "The setting is **chosen by validation accuracy** (the last 500 training images" in report
    assert saved["summary"][-2].startswith("chosen by validation accuracy") and saved["summary"][-2] in report
    assert "**Validation policy.**" in report and "Exercise 1 trains on 1,000 images" in report
    q6 = json.loads((out / "exercise1/analysis.json").read_text())
    assert q6["split"] == "val" and q6["images"] == 500 and q6["continuation"]["epochs"] == 3
    d = q6["continuation"]["difference"]
    assert d["exceeds_noise"] == (abs(d["difference"]) > d["noise"])
    assert q6["verdict"] in ("under-fitting", "still improving", "plateau", "over-fitting")
    assert ("larger than the noise" if d["exceeds_noise"] else "within the noise") in q6["answer"]
    assert "E2 chosen on validation" in r.stdout


@pytest.mark.slow
def test_html_is_self_contained_with_tables_and_images(lab_run):
    out, _ = lab_run
    page = (out / "report.html").read_text()
    assert page.count("<table>") >= 8
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (out / "report.md").read_text())
    assert len(images) == len(figures) >= 6 and all(src.startswith("data:image/png;base64,") for src in images)
    assert all((out / f).is_file() for f in figures)  # report.md's relative links resolve
    for figure in ("exercise1/filters.png", "exercise1/feature-maps.png", "exercise1/mistakes-ig.png"):
        assert figure in figures  # question 4 shows the learned filters; the mistakes are explained
    assert "http://" not in page and "https://" not in page
    assert "TRUSTED SOURCES ONLY" in page


@pytest.mark.slow
def test_reloaded_predictions_equal_the_originals(lab_run, mnist_dir):
    out, _ = lab_run
    ex4 = json.loads((out / "exercise4/exercise4.json").read_text())
    assert ex4["all_equal"] and {f["format"] for f in ex4["formats"]} == {"safetensors", "state_dict", "pickle"}
    assert all(f["probabilities_equal"] and f["fresh_object"] for f in ex4["formats"])
    # Independently: every saved file gives the trained run's exact probabilities.
    images = torch.rand(16, 28, 28, generator=torch.Generator().manual_seed(0))
    original = load_model(out / "exercise1/model.safetensors").probabilities(images)
    for name in ("model.safetensors", "model_state_dict.pt"):
        assert torch.equal(load_model(out / "exercise4" / name).probabilities(images), original)
    with pytest.raises(UnsafeFileError):
        load_model(out / "exercise4/model_pickled.pt")
    trusted = load_model(out / "exercise4/model_pickled.pt", trust_pickle=True)
    assert torch.equal(trusted.probabilities(images), original)
    for s in ex4["samples"]:
        assert s["prediction"] in range(10) and 0 < s["probability"] <= 1


@pytest.mark.slow
def test_quirks_are_measured(lab_run):
    out, _ = lab_run
    q = json.loads((out / "quirks/quirks.json").read_text())
    assert q["double_softmax"][0]["double_train_loss"] > q["softmax_floor"] > 1.46
    assert q["double_softmax"][0]["double_train_loss"] > q["double_softmax"][0]["normal_train_loss"]
    assert q["batches"] == 313 and q["last_batch"] == 16
    # sum of per-batch percentages of full batches / 312 = correct / 9984 instead of correct / 10000
    assert q["notebook_test_acc"] == pytest.approx(q["exact_test_acc"] * 10000 / 9984)


def test_python_api_names():
    import mnistlab
    import mnistlab.inference.predict
    import mnistlab.lab.inspect  # importing the submodules does not shadow the API's functions
    import mnistlab.lab.runner
    from mnistlab.experiments.compare import compare
    from mnistlab.experiments.sweep import sweep
    from mnistlab.inference.evaluate import evaluate_model
    from mnistlab.inference.predict import load_model

    assert mnistlab.inspect("notebook")["batch_size"] == 32
    assert mnistlab.compare is compare and mnistlab.sweep is sweep and mnistlab.load is load_model
    assert mnistlab.evaluate is evaluate_model and mnistlab.predict is mnistlab.inference.predict
    assert callable(mnistlab.train) and callable(mnistlab.lab) and mnistlab.predict.classify_images
