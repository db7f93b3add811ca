"""The runs explorer's JSON APIs on a runs directory made by real trainings (conftest's runs_tree): listing,
details, the saved model's confusion matrix and its cells, the per-run draw API, and every way out of the
served directory answered with 404."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mnistlab.data import load_split
from mnistlab.inference.evaluate import evaluate_model
from mnistlab.inference.predict import load_model
from mnistlab.serve import create_app

RUNS = ["a", "broken-config", "damaged", "sweep-notebook/mlp-e1"]


@pytest.fixture(scope="module")
def tree(runs_tree, tmp_path_factory) -> Path:
    """runs_tree inside a served folder, plus links that lead out of it."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "run").mkdir()
    (outside / "run" / "config.json").write_text('{"preset": "secret"}')
    (outside / "secret.jsonl").write_text('{"epoch": 1, "test_acc": 12.5}\n')
    served = tmp_path_factory.mktemp("served")
    for name in ("a", "broken-config", "damaged", "sweep-notebook"):
        shutil.copytree(runs_tree / name, served / name)
    os.symlink(outside / "run", served / "escape")  # a run folder outside, linked in
    (served / "odd-types").mkdir()  # valid JSON, wrong types: shown as far as it makes sense, never a 500
    (served / "odd-types" / "config.json").write_text(json.dumps(
        {"preset": 5, "epochs": "two", "batch_size": 3.5, "opt_args": {"lr": "fast"}, "amp": None}))
    (served / "odd-types" / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": "high"}\n[1, 2]\n')
    (served / "linked-file").mkdir()
    (served / "linked-file" / "config.json").write_text('{"preset": "notebook", "epochs": 1}')
    os.symlink(outside / "secret.jsonl", served / "linked-file" / "metrics.jsonl")
    return served


@pytest.fixture(scope="module")
def client(tree, mnist_dir):
    with TestClient(create_app(None, data_dir=mnist_dir, runs_dir=tree), raise_server_exceptions=False) as c:
        yield c


def test_runs_lists_every_run_directory_nested_too(client, tree):
    r = client.get("/api/runs")
    assert r.status_code == 200
    runs = {row["id"]: row for row in r.json()["runs"]}
    assert sorted(runs) == sorted([*RUNS, "linked-file", "odd-types"])  # not the link, not sweep-notebook
    a = runs["a"]
    rows = [json.loads(line) for line in (tree / "a" / "metrics.jsonl").read_text().splitlines()]
    assert a["status"] == "done" and a["kind"] == "train" and a["has_model"] and a["problems"] == []
    assert (a["preset"], a["dataset"], a["epochs"], a["planned_epochs"]) == ("notebook", "mnist", 2, 2)
    assert (a["optimizer"], a["lr"], a["batch_size"], a["precision"]) == ("Adam", 0.001, 32, "fp32")
    assert a["final_test_acc"] == rows[-1]["test_acc"] and a["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert runs["sweep-notebook/mlp-e1"]["kind"] == "sweep"
    assert runs["damaged"]["status"] == "corrupt" and runs["damaged"]["epochs"] == 1
    assert "metrics.jsonl: line 2" in runs["damaged"]["problems"][0]
    assert runs["broken-config"]["status"] == "corrupt" and runs["broken-config"]["preset"] is None
    assert runs["linked-file"]["epochs"] == 0  # its metrics.jsonl links out of the folder: not read
    odd = runs["odd-types"]
    assert odd["status"] == "corrupt" and odd["epochs"] == 1 and odd["final_test_acc"] is None
    assert odd["preset"] is None and odd["batch_size"] is None and odd["lr"] is None
    assert client.get("/api/runs/odd-types").status_code == 200

    again = client.get("/api/runs", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_run_detail(client, tree):
    d = client.get("/api/runs/sweep-notebook/mlp-e1").json()
    assert d["config"] == json.loads((tree / "sweep-notebook/mlp-e1/config.json").read_text())
    assert d["env"]["device"] == "cpu" and "amp_dtype" in d["env"]
    assert d["metrics"] == [json.loads(line) for line in
                            (tree / "sweep-notebook/mlp-e1/metrics.jsonl").read_text().splitlines()]
    assert {"config.json", "metrics.csv", "model.safetensors"} <= set(d["files"])
    damaged = client.get("/api/runs/damaged").json()
    assert [r["epoch"] for r in damaged["metrics"]] == [1]  # what could be read before the cut
    assert damaged["status"] == "corrupt" and damaged["has_model"] is False


@pytest.mark.parametrize("path", [  # the client would remove plain dot segments: these reach the server
    "/api/runs/%2E%2E", "/api/runs/%2E%2E/%2E%2E/etc", "/api/runs/a/%2E%2E/a", "/api/runs/%2E/a",
    "/api/runs/..%2F..%2Fetc%2Fpasswd", "/api/runs/%2Fetc", "/api/runs//etc", "/api/runs/a%5C..%5Ca",
    "/api/runs/a%00", "/api/runs/escape", "/api/runs/escape/confusion", "/api/runs/escape/model",
    "/api/runs/escape/images?true=1&pred=1", "/api/runs/sweep-notebook", "/api/runs/nothing",
    f"/api/runs/{'%2E%2E/' * 12}etc",
])
def test_ways_out_of_the_served_directory_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.text)
    assert "secret" not in r.text


def test_confusion_is_the_saved_models_fp32_evaluation(client, tree, mnist_dir):
    ev = client.get("/api/runs/a/confusion").json()
    direct = evaluate_model(load_model(tree / "a"), data_dir=mnist_dir)
    assert ev["confusion"] == direct["confusion"] and ev["accuracy"] == direct["accuracy"]
    assert sum(map(sum, ev["confusion"])) == ev["images"] == 10_000
    last = json.loads((tree / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert ev["accuracy"] == pytest.approx(last["test_acc"], abs=0.02)  # the number training reported
    assert [m["index"] for m in ev["mistakes"]] == [m["index"] for m in direct["mistakes"]]
    assert all(m["label"] != m["prediction"] for m in ev["mistakes"])


def test_cell_images_are_exactly_that_cell(client, mnist_dir):
    cm = client.get("/api/runs/a/confusion").json()["confusion"]
    images, labels = load_split("mnist", "test", mnist_dir)
    t, p = max(((t, p) for t in range(10) for p in range(10) if t != p), key=lambda c: cm[c[0]][c[1]])
    for true, pred in ((t, p), (t, t)):
        cell = client.get(f"/api/runs/a/images?true={true}&pred={pred}").json()
        assert cell["count"] == len(cell["images"]) == cm[true][pred] > 0
        assert all(i["label"] == true and i["prediction"] == pred for i in cell["images"])
        conf = [i["confidence"] for i in cell["images"]]
        assert conf == sorted(conf, reverse=true != pred)  # mistakes most confident first
        first = cell["images"][0]
        png = Image.open(io.BytesIO(base64.b64decode(first["png"].split(",", 1)[1])))
        assert np.array_equal(np.asarray(png), images[first["index"]].numpy())
        assert int(labels[first["index"]]) == true
    assert client.get("/api/runs/a/images?true=10&pred=1").status_code == 422
    assert client.get("/api/runs/a/images?true=1").status_code == 422
    no_model = client.get("/api/runs/damaged/confusion")
    assert no_model.status_code == 409 and "model.safetensors" in no_model.json()["detail"]


def test_each_runs_model_answers_its_own_draw_api(client, tree, mnist_dir):
    images, labels = load_split("mnist", "test", mnist_dir)
    pixels = (images[0].float() / 255).tolist()
    for run in ("a", "sweep-notebook/mlp-e1"):
        info = client.get(f"/api/runs/{run}/model").json()
        loaded = load_model(tree / run)
        assert info["name"] == loaded.name and info["params"] == loaded.params
        answer = client.post(f"/api/runs/{run}/predict", json={"pixels": pixels}).json()
        expected = loaded.probabilities(images[:1].float() / 255)[0]
        assert answer["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
        samples = client.get(f"/api/runs/{run}/samples?n=3&seed=1").json()["samples"]
        assert len(samples) == 3
    assert client.get("/api/runs/a/model").json()["name"] == "notebook"
    assert client.get("/api/runs/sweep-notebook/mlp-e1/model").json()["name"] == "mlp"


def test_pages_openapi_and_no_model_routes(client, tree):
    assert client.get("/", follow_redirects=False).headers["location"] == "/runs"
    for page in ("/runs", "/run?id=a", "/compare?id=a&id=damaged", "/draw?run=a"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "https://" not in r.text
    for name in ("explorer.js", "runs.js", "run.js", "compare.js", "explorer.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "https://" not in r.text and "cdn" not in r.text.lower()
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/confusion", "/api/runs/{run_id}/images",
            "/api/runs/{run_id}/predict", "/api/runs/{run_id}/model"} <= paths
    assert client.post("/api/predict", json={"pixels": [[0] * 28] * 28}).status_code == 404  # no start-up model
    assert client.get("/api/health").json() == {"status": "ok", "model": None, "runs": tree.name}


def test_serve_runs_cli_errors_are_one_line(cli, tmp_path):
    code, _, err = cli("serve", "--runs", str(tmp_path / "nowhere"))
    assert code == 2 and err.strip() == f"error: --runs {tmp_path / 'nowhere'}: not a directory"
