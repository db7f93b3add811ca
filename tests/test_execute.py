"""`--execute`: handed-in notebooks run as untrusted code in bubblewrap. Hostile notebooks (reading and writing
outside their folder, connecting to a listener on 127.0.0.1, allocating past the memory limit, looping forever)
are contained, and the rest of the class is graded."""

from __future__ import annotations

import csv
import json
import socket
import threading

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mnistlab.grading.sandbox import unavailable


def notebook(path, *sources, answers="Q1. 32"):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources] + [new_markdown_cell(answers)])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_without_a_sandbox_execute_refuses_in_one_line(cli, tmp_path, monkeypatch):
    nb = notebook(tmp_path / "a.ipynb", "print(1)")
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH
    code, out, err = cli("check", str(nb), "--execute")
    assert code == 2 and out == ""
    assert err.startswith("error: --execute refuses to run notebooks without a sandbox: bubblewrap (bwrap) is not "
                          "installed") and "--unsafe-no-sandbox" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("grade", str(tmp_path), "--out", str(tmp_path / "g"), "--execute")
    assert code == 2 and "without a sandbox" in err


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, addr = self.sock.accept()
                self.accepted.append(addr)
                conn.close()
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason="bubblewrap cannot run here")
def test_hostile_notebooks_are_contained_and_the_class_is_graded(cli, mnist_dir, tmp_path):
    root = tmp_path / "class"
    secret = tmp_path / "secret.txt"
    secret.write_text("the rubric's answers")
    outside = tmp_path / "outside.txt"
    listener = Listener()
    notebook(root / "ada" / "lab.ipynb", "import os\nprint('files', sorted(os.listdir('data/MNIST/raw')))",
             "x = 6 * 7\nprint('answer', x)")
    ada_before = sorted(p.name for p in (root / "ada").iterdir())
    notebook(root / "mallory" / "lab.ipynb", f"""
import os
for path in ({str(secret)!r}, {str(root / 'ada' / 'lab.ipynb')!r}, '/root/.bashrc'):
    try:
        print('READ', path, open(path).read()[:20])
    except OSError as e:
        print('cannot read', path, type(e).__name__)
for path in ({str(outside)!r}, {str(root / 'ada' / 'planted.txt')!r}, {str(secret)!r}):
    try:
        open(path, 'w').write('planted')
        print('WROTE', path)
    except OSError as e:
        print('cannot write', path, type(e).__name__)
print('home', sorted(os.listdir('/')))""")
    notebook(root / "nat" / "lab.ipynb", f"""
import socket
try:
    socket.create_connection(('127.0.0.1', {listener.port}), timeout=3)
    print('CONNECTED')
except OSError as e:
    print('cannot connect', type(e).__name__)""")
    notebook(root / "hog" / "lab.ipynb", "import numpy as np\nblock = np.ones(3 * 2**30, np.uint8)\nprint('got it')")
    notebook(root / "loop" / "lab.ipynb", "while True:\n    pass")
    out = tmp_path / "grades"
    try:
        code, stdout, err = cli("grade", str(root), "--out", str(out), "--execute", "--timeout", "60",
                                "--memory", "1", "--data-dir", str(mnist_dir), "--quiet")
    finally:
        listener.close()
    assert code == 0, err
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert {s: r["execution"] for s, r in rows.items()} == {"ada": "ran", "mallory": "ran", "nat": "ran",
                                                           "hog": "memory", "loop": "timeout"}
    assert rows["hog"]["status"] == "execution memory" and rows["loop"]["status"] == "execution timeout"
    # nothing outside the notebook's own (scratch) folder was read or changed
    assert secret.read_text() == "the rubric's answers" and not outside.exists()
    assert sorted(p.name for p in (root / "ada").iterdir()) == ada_before
    printed = outputs(out / "executed" / "mallory.ipynb")
    assert "READ" not in printed and "WROTE" not in printed
    assert printed.count("cannot read") == 3 and printed.count("cannot write") == 3
    assert "cannot connect" in outputs(out / "executed" / "nat.ipynb") and listener.accepted == []
    assert "train-images-idx3-ubyte" in outputs(out / "executed" / "ada.ipynb")  # MNIST where torchvision looks
    graded = json.loads((out / "grades.json").read_text())
    loop = next(s for s in graded["students"] if s["student"] == "loop")
    assert "killed after 60 s" in loop["execution"]["message"]


@pytest.mark.slow
def test_the_unsafe_override_still_runs_under_the_limits(cli, tmp_path, monkeypatch):
    nb = notebook(tmp_path / "a" / "lab.ipynb", "print('ran', 6 * 7)")
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap
    code, out, err = cli("check", str(nb), "--execute", "--unsafe-no-sandbox", "--timeout", "60", "--json")
    report = json.loads(out)
    assert code == 1 and report["execution"]["status"] == "ran", (report["execution"], err)  # Q2-Q7 missing
    assert report["execution"]["settings"] == []


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason="bubblewrap cannot run here")
def test_mnistlab_notebook_runs_in_the_sandbox_with_quick_settings(cli, mnist_dir, tmp_path):
    """The lab notebook as handed in with an execution's outputs (built here) runs again inside the sandbox
    with quick settings injected; its questions 1-5 read the same, and its own weights load inside."""
    from handin import mnistlab_notebook, write

    nb = write(mnistlab_notebook(), tmp_path / "ada" / "mnist_lab.ipynb")
    code, out, err = cli("check", str(nb), "--execute", "--json", "--data-dir", str(mnist_dir))
    ex = json.loads(out)["execution"]
    assert ex["status"] == "ran", (ex, err)
    assert ex["quick_settings"] and ex["settings"] == [] and ex["band"] is None
    assert 10 < ex["exercise1_test_acc"] < 100


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason="bubblewrap cannot run here")
def test_where_no_cgroup_can_be_made_rlimits_hold_the_memory(tmp_path, monkeypatch):
    from mnistlab.grading import sandbox

    monkeypatch.setattr(sandbox.Cgroup, "make", classmethod(lambda cls, limits: None))
    limits = sandbox.Limits(memory=2 << 30, processes=64, timeout=120)
    ok = notebook(tmp_path / "ok" / "lab.ipynb", "import torch\nprint('sum', float(torch.ones(100, 100).sum()))")
    done = sandbox.execute_sandboxed(ok, ok.parent, tmp_path / "out" / "ok.ipynb", limits=limits)
    assert done.status == "ran" and "sum 10000.0" in outputs(done.notebook)  # torch fits under the limit
    hog = notebook(tmp_path / "hog" / "lab.ipynb", "import numpy as np\nblock = np.ones(3 * 2**30, np.uint8)")
    done = sandbox.execute_sandboxed(hog, hog.parent, tmp_path / "out" / "hog.ipynb", limits=limits)
    assert done.status == "memory" and "MemoryError" in done.message
