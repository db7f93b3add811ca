"""The web app's API against a real trained model: every endpoint, every kind of bad input, the CLI, load."""

from __future__ import annotations

import io
import json
import socket

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mnistlab.data import load_split
from mnistlab.data.preprocess import decode_image, from_pixels, to_mnist
from mnistlab.errors import DataError
from mnistlab.inference.predict import load_model
from mnistlab.serve import MAX_UPLOAD, create_app
from mnistlab.serve.loadtest import bench_serve


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


@pytest.fixture(scope="module")
def client(loaded, mnist_dir):
    with TestClient(create_app(loaded, data_dir=mnist_dir), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def test_split(mnist_dir):
    return load_split("mnist", "test", mnist_dir)


def png(array: np.ndarray, size: int | None = None, fmt: str = "PNG") -> bytes:
    img = Image.fromarray(array)
    if size:
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def upload(client, data: bytes, name: str = "digit.png", ctype: str = "image/png"):
    return client.post("/api/predict", files={"file": (name, data, ctype)})


# ---------------------------------------------------------------- endpoints
def test_health_and_model_info(client, loaded, trained_run):
    assert client.get("/api/health").json() == {"status": "ok", "model": "notebook"}
    info = client.get("/api/model").json()
    acc = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
    assert info["name"] == "notebook" and info["preset"] == "notebook" and info["dataset"] == "mnist"
    assert info["params"] == 2_770_634 and info["test_acc"] == pytest.approx(acc)
    assert info["file"] == "model.safetensors" and info["normalise"] is None


def test_page_static_files_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text and 'id="upload"' in page.text and 'id="gallery"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and "https://" not in r.text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert {"/api/model", "/api/samples", "/api/health"} <= set(spec["paths"])
    docs = client.get("/docs")  # Swagger UI's JS comes from a CDN: offline the page loads but does not render
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_predict_upload_uses_the_predict_preprocessing(client, loaded, test_split):
    images, labels = test_split
    data = png(255 - images[0].numpy(), size=300)  # a 7, dark ink on light paper, 300x300
    r = upload(client, data)
    assert r.status_code == 200
    res = r.json()
    seen, blank = to_mnist(decode_image(data))
    assert not blank and not res["blank"] and res["source"] == "digit.png"
    assert np.allclose(res["input"], seen.numpy(), atol=1e-3)  # the page shows exactly the model's input
    expected = loaded.probabilities(seen.unsqueeze(0))[0]
    assert np.allclose(res["probabilities"], expected.numpy(), atol=1e-5)
    assert res["prediction"] == int(expected.argmax()) == int(labels[0]) == 7
    assert len(res["probabilities"]) == 10 and sum(res["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert res["top_k"][0][0] == 7


def test_predict_jpeg_and_pixels_agree_with_the_model(client, loaded, test_split):
    images, labels = test_split
    picks = [i for i in range(40) if int(loaded.probabilities(images[i:i + 1].float() / 255).argmax())
             == int(labels[i])][:5]
    assert len(picks) == 5
    for i in picks:
        pixels = (images[i].numpy() / 255.0).round(4).tolist()
        r = client.post("/api/predict", json={"pixels": pixels})
        assert r.status_code == 200 and r.json()["prediction"] == int(labels[i])
        seen, _ = from_pixels(pixels)
        assert np.allclose(r.json()["input"], seen.numpy(), atol=1e-3)
    r = upload(client, png(images[picks[0]].numpy(), size=120, fmt="JPEG"), "d.jpg", "image/jpeg")
    assert r.status_code == 200 and r.json()["prediction"] == int(labels[picks[0]])


def test_blank_inputs_have_no_prediction(client):
    for r in [client.post("/api/predict", json={"pixels": [[0.0] * 28] * 28}),
              client.post("/api/predict", json={"pixels": [[1] * 28] * 28}),
              upload(client, png(np.full((280, 280), 255, np.uint8)))]:
        assert r.status_code == 200
        res = r.json()
        assert res["blank"] is True and res["prediction"] is None and res["top_k"] == []
        assert len(res["probabilities"]) == 10 and np.asarray(res["input"]).max() == 0


def test_samples_gallery(client, loaded, test_split):
    images, labels = test_split
    r = client.get("/api/samples", params={"n": 6, "seed": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["dataset"] == "mnist" and len(body["samples"]) == 6
    assert client.get("/api/samples", params={"n": 6, "seed": 3}).json() == body  # seeded: reproducible
    idx = [s["index"] for s in body["samples"]]
    assert len(set(idx)) == 6
    probs = loaded.probabilities(images[idx].float() / 255)
    for s, p in zip(body["samples"], probs, strict=True):
        assert s["label"] == int(labels[s["index"]]) and s["prediction"] == int(p.argmax())
        assert np.allclose(s["probabilities"], p.numpy(), atol=1e-5) and s["confidence"] == pytest.approx(p.max())
        assert np.allclose(np.asarray(s["pixels"]) * 255, images[s["index"]].numpy(), atol=0.05)
    assert len(client.get("/api/samples").json()["samples"]) == 12


# ---------------------------------------------------------------- bad input: 413 / 415 / 422, never 500
BAD_JSON = [
    (b"{not json", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),  # nesting deeper than the parser's recursion limit
    (b'{"pix": 1}', 'expected a JSON object {"pixels"'),
    (b"[1, 2]", 'expected a JSON object {"pixels"'),
    (json.dumps({"pixels": [[0.5] * 28] * 27}).encode(), "expected shape 28x28, got 27x28"),
    (json.dumps({"pixels": [[0.5] * 28] * 28 + [[0.1]]}).encode(), "28x28"),
    (json.dumps({"pixels": 3}).encode(), "got a scalar"),
    (json.dumps({"pixels": [["a"] * 28] * 28}).encode(), "must be a 28x28 array of numbers"),
    (json.dumps({"pixels": [[True] * 28] * 28}).encode(), "must be a 28x28 array of numbers"),
    (json.dumps({"pixels": [[None] * 28] * 28}).encode(), "must be a 28x28 array of numbers"),
    (json.dumps({"pixels": [[2.0] * 28] * 28}).encode(), "values must lie in [0, 1]"),
    (json.dumps({"pixels": [[-0.5] * 28] * 28}).encode(), "values must lie in [0, 1]"),
    (json.dumps({"pixels": [[float("nan")] * 28] * 28}).encode(), "finite"),
]


@pytest.mark.parametrize(("body", "message"), BAD_JSON)
def test_bad_json_is_422(client, body, message):
    r = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and message in r.json()["detail"]


def test_bad_uploads_are_422(client, test_split):
    whole = png(test_split[0][0].numpy(), size=100)
    gif = io.BytesIO()
    frames = [Image.new("L", (30, 30), v) for v in (0, 255)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    cases = [
        (b"hello, not an image", "not an image"),
        (b"", "empty file"),
        (whole[: len(whole) // 2], "truncated or corrupt"),
        (gif.getvalue(), "animated/multi-frame"),
    ]
    for data, message in cases:
        r = upload(client, data, "bad.png")
        assert r.status_code == 422, (message, r.text)
        assert message in r.json()["detail"] and r.json()["detail"].startswith("bad.png: ")
    r = client.post("/api/predict", files={"image": ("d.png", whole, "image/png")})
    assert r.status_code == 422 and "no file field named 'file'" in r.json()["detail"]
    r = client.post("/api/predict", content=b"--xyz\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 422 and "bad multipart body" in r.json()["detail"]


def test_oversized_uploads_are_413(client):
    for size in (MAX_UPLOAD + 1, 3 * MAX_UPLOAD):  # just over (parsed, then refused) and far over (header)
        r = upload(client, b"\x89PNG" + b"\0" * (size - 4), "big.png")
        assert r.status_code == 413 and "limited to 2,097,152 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the body is counted while it streams in
        for _ in range(40):
            yield b"[" * 65536

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert upload(client, png(np.zeros((28, 28), np.uint8))).status_code == 200  # the server is still fine


def test_other_bad_requests(client):
    r = client.post("/api/predict", content=b"1", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "unsupported content type 'text/plain'" in r.json()["detail"]
    assert client.post("/api/predict").status_code == 415
    assert client.post("/api/predict", data={"file": "x"}).status_code == 415  # form-urlencoded
    for n in ("0", "101", "many"):
        assert client.get("/api/samples", params={"n": n}).status_code == 422
    assert client.get("/api/predict").status_code == 405
    assert client.get("/api/nothing").status_code == 404


def test_gallery_without_data_is_503(loaded, tmp_path, monkeypatch):
    import mnistlab.data.sources as sources

    def offline(*args, **kwargs):
        raise DataError("no network here")

    monkeypatch.setattr(sources, "fetch", offline)  # an empty data dir and no way to download
    with TestClient(create_app(loaded, data_dir=tmp_path)) as c:
        r = c.get("/api/samples")
    assert r.status_code == 503 and r.json()["detail"].startswith("test images unavailable")


# ---------------------------------------------------------------- concurrency and the real server
def test_concurrent_requests_match_serial_ones(client, test_split):
    from concurrent.futures import ThreadPoolExecutor

    images, _ = test_split
    bodies = [{"pixels": (images[i].numpy() / 255.0).round(4).tolist()} for i in range(16)]
    serial = [client.post("/api/predict", json=b).json()["probabilities"] for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda b: client.post("/api/predict", json=b).json()["probabilities"],
                                 bodies * 3))
    assert all(np.allclose(p, serial[i % 16], atol=1e-6) for i, p in enumerate(parallel))


def test_load_on_loopback_has_no_errors(trained_run, tmp_path):
    result = bench_serve(trained_run, out_dir=tmp_path, clients=8, seconds=3)
    assert result["errors"] == 0 and result["clients"] == 8
    assert result["requests"] > 8 and result["requests_per_s"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert json.loads((tmp_path / "serve.json").read_text())["requests"] == result["requests"]


def test_cli_errors_are_one_line(cli, trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    code, _, err = cli("serve")
    assert code == 2 and "no trained model found" in err and err.count("\n") == 1
    code, _, err = cli("serve", "--model", str(tmp_path / "missing.safetensors"))
    assert code == 2 and "not found" in err and err.count("\n") == 1
    code, _, err = cli("serve", "--model", str(trained_run), "--port", "70000")
    assert code == 2 and "port number" in err and err.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cli("serve", "--model", str(trained_run), "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1
