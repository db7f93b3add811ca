"""Attributions (Captum) of real trained models: the checks that they explain the model (completeness, model
randomisation, deletion), every model of the zoo, the explain folder, the CLI and POST /api/explain."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mnistlab.inference.explain import IG_STEPS, METHODS, attribute, feature_maps, first_filters
from mnistlab.inference.predict import LoadedModel, dataset_samples, load_model
from mnistlab.models import MODELS, build_model
from mnistlab.serve import MAX_UPLOAD, create_app

N = 64  # test digits per check


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


@pytest.fixture(scope="module")
def digits(loaded, mnist_dir):
    return dataset_samples(loaded, list(range(N)), "test", mnist_dir)


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as scipy.stats.rankdata)."""
    a = np.asarray(a).ravel()
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(a.size, np.intp)
    inv[sorter] = np.arange(a.size)
    s = a[sorter]
    first = np.r_[True, s[1:] != s[:-1]]
    dense = first.cumsum()[inv]
    count = np.r_[np.nonzero(first)[0], len(first)]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def test_spearman_helper():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks 1.5, 1.5, 3, 4 and 1.5, 1.5, 4, 3
    assert spearman(np.array([0, 0, 1, 2]), np.array([0, 0, 2, 1])) == pytest.approx(7 / 9)


# ---------------------------------------------------------------- do the attributions explain the model?
def test_integrated_gradients_completeness(loaded, digits):
    """The attributions add up to f(x) - f(blank) of the explained logit, off by exactly the delta Captum
    reports, and at the default step count that delta is small: under 1% of the difference plus a hundredth of
    a logit (and it shrinks with more steps)."""
    x, y = digits
    att = attribute(loaded, x, "ig", y.tolist())
    assert att.settings["n_steps"] == IG_STEPS and att.delta is not None
    with torch.no_grad():
        f = loaded.model(x.unsqueeze(1)).float()[torch.arange(N), y]
        f0 = loaded.model(torch.zeros(1, 1, 28, 28)).float()[0, y]
    diff, total, delta = f - f0, att.maps.sum((1, 2)).double(), torch.tensor(att.delta, dtype=torch.float64)
    assert torch.allclose(total - diff.double(), delta, atol=1e-3)
    assert (delta.abs() <= 0.01 * diff.abs() + 0.01).all(), float((delta.abs() / diff.abs()).max())
    coarse = torch.tensor(attribute(loaded, x, "ig", y.tolist(), n_steps=4).delta).abs()
    assert coarse.mean() > delta.abs().mean()


def test_model_randomisation_changes_the_attributions(loaded, digits):
    """Adebayo et al. (2018): a map that survives re-initialising the weights explains the input, not the model.

    Rank correlation (Spearman) over the digit's ink pixels, signed attributions: for trained against
    re-initialised weights it is about 0.0 on this model; the same weights at another step count give above
    0.99. Background pixels are left out: with a blank baseline Integrated Gradients gives them exactly 0 for
    any weights, ties that would make any two maps look alike. The threshold 0.3 sits far from both: an
    explanation still tied to the input's shape more than to the weights would exceed it."""
    x, y = digits
    torch.manual_seed(1)
    fresh = LoadedModel.of(build_model("notebook"), dict(loaded.meta), loaded.path, "safetensors")
    ink = (x > 0).numpy()
    for method in ("ig", "saliency"):
        a = attribute(loaded, x, method, y.tolist()).maps.numpy()
        b = attribute(fresh, x, method, y.tolist()).maps.numpy()
        rho = np.mean([spearman(a[i][ink[i]], b[i][ink[i]]) for i in range(N)])
        assert rho < 0.3, (method, rho)
    again = attribute(loaded, x, "ig", y.tolist(), n_steps=16).maps.numpy()
    a = attribute(loaded, x, "ig", y.tolist()).maps.numpy()
    assert np.mean([spearman(a[i][ink[i]], again[i][ink[i]]) for i in range(N)]) > 0.9


def test_deleting_the_most_attributed_pixels_hurts_most(loaded, mnist_dir):
    """Blanking the 10% most attributed pixels lowers the true class's probability far more than blanking 10%
    random pixels, on 100 correctly classified test digits; even random pixels of the digit's own ink (a
    harder comparison than random pixels anywhere) hurt less."""
    x, y = dataset_samples(loaded, list(range(200)), "test", mnist_dir)
    right = loaded.probabilities(x).argmax(1) == y
    x, y = x[right][:100], y[right][:100]
    n, k, rows = len(y), 784 // 10, torch.arange(len(y))
    att = attribute(loaded, x, "ig", y.tolist()).maps.reshape(n, -1)
    flat = x.reshape(n, -1)
    top = flat.clone().scatter_(1, att.topk(k, dim=1).indices, 0.0)
    g = torch.Generator().manual_seed(0)
    anywhere, on_ink = flat.clone(), flat.clone()
    for i in range(n):
        anywhere[i, torch.randperm(784, generator=g)[:k]] = 0.0
        ink = (flat[i] > 0).nonzero().flatten()
        on_ink[i, ink[torch.randperm(len(ink), generator=g)[:k]]] = 0.0

    def prob(images):
        return loaded.probabilities(images.reshape(n, 28, 28))[rows, y]

    p0 = prob(flat)
    drop_top, drop_random, drop_ink = (float((p0 - prob(v)).mean()) for v in (top, anywhere, on_ink))
    assert drop_top > drop_random and drop_top > drop_ink + 0.2, (drop_top, drop_random, drop_ink)


def test_every_model_of_the_zoo(digits):
    """ig, saliency and occlusion work for every model; Grad-CAM, filters and feature maps for those with a
    convolution, and Grad-CAM on one without says so in one line."""
    x, y = digits
    for name in MODELS:
        torch.manual_seed(0)
        model = LoadedModel.of(build_model(name), {"model": name}, Path("."), "safetensors")
        has_conv = name != "mlp"
        for method in METHODS:
            if method == "gradcam" and not has_conv:
                with pytest.raises(Exception, match="Grad-CAM needs a convolution, and model 'mlp' has none"):
                    attribute(model, x[:2], method)
                continue
            att = attribute(model, x[:2], method, 3)
            assert att.maps.shape == (2, 28, 28) and att.maps.dtype == torch.float32 and att.targets == [3, 3]
            assert torch.isfinite(att.maps).all(), (name, method)
            assert method == "gradcam" or att.maps.abs().sum() > 0, (name, method)  # ReLU'd CAM may be 0
        assert (first_filters(model) is None) == (not has_conv)
        maps = feature_maps(model, x[0])
        assert bool(maps) == has_conv
        for _, m in maps:
            assert m.ndim == 3 and m.shape[1] > 1


def test_an_onnx_graph_gets_occlusion_and_a_clear_error_for_gradients(loaded, digits, tmp_path, cli, trained_run):
    """An ONNX graph gives no gradients: occlusion (forward passes only) works and agrees with the PyTorch
    weights; a gradient method says what to use instead."""
    from mnistlab.files.checkpoints import save_model

    x, _ = digits
    graph = load_model(save_model(loaded.model, tmp_path / "m.onnx", dict(loaded.meta)))
    assert graph.format == "onnx"
    a = attribute(graph, x[:2], "occlusion", 7).maps
    assert torch.allclose(a, attribute(loaded, x[:2], "occlusion", 7).maps, atol=1e-3)
    with pytest.raises(Exception, match="needs gradients, which an ONNX graph does not give"):
        attribute(graph, x[:2], "ig")
    code, _, stderr = cli("explain", "--model", str(tmp_path / "m.onnx"), "--index", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and stderr.count("\n") == 1 and "--method occlusion" in stderr


def test_attributions_leave_the_model_in_eval_mode_in_fp32(loaded, digits):
    x, _ = digits
    loaded.model.train()  # whatever the caller did, attributions use eval mode (no dropout)
    a = attribute(loaded, x[:4], "ig").maps
    b = attribute(loaded, x[:4], "ig").maps
    assert torch.equal(a, b) and not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


# ---------------------------------------------------------------- the CLI and its folder
def test_explain_folder_of_the_most_confident_mistakes(cli, trained_run, mnist_dir, tmp_path):
    out = tmp_path / "why"
    code, stdout, stderr = cli("explain", "--model", str(trained_run), "--mistakes", "3", "--index", "0",
                               "--method", "ig", "--method", "gradcam", "--out", str(out), "--data-dir", str(mnist_dir))
    assert code == 0, stderr
    assert f"explanations: {out}" in stdout
    result = json.loads((out / "explain.json").read_text())
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "explain.json", "filters-conv1.png", "all-ig.png", "all-gradcam.png"} <= names
    assert {"01-test-0-feature-maps.png", "01-test-0-ig.png", "01-test-0-gradcam.png"} <= names
    assert len(result["inputs"]) == 4
    mistakes = result["inputs"][1:]
    assert all(r["prediction"] != r["label"] for r in mistakes)
    conf = [r["probabilities"][r["prediction"]] for r in mistakes]
    assert conf == sorted(conf, reverse=True)  # most confident first
    for r in result["inputs"]:
        assert len(r["probabilities"]) == 10 and sum(r["probabilities"]) == pytest.approx(1, abs=1e-4)
        ig = [a for a in r["attributions"] if a["method"] == "ig"]
        assert [a["role"] for a in ig] == ["predicted", "runner-up" if r["label"] == r["prediction"] else "true class"]
        assert all(a["settings"]["n_steps"] == IG_STEPS and abs(a["convergence_delta"]) < 0.05 * max(1, abs(a["sum"]))
                   for a in ig)
        assert all(a["convergence_delta"] is None for a in r["attributions"] if a["method"] == "gradcam")
    readme = (out / "README.md").read_text()
    assert "filters-conv1.png" in readme and "Red pixels" in readme and "| 02 | test #" in readme
    # run again with another target: the folder is replaced, not mixed
    code, _, stderr = cli("explain", "--model", str(trained_run), "--index", "5", "--target", "3", "--out", str(out),
                          "--data-dir", str(mnist_dir))
    assert code == 0, stderr
    result = json.loads((out / "explain.json").read_text())
    assert [a["class"] for a in result["inputs"][0]["attributions"]][1] == 3
    assert not any(p.name.startswith("02-") for p in out.iterdir())


def test_user_images_go_through_predicts_preprocessing(cli, trained_run, mnist_dir, tmp_path, loaded):
    from mnistlab.data import load_split

    images, labels = load_split("mnist", "test", mnist_dir)
    big = Image.fromarray(255 - images[0].numpy()).resize((200, 200))  # dark ink on light paper, 200x200
    big.save(tmp_path / "my seven.png")
    code, stdout, stderr = cli("explain", "--model", str(trained_run), "--image", str(tmp_path / "my seven.png"),
                               "--out", str(tmp_path / "out"))
    assert code == 0, stderr
    r = json.loads((tmp_path / "out" / "explain.json").read_text())["inputs"][0]
    code, pred_out, _ = cli("predict", "--model", str(trained_run), "--image", str(tmp_path / "my seven.png"),
                            "--format", "json")
    assert r["probabilities"] == json.loads(pred_out)[0]["probabilities"] and r["prediction"] == 7
    assert (tmp_path / "out" / "01-my-seven-ig.png").is_file()


def test_a_model_without_convolution(cli, runs_tree, mnist_dir, tmp_path):
    mlp = runs_tree / "sweep-notebook" / "mlp-e1"
    code, stdout, _ = cli("explain", "--model", str(mlp), "--index", "0", "--method", "occlusion",
                          "--out", str(tmp_path / "mlp"), "--data-dir", str(mnist_dir))
    assert code == 0 and "no convolution: no filters or feature maps" in stdout
    assert not list((tmp_path / "mlp").glob("filters-*")) and (tmp_path / "mlp" / "all-occlusion.png").is_file()
    code, stdout, stderr = cli("explain", "--model", str(mlp), "--index", "0", "--method", "gradcam",
                               "--out", str(tmp_path / "mlp2"), "--data-dir", str(mnist_dir))
    assert code == 2 and stderr.count("\n") == 1 and "Grad-CAM needs a convolution" in stderr
    assert not (tmp_path / "mlp2").exists()  # refused before anything is written


@pytest.mark.parametrize("args", [
    ["--index", "0", "--method", "lime"],
    ["--index", "0", "--target", "10"],
    ["--index", "0", "--target", "x"],
    ["--index", "99999"],
    ["--mistakes", "0"],
    [],
    ["--image", "no-such-file.png"],
])
def test_cli_bad_input_is_one_line_exit_2(cli, trained_run, mnist_dir, tmp_path, args):
    code, _, stderr = cli("explain", "--model", str(trained_run), "--out", str(tmp_path / "x"),
                          "--data-dir", str(mnist_dir), *args)
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr


def test_cli_refuses_a_folder_it_did_not_write(cli, trained_run, mnist_dir, tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    code, _, stderr = cli("explain", "--model", str(trained_run), "--index", "0", "--out", str(tmp_path),
                          "--data-dir", str(mnist_dir))
    assert code == 2 and "was not written by mnistlab explain" in stderr
    assert (tmp_path / "precious.txt").read_text() == "mine"


def test_without_captum(cli, trained_run, mnist_dir, monkeypatch, loaded):
    """Captum missing: the command says which extra to install (one line, exit 2); the API reports it
    unavailable (the pages hide "why?") and POST explain is 503."""
    for name in [m for m in sys.modules if m == "captum" or m.startswith("captum.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "captum", None)
    code, _, stderr = cli("explain", "--model", str(trained_run), "--index", "0")
    assert code == 2 and stderr.count("\n") == 1 and "pip install 'mnistlab[explain]'" in stderr
    with TestClient(create_app(loaded, data_dir=mnist_dir)) as c:
        assert c.get("/api/explain").json()["available"] is False
        r = c.post("/api/explain", json={"index": 0})
        assert r.status_code == 503 and "mnistlab[explain]" in r.json()["detail"]


# ---------------------------------------------------------------- POST /api/explain
@pytest.fixture(scope="module")
def client(loaded, mnist_dir):
    with TestClient(create_app(loaded, data_dir=mnist_dir), raise_server_exceptions=False) as c:
        yield c


def png_bytes(array: np.ndarray, size: int = 140) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).resize((size, size), Image.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


def test_api_explains_an_upload_like_predict_sees_it(client, digits):
    x, y = digits
    data = png_bytes((x[0].numpy() * 255).astype(np.uint8))
    seen = client.post("/api/predict", files={"file": ("d.png", data, "image/png")}).json()
    r = client.post("/api/explain", files={"file": ("d.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input"] == seen["input"] and body["probabilities"] == seen["probabilities"]
    assert body["method"] == "ig" and body["target"] == body["prediction"] == seen["prediction"]
    heat = np.array(body["attribution"])
    assert heat.shape == (28, 28) and body["scale"] == pytest.approx(np.abs(heat).max(), rel=1e-3)
    assert abs(body["convergence_delta"]) < 0.01 * abs(heat.sum()) + 1e-3
    png = Image.open(io.BytesIO(__import__("base64").b64decode(body["png"].split(",", 1)[1])))
    assert png.size == (28, 28) and png.mode == "RGBA"
    alpha = np.asarray(png)[..., 3]
    assert alpha[np.abs(heat) == 0].max() == 0 and alpha.max() > 200  # transparent where no say


def test_api_method_target_and_test_index(client, loaded, digits):
    x, y = digits
    for method in METHODS:
        r = client.post(f"/api/explain?method={method}", json={"index": 0, "target": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == method and body["target"] == 3 and body["label"] == int(y[0])
        assert body["source"] == "test #0" and np.allclose(body["input"], x[0].numpy(), atol=1e-3)
        expect = attribute(loaded, x[:1], method, 3).maps[0].numpy()
        assert np.allclose(body["attribution"], expect, rtol=1e-3, atol=1e-6)
    form = client.post("/api/explain", files={"file": ("d.png", png_bytes((x[1].numpy() * 255).astype(np.uint8)),
                                                        "image/png")}, data={"method": "saliency", "target": "5"})
    assert form.status_code == 200 and form.json()["method"] == "saliency" and form.json()["target"] == 5


@pytest.mark.parametrize(("request_kwargs", "status", "message"), [
    ({"json": {"index": 0, "method": "lime"}}, 422, "unknown method 'lime'"),
    ({"json": {"index": 0, "target": 10}}, 422, "target must be a class 0-9"),
    ({"json": {"index": 0, "target": -1}}, 422, "target must be a class 0-9"),
    ({"json": {"index": 0, "target": "seven"}}, 422, "target must be a class 0-9"),
    ({"json": {"index": 0, "target": True}}, 422, "target must be a class 0-9"),
    ({"json": {"index": 10_000}}, 422, "index must be an integer 0-9999"),
    ({"json": {"pixels": [[0.0] * 28] * 28}}, 422, "blank image"),
    ({"json": {"pixels": [[0.5] * 27] * 28}}, 422, "expected shape 28x28"),
    ({"json": [1, 2]}, 422, "expected a JSON object"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
    ({"content": b"1", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
    ({"files": {"file": ("x.png", b"hello", "image/png")}}, 422, "not an image"),
    ({"files": {"image": ("x.png", b"hello", "image/png")}}, 422, "no file field named 'file'"),
    ({"files": {"file": ("big.png", b"\x89PNG" + b"\0" * MAX_UPLOAD, "image/png")}}, 413, "limited to 2,097,152"),
    ({"files": {"file": ("x.png", b"\x89PNG", "image/png")}, "data": {"method": "nope"}}, 422, "unknown method"),
])
def test_api_bad_input(client, request_kwargs, status, message):
    r = client.post("/api/explain", **request_kwargs)
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert client.post("/api/explain?target=11", json={"index": 0}).status_code == 422
    assert client.post("/api/explain", json={"index": 0}).status_code == 200  # the server is still fine


def test_api_reports_availability_and_the_explorer_has_it_per_run(client, runs_tree, mnist_dir):
    info = client.get("/api/explain").json()
    assert info["available"] is True and list(info["methods"]) == list(METHODS) and info["default"] == "ig"
    with TestClient(create_app(None, runs_dir=runs_tree, data_dir=mnist_dir)) as c:
        assert c.get("/api/runs/a/explain").json()["available"] is True
        r = c.post("/api/runs/a/explain", json={"index": 3})
        assert r.status_code == 200 and r.json()["label"] == 0
        mlp = c.post("/api/runs/sweep-notebook/mlp-e1/explain", json={"index": 3, "method": "gradcam"})
        assert mlp.status_code == 422 and "Grad-CAM needs a convolution" in mlp.json()["detail"]
        assert c.post("/api/runs/nope/explain", json={"index": 3}).status_code == 404


# ---------------------------------------------------------------- the lab report
def test_lab_report_shows_the_filters_and_explains_the_mistakes(trained_run, mnist_dir, tmp_path):
    import shutil

    from mnistlab.inference.evaluate import evaluate_model
    from mnistlab.lab.insight import insight_figures
    from mnistlab.lab.report.blocks import section_md
    from mnistlab.lab.report.sections import insight_blocks

    shutil.copy(trained_run / "model.safetensors", tmp_path / "model.safetensors")
    ev = evaluate_model(load_model(tmp_path), data_dir=mnist_dir)
    files = insight_figures(tmp_path, ev["mistakes"], mnist_dir)
    assert {k: p.name for k, p in files.items()} == {"filters": "filters.png", "feature_maps": "feature-maps.png",
                                                     "mistakes_ig": "mistakes-ig.png"}
    for p in files.values():
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    md = section_md(("Q4", insight_blocks(tmp_path)), tmp_path)
    assert "![the learned filters of the convolution](filters.png)" in md
    assert "![the feature maps of one test digit](feature-maps.png)" in md
