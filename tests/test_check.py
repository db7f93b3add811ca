"""`mnistlab check`: handed-in notebooks built here (mnistlab's own with an execution's outputs, then altered; one
in the layout of the lab's original) checked without running them, and real weights scored on the test set."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from handin import HISTORY, mnistlab_notebook, original_notebook, write
from nbformat.v4 import new_output, new_raw_cell

from mnistlab.grading import QUESTIONS
from mnistlab.grading.checks import check_notebook


def check(cli, path, *args):
    code, out, err = cli("check", str(path), "--json", *args)
    return code, (json.loads(out) if out.strip() else None), err


def test_mnistlab_notebook_as_executed_is_ok(cli, tmp_path):
    code, report, _ = check(cli, write(mnistlab_notebook(), tmp_path / "ada" / "mnist_lab.ipynb"))
    assert code == 0 and report["status"] == "ok"
    assert set(report) == {"notebook", "executed", "in_order", "errors", "questions", "weights", "status"}
    assert list(report["questions"]) == list(QUESTIONS)
    assert all(set(q) == {"status", "answer", "found", "evidence"} for q in report["questions"].values())
    statuses = {k: q["status"] for k, q in report["questions"].items()}
    assert statuses == {**{k: "ok" for k in QUESTIONS}, "1.6": "review"}
    assert report["executed"] and report["in_order"] and report["errors"] == [] and report["weights"] is None
    q = report["questions"]
    assert q["1.1"]["found"] == 32 and q["1.2"]["found"] == 5 and q["1.3"]["found"] == 3
    assert q["1.5"]["found"] == {"name": "Adam", "lr": 0.001}
    assert [row["test"] for row in q["1.7"]["found"]] == [te for _, _, te in HISTORY]
    assert "train_acc 95.10%" in q["1.6"]["evidence"][0]  # the per-epoch numbers, for the person who reads it


def _answer_cell(nb, starts):
    return next(c for c in nb.cells if "answer" in c.metadata.get("tags", []) and starts in c.outputs[0].data[
        "text/markdown"])


def test_an_inflated_answer_is_a_mismatch_naming_both_values(cli, tmp_path):
    nb = mnistlab_notebook()
    cell = _answer_cell(nb, "**Q7.")
    md = cell.outputs[0].data["text/markdown"]
    cell.outputs[0].data["text/markdown"] = md.replace("- epoch 3: train 99.07%, validation 98.30%, test 98.31%",
                                                       "- epoch 3: train 99.07%, validation 98.30%, test 99.21%")
    code, report, _ = check(cli, write(nb, tmp_path / "nb.ipynb"))
    assert code == 1 and report["status"] == "findings"
    q7 = report["questions"]["1.7"]
    assert q7["status"] == "mismatch"
    assert q7["evidence"][0] == "the answer says 99.21, epoch 3 printed 98.31"
    assert report["questions"]["1.1"]["status"] == "ok"


def test_wrong_settings_are_mismatches(cli, tmp_path):
    nb = original_notebook(answers={"1.1": "64", "1.2": "10 epochs", "1.3": "4 layers", "1.5": "SGD, lr 0.01"})
    code, report, _ = check(cli, write(nb, tmp_path / "nb.ipynb"))
    q = report["questions"]
    assert code == 1
    assert q["1.1"]["status"] == "mismatch" and q["1.1"]["evidence"][0] == "the answer says 64, the code uses 32"
    assert q["1.2"]["evidence"][0] == "the answer says 10, the code sets 5 and cell 7 printed 5 epochs"
    assert q["1.3"]["status"] == "mismatch" and "the answer says 4" in q["1.3"]["evidence"][0]
    assert q["1.5"]["status"] == "mismatch" and "the code uses Adam" in q["1.5"]["evidence"][0]


def test_a_count_of_modules_or_forward_steps_is_accepted_when_stated(tmp_path):
    for answer in ("3", "three layers with weights", "7 layers, counting the activations, flatten and softmax"):
        report = check_notebook(write(original_notebook(answers={"1.3": answer}), tmp_path / "nb.ipynb"))
        assert report["questions"]["1.3"]["status"] == "ok", answer


def test_a_cleared_output_an_error_and_cells_out_of_order(cli, tmp_path):
    nb = mnistlab_notebook()
    train = next(c for c in nb.cells if c.source.startswith("history = fit("))
    train.outputs, train.execution_count = [], None  # Jupyter's "clear output"
    code, report, _ = check(cli, write(nb, tmp_path / "cleared.ipynb"))
    assert code == 1 and not report["executed"] and report["in_order"]
    assert report["questions"]["1.7"]["status"] == "mismatch"  # the numbers it quotes were never printed

    nb = mnistlab_notebook()
    broken = next(c for c in nb.cells if c.source.startswith("sgd_runs = {}"))
    broken.outputs.append(new_output("error", ename="RuntimeError", evalue="CUDA out of memory", traceback=[]))
    code, report, _ = check(cli, write(nb, tmp_path / "error.ipynb"))
    assert code == 1 and report["errors"] == [{"cell": nb.cells.index(broken) + 1, "ename": "RuntimeError"}]

    nb = mnistlab_notebook()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    code_cells[3].execution_count, code_cells[4].execution_count = 40, 41  # re-ran two cells later on
    code, report, _ = check(cli, write(nb, tmp_path / "order.ipynb"))
    assert code == 1 and report["executed"] and not report["in_order"]


def test_the_original_layout_with_answers_in_both_forms(tmp_path):
    for form in ("list", "cells"):
        report = check_notebook(write(original_notebook(form), tmp_path / form / "nb.ipynb"))
        statuses = {k: q["status"] for k, q in report["questions"].items()}
        assert statuses == {**{k: "ok" for k in QUESTIONS}, "1.6": "review"}, form
        assert report["questions"]["1.7"]["found"][0] == {"epoch": 0, "train": 90.03}
    nb = original_notebook("list")
    nb.cells[-1] = new_raw_cell(nb.cells[-1].source)  # answers in a raw cell
    report = check_notebook(write(nb, tmp_path / "raw.ipynb"))
    assert report["status"] == "ok"


def test_a_missing_answer_and_an_inflated_train_accuracy(cli, tmp_path):
    nb = original_notebook("cells")
    nb.cells = [c for c in nb.cells if not c.source.startswith("## Exercise 3")]
    q7 = next(c for c in nb.cells if c.source.startswith("Exercise 1.7"))
    q7.source = "Exercise 1.7 90.03, 97.31, 98.21, 99.21, 98.96"
    code, report, _ = check(cli, write(nb, tmp_path / "nb.ipynb"))
    assert code == 1
    assert report["questions"]["3"]["status"] == "missing"
    assert report["questions"]["1.7"]["evidence"][0] == "the answer says 99.21, epoch 3 printed 98.71"


def test_unreadable_input_is_one_line_and_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    code, out, err = cli("check", str(bad))
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, _, err = cli("check", str(tmp_path / "none.ipynb"))
    assert code == 2 and "not found" in err
    good = write(original_notebook(), tmp_path / "good.ipynb")
    code, _, err = cli("check", str(good), "--weights", str(tmp_path / "none.pt"))
    assert code == 2 and err.startswith("error: ")


def test_the_human_table_has_a_row_per_question(cli, tmp_path):
    nb = original_notebook(answers={"1.1": "64"})
    code, out, _ = cli("check", str(write(nb, tmp_path / "nb.ipynb")))
    assert code == 1
    for q in QUESTIONS:
        assert f"│ {q} " in out
    assert "MISMATCH" in out and "status: findings" in out


# ----------------------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def weights(trained_run, mnist_dir):
    """(state_dict, correct answers on the 10,000 test images, computed here by a plain loop)."""
    from mnistlab.data import load_split
    from mnistlab.inference.predict import load_model

    model = load_model(trained_run).model
    images, labels = load_split("mnist", "test", mnist_dir)
    with torch.no_grad():
        correct = sum(int((model(x.float().div(255).unsqueeze(1)).argmax(1) == y).sum())
                      for x, y in zip(images.split(500), labels.split(500), strict=True))
    return model.state_dict(), correct


def _original_formula(correct: int) -> float:
    """The lab's original helper on batches of 32 over 10,000 images: summed per-batch percentages of 32,
    divided by the last batch's index (312)."""
    return 100.0 * correct / 32 / 312


def test_weights_under_the_originals_formula_are_compared_with_that_formula(cli, tmp_path, weights):
    state, correct = weights
    honest = f"{_original_formula(correct):.2f}"
    folder = tmp_path / "student"
    write(original_notebook(test_acc=honest), folder / "nb.ipynb")
    torch.save(state, folder / "model_weights.pth")  # found beside the notebook
    code, report, _ = check(cli, folder / "nb.ipynb")
    w = report["weights"]
    assert w["status"] == "ok" and w["test_acc"] == pytest.approx(correct / 100, abs=1e-9)
    assert float(honest) in w["claimed"] and code == 0
    assert any("divided by the last batch's index" in e and honest in e for e in w["evidence"])
    exact = f"{correct / 100:.2f}"
    write(original_notebook(test_acc=f"{correct / 100 + 1:.2f}"), folder / "nb.ipynb")
    code, report, _ = check(cli, folder / "nb.ipynb")
    assert code == 1 and report["weights"]["status"] == "mismatch"
    assert report["weights"]["evidence"][0].startswith(f"the weights score {honest}%, the nearest test accuracy")
    assert exact != honest


def test_mnistlab_notebook_with_its_saved_weights(cli, tmp_path, weights):
    state, correct = weights
    folder = tmp_path / "student"
    write(mnistlab_notebook(chosen_test=correct / 100), folder / "mnist_lab.ipynb")
    (folder / "mnist_lab_outputs").mkdir()
    torch.save(state, folder / "mnist_lab_outputs" / "mnist_cnn_state_dict.pt")
    code, report, _ = check(cli, folder / "mnist_lab.ipynb")
    assert code == 0 and report["weights"]["status"] == "ok"
    assert not any("last batch" in e for e in report["weights"]["evidence"])  # mnistlab's notebook counts exactly


class Planted:
    """Unpickling this would create a file: the proof that a pickle was (not) unpickled."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (str(self.flag), "w"))


def test_a_pickled_model_is_refused_unopened_and_a_wrong_shape_named(cli, tmp_path, weights):
    state, _ = weights
    nb = write(original_notebook(), tmp_path / "nb.ipynb")
    flag = tmp_path / "unpickled"
    torch.save({"model": Planted(flag), **state}, tmp_path / "whole.pt", pickle_module=pickle)
    code, report, _ = check(cli, nb, "--weights", str(tmp_path / "whole.pt"))
    assert report["weights"]["status"] == "refused" and not flag.exists()
    assert code == 0  # said, not counted: the lab itself asks for the entire model
    assert "refused and not unpickled" in report["weights"]["evidence"][0]
    wide = dict(state, **{"d1.weight": torch.zeros(64, 21632), "d1.bias": torch.zeros(64)})
    torch.save(wide, tmp_path / "wide.pt")
    code, report, _ = check(cli, nb, "--weights", str(tmp_path / "wide.pt"))
    assert report["weights"]["status"] == "refused"
    assert report["weights"]["evidence"] == ["wide.pt is not the lab's network: its d1.weight is (64, 21632), the "
                                             "lab's network has (128, 21632)"]


def test_printed_lines_are_read_with_their_rounding(tmp_path):
    nb = original_notebook(answers={"1.7": "90.0, 97.3, 98.2, 98.7, 99.0"})
    report = check_notebook(write(nb, tmp_path / "nb.ipynb"))
    assert report["questions"]["1.7"]["status"] == "ok"
    nb = original_notebook(answers={"1.7": "90.0, 97.3, 98.2, 98.8, 99.0"})
    report = check_notebook(write(nb, tmp_path / "nb.ipynb"))
    assert report["questions"]["1.7"]["status"] == "mismatch"
