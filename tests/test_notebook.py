"""The lab notebook: plain PyTorch, generated from its source, executed by a real Jupyter kernel."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nbformat
import pytest

from mnistlab.lab import notebook as lab_notebook
from mnistlab.lab.notebook import QUICK, NotebookError, execute, notebook_json

ROOT = Path(__file__).resolve().parents[1]


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_committed_notebook_is_what_its_source_makes():
    committed = (ROOT / lab_notebook.COMMITTED).read_text()
    assert committed == notebook_json(), "regenerate it: mnistlab notebook --out notebooks/mnist_lab.ipynb"
    nb = nbformat.reads(committed, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["accelerator"] == "GPU" and nb.metadata["kernelspec"]["name"] == "python3"
    assert all(c.outputs == [] and c.execution_count is None for c in _code(nb))
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    assert sum("answer" in c.metadata.get("tags", []) for c in nb.cells) >= 5
    import papermill  # papermill reads every parameter (a line it cannot parse would warn at each execution)

    found = papermill.inspect_notebook(str(ROOT / lab_notebook.COMMITTED))
    assert set(QUICK) | {"device_name", "data_dir", "bf16", "out_dir", "progress_bars", "seed", "lr"} <= set(found)
    assert all(p["help"] for p in found.values())


def test_the_notebook_teaches_plain_pytorch():
    nb = nbformat.reads(notebook_json(), as_version=4)
    source = "\n".join(c.source for c in _code(nb))
    imported = set(re.findall(r"^\s*(?:from|import) ([\w.]+)", source, re.M))
    assert {m.split(".")[0] for m in imported} <= {"copy", "gzip", "os", "platform", "struct", "time", "pathlib",
                                                   "matplotlib", "numpy", "torch", "IPython", "tqdm", "torchvision"}
    for needed in ("class NnDigitsClassifier(nn.Module)", "def train_one_epoch(", "def evaluate(",
                   "optimizer.zero_grad()", "TensorDataset(", "DataLoader(", "torch.save(chosen.state_dict()",
                   "weights_only=True", "copy.deepcopy(model.state_dict())", "torch.optim.SGD(", "0x00000803"):
        assert needed in source, needed


def test_writing_it_and_the_cli_errors(cli, tmp_path, monkeypatch):
    code, out, _ = cli("notebook", "--out", str(tmp_path / "nb.ipynb"))
    assert code == 0 and (tmp_path / "nb.ipynb").read_text() == notebook_json() and "Colab" in out
    code, _, err = cli("notebook", "--quick")
    assert code == 2 and err.startswith("error: --quick, --device, --amp and --data-dir only apply with --execute")
    code, _, err = cli("notebook", "--execute", "--out", str(tmp_path / "nb.txt"))
    assert code == 2 and "must end in .ipynb" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("notebook", "--execute", "--device", "tpu", "--out", str(tmp_path / "x.ipynb"))
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    real = lab_notebook.importlib.util.find_spec
    monkeypatch.setattr(lab_notebook.importlib.util, "find_spec", lambda m: None if m == "papermill" else real(m))
    code, _, err = cli("notebook", "--execute", "--out", str(tmp_path / "y.ipynb"))
    assert code == 2 and err.strip() == "error: the lab notebook needs papermill: pip install 'mnistlab[lab]'"
    code, _, err = cli("lab", "--quick", "--out", str(tmp_path / "lab"))  # checked before any training
    assert code == 2 and "mnistlab[lab]" in err and not (tmp_path / "lab" / "exercise1").exists()


def _outputs_text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(o.data.get("text/markdown") or o.data.get("text/plain", ""))
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
    return "\n".join(parts)


def test_missing_data_says_how_to_get_it(cli, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = tmp_path / "nb.ipynb"
    code, _, err = cli("notebook", "--execute", "--data-dir", str(empty), "--device", "cpu", "--out", str(out))
    assert code == 2
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: the notebook failed in cell ")
    assert "SystemExit: MNIST not found" in line and "mnistlab data fetch" in line and str(out) in line
    nb = nbformat.read(out, as_version=4)  # the partly executed notebook is kept, with the message
    text = "\n".join(_outputs_text(c) for c in _code(nb))
    assert f"missing in {empty / 'mnist'}" in text and "download = True" in text and "Traceback" not in text
    assert out.with_suffix(".html").is_file()


def test_a_failing_cell_names_the_cell_and_keeps_the_notebook(mnist_dir, tmp_path):
    out = tmp_path / "nb.ipynb"
    with pytest.raises(NotebookError) as e:
        execute(out, parameters={"batch_size": 0, "data_dir": str(mnist_dir), "device_name": "cpu",
                                 "train_subset": 1500, "val_size": 500})
    message = str(e.value)
    assert re.match(r"the notebook failed in cell \d+ \(execution count \d+\): ValueError: batch_size", message)
    assert "\n" not in message and out.is_file() and not list(tmp_path.glob(".nb.*"))


def test_the_epoch_lines_reach_the_terminal_as_they_are_printed():
    said: list[str] = []
    sink = lab_notebook.EpochLines(said.append)
    sink.write("torch 2.x; outputs in /tmp\nadam epoch 1: train_acc 90.03%, val_acc 95.1")  # a line in two writes
    assert said == []
    sink.write("0%, train loss 0.3100 (4.2 s)\nQ1 batch size: 32\nsgd momentum=0.9 epoch 12: test_acc 97.00%\n")
    assert said == ["adam epoch 1: train_acc 90.03%, val_acc 95.10%, train loss 0.3100 (4.2 s)",
                    "sgd momentum=0.9 epoch 12: test_acc 97.00%"]


@pytest.fixture(scope="module")
def executed(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("notebook") / "mnist_lab.ipynb"
    params = lab_notebook.parameters_for(quick=True, device="cpu", data_dir=mnist_dir, amp="off")
    echoed: list[str] = []
    done = execute(out, parameters=params, echo=echoed.append)
    done.echoed = echoed
    return done, nbformat.read(out, as_version=4)


@pytest.mark.slow
def test_every_cell_runs_and_exercise_1_is_saved_per_epoch(executed):
    done, nb = executed
    assert all(c.execution_count for c in _code(nb))
    assert not [o for c in _code(nb) for o in c.outputs if o.output_type == "error"]
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    with (done.outputs / "exercise1_accuracy.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, QUICK["epochs"] + 1))
    # each epoch's line reached the caller while the notebook ran (what `mnistlab lab` prints), as printed there
    first = [line for line in done.echoed if line.startswith("adam epoch ")][: QUICK["epochs"]]
    assert [line.split(":")[0] for line in first] == [f"adam epoch {e}" for e in range(1, QUICK["epochs"] + 1)]
    printed = "".join(o.get("text", "") for c in _code(nb) for o in c.outputs if o.output_type == "stream")
    assert all(line in printed for line in done.echoed)
    assert len(done.exercise1) == QUICK["epochs"] and done.test_acc == float(rows[-1]["test_acc"])
    assert done.html.is_file() and "NnDigitsClassifier" in done.html.read_text()
    for name in ("exercise1_curves.png", "exercise2_validation.png", "exercise3_optimizers.png",
                 "exercise4_samples.png", "mnist_cnn_state_dict.pt"):
        assert (done.outputs / name).stat().st_size > 0


@pytest.mark.slow
def test_reload_equals_and_the_optimizers_share_their_start(executed):
    _, nb = executed
    text = "\n".join(_outputs_text(c) for c in _code(nb))
    assert "reloaded outputs equal the original's on 256 test images: True" in text
    assert "SGD runs start from Adam's initial weights: True" in text
    assert "weights_only=True refuses it" in text and "outputs equal: True" in text
    assert "parameters: 2,770,634" in text


def _numbers(text: str) -> set[str]:
    """The numbers quoted in `text`, less the labels "Exercise 4", "question 7", "Q7"."""
    found = re.findall(r"(?<![\w.])(?<!Exercise )(?<!question )\d[\d,]*(?:\.\d+)?(?:e-\d+)?", text)
    return {n.replace(",", "") for n in found}


@pytest.mark.slow
def test_every_number_in_the_answers_was_printed_above(executed):
    _, nb = executed
    answers = [c for c in nb.cells if "answer" in c.metadata.get("tags", [])]
    assert len(answers) == 5
    above = _numbers("\n".join(_outputs_text(c) for c in _code(nb) if c not in answers)
                     + json.dumps(nb.cells[0].source))
    answer_text = "\n".join(_outputs_text(c) for c in answers)
    assert "Q7" in answer_text and "Exercise 4" in answer_text
    quoted = _numbers(answer_text)
    assert len(quoted) > 20
    assert quoted <= above, sorted(quoted - above)


PROGRESS_CELL = """
import mnistlab
run = mnistlab.train("notebook", epochs=1, subset=640, device="cpu", amp="off", data_dir={data!r},
                     write_run=False)
"""


@pytest.mark.slow
def test_train_shows_a_progress_bar_inside_jupyter(mnist_dir, tmp_path):
    import papermill
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(PROGRESS_CELL.format(data=str(mnist_dir)))],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path))
    cell = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0]
    stderr = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
    stdout = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    assert "epoch 1/1" in stderr and "it/s" in stderr  # the bar, redrawn in place in the cell
    assert "epoch 1/1  train_loss" in stdout  # and the epoch's line, as on a terminal
