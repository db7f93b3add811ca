"""`mnistlab grade`: a class of notebooks built here, as a folder, a folder of folders and an LMS zip; the
proposed points, the pages, the duplicates, shards and their merge; bad submissions that never stop the class."""

from __future__ import annotations

import csv
import json
import zipfile

import pytest
import torch
from handin import mnistlab_notebook, original_notebook, write

from mnistlab.grading import QUESTIONS
from mnistlab.models import build_model

COLUMNS = (["student", "status"] + list(QUESTIONS) + [f"points_{q}" for q in QUESTIONS]
           + ["total", "max_total", "weights_test_acc", "claimed_test_acc", "duplicate_of", "execution",
              "needs_review"])


def read_csv(path):
    with open(path, newline="") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def _renamed(nb):
    """The same notebook with its variables renamed, as a copier hides a copy."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = cell.source.replace("train_loader", "my_loader").replace("history", "hist")
    return nb


@pytest.fixture
def klass(tmp_path):
    """A class: ada (mnistlab's notebook), bob (ada's copy under another name, variables renamed), cy (the
    original's layout, with weights), dee (the original's, a wrong batch size, in a shared folder, with cy's
    weights saved again), eve (not a notebook), fay (a folder without a notebook)."""
    root = tmp_path / "class"
    write(mnistlab_notebook(), root / "ada" / "mnist_lab.ipynb")
    write(_renamed(mnistlab_notebook()), root / "bob" / "lab_final.ipynb")
    write(original_notebook("list", train=[(1.6, 89.5), (1.5, 97.0), (1.48, 98.0), (1.47, 98.5), (1.47, 98.8)]),
          root / "cy" / "MNIST_with_GPU.ipynb")
    torch.manual_seed(0)
    torch.save(build_model("notebook").state_dict(), root / "cy" / "weights.pt")
    write(original_notebook("cells", answers={"1.1": "64"}, test_acc="98.10"), root / "dee.ipynb")
    # dee hands in cy's weights, loaded and saved again (other bytes, the same tensors), named after the notebook
    torch.save(torch.load(root / "cy" / "weights.pt", weights_only=True), root / "dee_weights.pt")
    (root / "eve.ipynb").write_text("this is not JSON")
    (root / "fay").mkdir()
    (root / "fay" / "notes.txt").write_text("forgot the notebook")
    return root


def test_a_class_folder(cli, klass, tmp_path):
    out = tmp_path / "grades"
    code, stdout, err = cli("grade", str(klass), "--out", str(out))
    assert code == 0, err
    assert "6 students: 2 findings, 1 no notebook, 2 ok, 1 unreadable" in stdout
    rows = read_csv(out / "grades.csv")
    assert list(next(iter(rows.values()))) == COLUMNS
    assert {s: r["status"] for s, r in rows.items()} == {"ada": "ok", "bob": "ok", "cy": "findings",
                                                        "dee": "findings", "eve": "unreadable", "fay": "no notebook"}
    ada = rows["ada"]
    assert ada["points_1.1"] == "1" and ada["points_1.6"] == "" and ada["total"] == "9" and ada["max_total"] == "10"
    assert ada["needs_review"] == "true" and ada["claimed_test_acc"] == "98.37"
    assert rows["dee"]["1.1"] == "mismatch" and rows["dee"]["points_1.1"] == "0" and rows["dee"]["total"] == "8"
    # cy's weights: an untrained network, scored on the test set; the notebook claims 98.49
    assert rows["cy"]["weights_test_acc"] and float(rows["cy"]["weights_test_acc"]) < 30
    assert rows["ada"]["duplicate_of"] == "bob" and rows["bob"]["duplicate_of"] == "ada"
    assert rows["dee"]["weights_test_acc"] == rows["cy"]["weights_test_acc"]
    assert rows["cy"]["duplicate_of"] == "dee"
    graded = json.loads((out / "grades.json").read_text())
    assert graded["duplicates"] == [{"a": "ada", "b": "bob", "shared": ["code and outputs", "answers"]},
                                    {"a": "cy", "b": "dee", "shared": ["weights"]}]
    assert graded["rubric"] == {q: 1.0 for q in QUESTIONS}
    eve = next(s for s in graded["students"] if s["student"] == "eve")
    assert eve["report"] is None and "not a Jupyter notebook" in eve["problem"]
    for student in rows:
        assert (out / "feedback" / f"{student}.html").is_file()
    feedback = (out / "feedback" / "dee.html").read_text()
    assert "the answer says 64, the code uses 32" in feedback
    page = (out / "class.html").read_text()
    assert page.count("Yes, a little: the train accuracy still rises") == 2  # cy's and dee's Q6 side by side
    assert "data:image/png;base64," in page and "<h2>Duplicates</h2>" in page and "http" not in page


def without_weights(klass):
    for weights in (klass / "cy" / "weights.pt", klass / "dee_weights.pt"):
        weights.unlink()


def test_a_zip_with_members_outside_their_folder(cli, klass, tmp_path):
    without_weights(klass)
    archive = tmp_path / "export.zip"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(klass.rglob("*")):
            if path.is_file():
                z.write(path, "Lab 2 - submissions/" + path.relative_to(klass).as_posix())
        z.writestr("Lab 2 - submissions/mal/../../../victim.txt", "overwritten")
        z.writestr("/tmp/abs.ipynb", "{}")
    out = tmp_path / "grades"
    code, stdout, err = cli("grade", str(archive), "--out", str(out), "--quiet")
    assert code == 0, err
    rows = read_csv(out / "grades.csv")
    assert victim.read_text() == "keep me"
    assert rows["mal"]["status"] == "refused" and rows["tmp"]["status"] == "refused"
    assert rows["ada"]["status"] == "ok" and rows["dee"]["1.1"] == "mismatch"
    problem = next(s for s in json.loads((out / "grades.json").read_text())["students"] if s["student"] == "mal")
    assert "points outside its folder" in problem["problem"]
    assert "mnistlab-grade-" not in (out / "grades.json").read_text()  # the scratch copy is never named


def test_a_rubric_and_bad_rubrics(cli, klass, tmp_path):
    without_weights(klass)
    rubric = tmp_path / "rubric.toml"
    rubric.write_text('[points]\n"1.1" = 2\n"1.7" = 3\n"4" = 0.5\n')
    out = tmp_path / "grades"
    assert cli("grade", str(klass), "--out", str(out), "--rubric", str(rubric), "--quiet")[0] == 0
    rows = read_csv(out / "grades.csv")
    assert rows["ada"]["points_1.1"] == "2" and rows["ada"]["points_1.7"] == "3" and rows["ada"]["points_4"] == "0.5"
    assert rows["ada"]["total"] == "11.5" and rows["ada"]["max_total"] == "12.5"  # 1.6 is left to the TA
    assert rows["dee"]["points_1.1"] == "0"
    rubric.write_text('"1.8" = 1\n')
    code, _, err = cli("grade", str(klass), "--out", str(tmp_path / "g2"), "--rubric", str(rubric))
    assert code == 2 and "unknown question '1.8'" in err
    rubric.write_text('"1.1" = "one"\n')
    code, _, err = cli("grade", str(klass), "--out", str(tmp_path / "g2"), "--rubric", str(rubric))
    assert code == 2 and err.startswith("error: --rubric")


def test_one_writer_of_a_class_s_grades(cli, klass, tmp_path):
    """A folder of grades another process is writing is refused in one line naming it; shards take no lock."""
    import subprocess
    import sys

    out = tmp_path / "grades"
    holder = ("import sys, time\nfrom mnistlab.files.outdir import claim_dir\n"
              "claim_dir(sys.argv[1], 'grades', kind='grades')\nprint('holding', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        code, _, err = cli("grade", str(klass), "--out", str(out))
        assert code == 2 and f"is in use by process {proc.pid}" in err and len(err.strip().splitlines()) == 1
        code, _, err = cli("grade", "--out", str(out))  # the merge too
        assert code == 2 and f"process {proc.pid}" in err
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "grades.csv").exists()


def test_shards_merge_into_the_whole_class(cli, klass, tmp_path):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    without_weights(klass)  # the merge is about the records, not the scores
    assert cli("grade", str(klass), "--out", str(whole), "--quiet")[0] == 0
    for k in (1, 3):
        assert cli("grade", str(klass), "--out", str(sharded), "--shard", f"{k}/3", "--quiet")[0] == 0
    code, _, err = cli("grade", "--out", str(sharded))
    assert code == 2 and "shard 2/3 not graded yet" in err
    assert cli("grade", str(klass), "--out", str(sharded), "--shard", "2/3", "--quiet")[0] == 0
    shares = [json.loads((sharded / "shards" / f"{k}-of-3.json").read_text())["students"] for k in (1, 2, 3)]
    assert sorted(s["student"] for share in shares for s in share) == ["ada", "bob", "cy", "dee", "eve", "fay"]
    assert cli("grade", "--out", str(sharded))[0] == 0
    assert (sharded / "grades.csv").read_text() == (whole / "grades.csv").read_text()
    assert cli("grade", str(klass), "--out", str(sharded), "--shard", "4/3")[0] == 2


@pytest.mark.slow
def test_the_lab_notebook_executed_then_a_class_graded_in_parallel(cli, mnist_dir, tmp_path):
    """mnistlab's notebook executed for real with quick settings, checked with the weights it saved, then a
    class of it, an inflated copy and the original's layout graded with --jobs 2."""
    import shutil

    import nbformat

    from mnistlab.lab.notebook import execute, parameters_for

    root = tmp_path / "class"
    done = execute(root / "ada" / "mnist_lab.ipynb",
                   parameters=parameters_for(quick=True, device="cpu", amp="off", data_dir=mnist_dir))
    code, out, _ = cli("check", str(done.ipynb), "--json")
    report = json.loads(out)
    assert code == 0 and report["status"] == "ok", report
    assert report["weights"]["status"] == "ok" and report["weights"]["file"].endswith("mnist_cnn_state_dict.pt")
    assert report["questions"]["1.2"]["found"] == parameters_for(quick=True)["epochs"]  # the injected setting

    nb = nbformat.read(done.ipynb, as_version=4)
    answers = [c for c in nb.cells if "answer" in c.metadata.get("tags", [])]
    md = answers[1].outputs[0].data["text/markdown"]
    first = md.split("- epoch 1: train ")[1].split("%")[0]
    answers[1].outputs[0].data["text/markdown"] = md.replace(f"- epoch 1: train {first}%", "- epoch 1: train 99.99%")
    (root / "bob").mkdir()
    nbformat.write(nb, str(root / "bob" / "mnist_lab.ipynb"))
    shutil.copytree(done.outputs, root / "bob" / done.outputs.name)
    write(original_notebook("list"), root / "cy" / "MNIST_with_GPU.ipynb")

    out_dir = tmp_path / "grades"
    code, stdout, err = cli("grade", str(root), "--out", str(out_dir), "--jobs", "2")
    assert code == 0, err
    rows = read_csv(out_dir / "grades.csv")
    assert rows["ada"]["status"] == "ok" and rows["ada"]["weights_test_acc"] == f"{report['weights']['test_acc']:.2f}"
    assert rows["bob"]["1.7"] == "mismatch" and rows["bob"]["duplicate_of"] == "ada"
    assert rows["cy"]["status"] == "ok"
