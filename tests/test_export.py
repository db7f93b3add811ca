"""`mnistlab export`: ONNX checked against PyTorch through onnxruntime, TorchScript, normalisation baked in."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mnistlab.inference.export
from mnistlab.data import load_split
from mnistlab.errors import MnistlabError
from mnistlab.files.checkpoints import save_model
from mnistlab.inference.export import export_model
from mnistlab.inference.predict import load_model
from mnistlab.models import build_model
from mnistlab.presets import MNIST_MEAN_STD


@pytest.fixture(scope="module")
def pixels(mnist_dir) -> torch.Tensor:
    """The first 1,000 test images as float32 (N, 1, 28, 28) in [0, 1]: what ONNX consumers feed."""
    return load_split("mnist", "test", mnist_dir)[0][:1000, None].float() / 255.0


@pytest.fixture(scope="module")
def normalised_model(tmp_path_factory):
    """A LeNet-5 that expects MNIST-normalised inputs, saved with that normalisation in its metadata."""
    torch.manual_seed(1)
    model = build_model("lenet5").eval()
    path = tmp_path_factory.mktemp("lenet") / "lenet.safetensors"
    save_model(model, path, {"model": "lenet5", "model_args": {}, "preset": None, "normalise": MNIST_MEAN_STD})
    return model, path


def ort_logits(path, pixels: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    return session.run(["logits"], {"pixels": pixels.numpy()})[0]


def test_onnx_export_is_checked_against_pytorch(trained_run, mnist_dir, pixels, tmp_path, cli):
    out = tmp_path / "digits.onnx"
    code, text, _ = cli("export", "--model", str(trained_run), "--format", "onnx", "--out", str(out),
                        "--data-dir", str(mnist_dir))
    assert code == 0
    assert "argmax identical on 1,000/1,000" in text and "normalisation baked in" in text
    diff = float(re.search(r"max abs probability difference ([0-9.e+-]+)", text).group(1))
    assert diff <= 1e-4
    # an independent check: plain onnxruntime on raw pixels against the PyTorch model
    model = load_model(trained_run).model
    with torch.no_grad():
        ref = model(pixels).softmax(1)
    got = torch.from_numpy(ort_logits(out, pixels)).softmax(1)
    assert torch.equal(got.argmax(1), ref.argmax(1)) and (got - ref).abs().max() <= 1e-4
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["mnistlab"])
    assert meta["model"] == "notebook" and meta["normalise_baked"] is True
    assert ort_logits(out, pixels[:7]).shape == (7, 10)  # the batch dimension is dynamic


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_normalisation_is_baked_into_exported_graphs(normalised_model, mnist_dir, pixels, tmp_path, cli):
    model, path = normalised_model
    mean, std = MNIST_MEAN_STD
    with torch.no_grad():
        ref = model((pixels - mean) / std)
    onnx_out, ts_out = tmp_path / "lenet.onnx", tmp_path / "lenet.ts"
    code, text, _ = cli("export", "--model", str(path), "--out", str(onnx_out), "--data-dir", str(mnist_dir))
    assert code == 0 and "1,000/1,000" in text
    assert cli("export", "--model", str(path), "--out", str(ts_out))[0] == 0  # format from the extension
    assert np.abs(ort_logits(onnx_out, pixels) - ref.numpy()).max() < 1e-4  # fed raw [0, 1] pixels
    with torch.no_grad():
        scripted = torch.jit.load(str(ts_out))(pixels)
    assert (scripted - ref).abs().max() < 1e-5


def test_a_failed_onnx_check_writes_nothing(normalised_model, mnist_dir, tmp_path, monkeypatch):
    _, path = normalised_model
    monkeypatch.setattr(mnistlab.inference.export, "ONNX_TOLERANCE", -1.0)  # no graph can pass this
    out = tmp_path / "bad.onnx"
    with pytest.raises(MnistlabError, match=r"ONNX check failed on 1000 test images: .* not written"):
        export_model(load_model(path), out, "onnx", mnist_dir)
    assert list(tmp_path.iterdir()) == []


def test_export_refusals_are_one_line(normalised_model, tmp_path, cli):
    _, path = normalised_model
    graph = tmp_path / "lenet.ts"
    assert cli("export", "--model", str(path), "--format", "torchscript", "--out", str(graph))[0] == 0
    code, _, err = cli("export", "--model", str(graph), "--format", "onnx", "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and "already an exported graph" in err
    code, _, err = cli("export", "--model", str(path), "--format", "h5", "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "invalid choice: 'h5'" in err
