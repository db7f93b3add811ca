"""Model files: every format round-trips exactly; pickles are refused unless trusted; a planted payload never runs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnistlab.data import load_split
from mnistlab.errors import ConfigError, MnistlabError, UnsafeFileError, WriteError
from mnistlab.files.checkpoints import FORMATS, format_for, load_checkpoint, save_checkpoint, save_model
from mnistlab.inference.predict import load_model
from mnistlab.models import build_model
from mnistlab.presets import MNIST_MEAN_STD

EXT = {"safetensors": ".safetensors", "state_dict": ".pt", "checkpoint": ".ckpt", "pickle": ".pkl",
       "torchscript": ".ts", "onnx": ".onnx"}


def mnistlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command in a new process."""
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def test_images(mnist_dir) -> torch.Tensor:
    return load_split("mnist", "test", mnist_dir)[0].float() / 255.0


@pytest.fixture(scope="module")
def reference(trained_run, test_images):
    loaded = load_model(trained_run)
    return loaded, loaded.probabilities(test_images)


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_with_identical_predictions(fmt, reference, test_images, tmp_path):
    loaded, probs = reference
    path = save_model(loaded.model, tmp_path / f"model{EXT[fmt]}", loaded.meta)
    assert format_for(path) == fmt and not list(tmp_path.glob(".*.tmp"))
    again = load_model(path, trust_pickle=fmt == "pickle")  # a new LoadedModel from the file alone
    assert again.format == fmt and again.name == "notebook" and again.params == 2_770_634
    assert again.test_acc == pytest.approx(loaded.test_acc)
    got = again.probabilities(test_images)
    assert torch.equal(got.argmax(1), probs.argmax(1))  # all 10,000 test images
    assert (got - probs).abs().max() <= (1e-5 if fmt == "onnx" else 1e-6)


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
def test_input_normalisation_travels_with_the_model(fmt, test_images, tmp_path):
    """A model trained on normalised inputs: safetensors records (mean, std); graphs bake them in."""
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    meta = {"model": "lenet5", "model_args": {}, "preset": None, "normalise": MNIST_MEAN_STD}
    mean, std = MNIST_MEAN_STD
    with torch.no_grad():
        expected = model((test_images[:500, None] - mean) / std).softmax(1)
    loaded = load_model(save_model(model, tmp_path / f"m{EXT[fmt]}", meta))
    assert loaded.normalise == (MNIST_MEAN_STD if fmt == "safetensors" else None)
    assert loaded.meta["normalise"] == list(MNIST_MEAN_STD) or loaded.meta["normalise"] == MNIST_MEAN_STD
    assert (loaded.probabilities(test_images[:500]) - expected).abs().max() < 1e-5


def test_bare_state_dict_loads_by_recognising_the_model(reference, test_images, tmp_path):
    loaded, probs = reference
    torch.save(loaded.model.state_dict(), tmp_path / "weights.pth")  # the tutorial's recommended way
    again = load_model(tmp_path / "weights.pth")
    assert again.name == "notebook" and again.format == "state_dict"
    assert torch.equal(again.probabilities(test_images[:1000]), probs[:1000])


def test_run_directory_and_latest_run(trained_run, tmp_path, monkeypatch):
    assert load_model(trained_run).path == trained_run / "model.safetensors"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MnistlabError, match="no trained model found under ./runs; train one"):
        load_model()
    (tmp_path / "runs").symlink_to(trained_run.parent)
    assert load_model().path.resolve() == (trained_run / "model.safetensors").resolve()


@pytest.mark.parametrize("bad, message", [
    ("missing.safetensors", "not found"),
    ("empty.pt", "empty file"),
    ("text.pt", "not a readable PyTorch file"),
    ("truncated.pt", "not a readable PyTorch file"),
    ("truncated.safetensors", "not a readable safetensors file"),
    ("garbage.onnx", "not a readable ONNX model"),
    ("malformed.pt", "a malformed mnistlab model file"),
])
def test_broken_model_files_are_one_line_errors(bad, message, tmp_path, cli):
    path = tmp_path / bad
    if bad.startswith("empty"):
        path.write_bytes(b"")
    elif bad.startswith("truncated"):
        data = save_model(build_model("lenet5"), path, {"model": "lenet5"}).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif bad.startswith("malformed"):
        torch.save({"format": "mnistlab-checkpoint", "model": [1, 2, 3]}, path)  # safe to load, but nonsense
    elif not bad.startswith("missing"):
        path.write_text("hello, I am not a model\n" * 10)
    with pytest.raises(MnistlabError, match=message):
        load_model(path)
    code, _, err = cli("predict", "--model", str(path), "--index", "0")
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown model format 'h5'"):
        save_model(build_model("lenet5"), tmp_path / "m.h5", {"model": "lenet5"}, format="h5")


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_intact(small_disk):
    """A real full disk (a 1 MB tmpfs): the write fails as one sentence with the size it needs and what is free,
    no temporary file is left, and the previous checkpoint still loads."""
    disk = small_disk("1m")
    path = save_checkpoint(disk / "checkpoint.pt", {"epoch": 1, "w": torch.ones(1000)})
    with pytest.raises(WriteError) as e:
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1_000_000)})
    message = str(e.value)
    assert message.startswith(f"cannot write checkpoint.pt in {disk}: no space left on the device (it needs 4.0 MB, ")
    assert message.endswith(" free)") and "Errno" not in message and "enforce" not in message
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in disk.iterdir()] == ["checkpoint.pt"]


# ---------------------------------------------------------------- the planted pickle
class Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def planted(tmp_path):
    """(marker, {kind: path}) for malicious files of every shape a user might be handed."""
    marker = tmp_path / "PWNED"
    files = {"torch.pt": tmp_path / "model.pt", "raw.pkl": tmp_path / "model.pkl"}
    torch.save({"state_dict": Payload(marker)}, files["torch.pt"])
    files["raw.pkl"].write_bytes(pickle.dumps(Payload(marker)))
    run = tmp_path / "run"  # an interrupted "run directory" whose checkpoint carries the payload
    run.mkdir()
    (run / "config.json").write_text('{"preset": "notebook", "epochs": 2, "subset": 100}')
    torch.save({"format": "mnistlab-checkpoint", "model": Payload(marker)}, run / "checkpoint.pt")
    files["run"] = run
    return marker, files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("kind", ["torch.pt", "raw.pkl", "run"])
def test_planted_pickle_is_refused_by_the_python_api(kind, planted):
    marker, files = planted
    with pytest.raises(UnsafeFileError, match="refusing to load a pickled Python object.*--trust-pickle"):
        load_model(files[kind])
    if kind != "run":
        with pytest.raises(UnsafeFileError):
            load_checkpoint(files[kind])
        with pytest.raises(pickle.UnpicklingError):
            torch.load(files[kind])  # torch's own default is weights_only=True too
    assert not marker.exists()


@pytest.mark.parametrize("command", [
    ["predict", "--index", "0"],
    ["predict", "--image", "x.png"],
    ["evaluate"],
    ["export", "--format", "onnx", "--out", "out.onnx"],
    ["export", "--format", "safetensors", "--out", "out.safetensors"],
])
@pytest.mark.parametrize("kind", ["torch.pt", "run"])
def test_planted_pickle_is_refused_by_every_command(command, kind, planted, tmp_path, cli, monkeypatch):
    marker, files = planted
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*command, "--model", str(files[kind]))
    assert code == 2 and err.startswith("error: ") and "refusing to load a pickled Python object" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists() and not list(tmp_path.glob("out.*"))


def test_planted_pickle_refused_by_real_processes_and_resume(planted, tmp_path):
    marker, files = planted
    for args in (["predict", "--model", str(files["raw.pkl"]), "--index", "0"],
                 ["train", "--resume", str(files["run"])]):
        r = mnistlab(*args, cwd=tmp_path)
        assert r.returncode == 2 and "refusing to load a pickled Python object" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not marker.exists()


def test_trust_pickle_really_unpickles(planted, reference, tmp_path, cli):
    """The control: the payload is live (trusting it runs it), and a trusted whole model loads."""
    marker, files = planted
    with pytest.raises(MnistlabError, match="holds a dict, not model weights"):
        load_model(files["torch.pt"], trust_pickle=True)
    assert marker.exists()
    loaded, _ = reference
    whole = tmp_path / "whole.pt"
    with open(whole, "wb") as f:
        torch.save(loaded.model, f)  # the PyTorch tutorial's torch.save(model), no mnistlab metadata
    code, _, err = cli("predict", "--model", str(whole), "--index", "0", "--format", "json")
    assert code == 2 and "--trust-pickle" in err
    code, out, err = cli("predict", "--model", str(whole), "--index", "0", "--format", "json",
                         "--trust-pickle")
    assert code == 0, err
    assert json.loads(out)[0]["prediction"] == 7  # test image 0 is a 7
