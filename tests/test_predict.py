"""Classifying with a saved model: dataset samples (Exercise 4), the user's own images, and every bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnistlab.data import load_split
from mnistlab.errors import InputImageError
from mnistlab.inference.predict import LoadedModel, classify_images, classify_indices, load_model


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


def seven(w: int, h: int, ink: int = 0, paper: int = 255, width: int | None = None) -> Image.Image:
    """A hand-drawn 7 filling the middle of a w x h grayscale canvas."""
    im = Image.new("L", (w, h), paper)
    s = min(w, h)
    x0, y0 = (w - s * 0.5) / 2, h * 0.15
    ImageDraw.Draw(im).line([(x0, y0), (x0 + s * 0.5, y0), (x0 + s * 0.2, h * 0.85)], fill=ink,
                            width=width or max(2, s // 14), joint="curve")
    return im


def zero(w: int, h: int, ink: int = 255, paper: int = 0) -> Image.Image:
    im = Image.new("L", (w, h), paper)
    ImageDraw.Draw(im).ellipse([w * 0.3, h * 0.15, w * 0.7, h * 0.85], outline=ink, width=max(2, min(w, h) // 14))
    return im


# ---------------------------------------------------------------- Exercise 4: reload and classify samples
def test_classify_training_samples_after_reload(loaded, mnist_dir):
    results = classify_indices(loaded, list(range(20)), split="train", data_dir=mnist_dir, top_k=2)
    labels = load_split("mnist", "train", mnist_dir)[1][:20].tolist()
    assert [r["label"] for r in results] == labels and [r["input"] for r in results] == list(range(20))
    assert sum(r["correct"] for r in results) >= 17  # a 93%-model gets nearly all of them
    for r in results:
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
        assert r["blank"] is False and r["prediction"] == r["top_k"][0][0] and len(r["top_k"]) == 2


def test_predict_command_table_json_and_show(trained_run, mnist_dir, tmp_path, cli):
    code, out, err = cli("predict", "--model", str(trained_run), "--index", "0-2,9", "--split", "train",
                         "--format", "json", "--top-k", "3", "--data-dir", str(mnist_dir))
    assert code == 0, err
    rows = json.loads(out)
    assert [r["input"] for r in rows] == [0, 1, 2, 9] and [r["label"] for r in rows] == [5, 0, 4, 4]
    assert all(set(r) >= {"input", "prediction", "probabilities", "blank", "label"} for r in rows)
    show = tmp_path / "seen.png"
    code, out, err = cli("predict", "--model", str(trained_run), "--index", "0,1", "--show", str(show),
                         "--data-dir", str(mnist_dir))
    assert code == 0 and "test index" in out and "label" in out and str(show) in out
    assert Image.open(show).format == "PNG"


def test_predict_needs_an_input_and_valid_indices(trained_run, cli):
    code, _, err = cli("predict", "--model", str(trained_run))
    assert code == 2 and "one of the arguments --index --image is required" in err
    code, _, err = cli("predict", "--model", str(trained_run), "--index", "five")
    assert code == 2 and "expected indices like 0,5,9" in err
    code, _, err = cli("predict", "--model", str(trained_run), "--index", "10000")
    assert code == 2 and "index 10000 out of range: the test split has 10,000 images" in err


# ---------------------------------------------------------------- own images, preprocessed like MNIST
def test_drawn_digits_of_both_polarities_are_recognised(loaded, tmp_path, cli):
    """Black ink on white paper at 300x200, and white on black at MNIST's own 28x28."""
    seven(300, 200).save(tmp_path / "seven_300x200.png")
    zero(28, 28).save(tmp_path / "zero_28x28.png")
    seven(28, 28, ink=255, paper=0, width=2).save(tmp_path / "seven_28x28.png")
    zero(300, 200, ink=0, paper=255).convert("RGB").save(tmp_path / "zero.jpg", quality=90)
    names = ["seven_300x200.png", "zero_28x28.png", "seven_28x28.png", "zero.jpg"]
    results = classify_images(loaded, [tmp_path / n for n in names])
    assert [r["prediction"] for r in results] == [7, 0, 7, 0], [r["top_k"] for r in results]
    code, out, _ = cli("predict", "--model", str(loaded.path), "--image", str(tmp_path / names[0]),
                       "--format", "json", "--show", str(tmp_path / "seen.png"))
    assert code == 0 and json.loads(out)[0]["prediction"] == 7 and (tmp_path / "seen.png").exists()


def _ink_on_transparent(kind: str) -> Image.Image:
    """A 7 in opaque black ink on fully transparent pixels whose hidden colour is also black."""
    ink = np.asarray(seven(120, 120, ink=255, paper=0)) > 127
    if kind == "rgba":
        a = np.zeros((120, 120, 4), np.uint8)
        a[..., 3] = np.where(ink, 255, 0)
        return Image.fromarray(a, "RGBA")
    im = Image.fromarray(ink.astype(np.uint8), "P")  # index 0: transparent black, index 1: black ink
    im.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
    im.info["transparency"] = 0
    return im


def _sixteen_bit() -> Image.Image:
    a = np.asarray(seven(56, 56, ink=255, paper=0), dtype=np.uint16) * 257  # white ink, full 16-bit range
    return Image.fromarray(a.astype(np.uint16))


def _animated(path: Path) -> None:
    frames = [seven(40, 40), zero(40, 40)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.mark.parametrize("name, make, expected", [
    ("sixteen.png", _sixteen_bit, 7),
    ("rgba.png", lambda: _ink_on_transparent("rgba"), 7),
    ("palette.png", lambda: _ink_on_transparent("palette"), 7),
    ("one_pixel.png", lambda: Image.new("L", (1, 1), 0), "blank"),
    ("white.png", lambda: Image.new("L", (300, 200), 255), "blank"),
    ("faint.png", lambda: seven(100, 100, ink=250, paper=255), "blank"),
])
def test_awkward_images_are_handled(name, make, expected, trained_run, tmp_path, cli):
    path = tmp_path / name
    make().save(path)
    if name == "sixteen.png":
        assert Image.open(path).mode.startswith("I")
    code, out, err = cli("predict", "--model", str(trained_run), "--image", str(path), "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    if expected == "blank":  # never a silent guess on an empty picture
        assert row["blank"] is True and row["prediction"] is None and row["top_k"] == []
        code, out, _ = cli("predict", "--model", str(trained_run), "--image", str(path))
        assert code == 0 and "blank image: no digit found" in out
    else:
        assert row["blank"] is False and row["prediction"] == expected, row["top_k"]


@pytest.mark.parametrize("name, content, message", [
    ("notes.png", b"these are my notes, not a picture\n" * 20, "not an image (unrecognised format)"),
    ("empty.png", b"", "empty file, not an image"),
    ("truncated.png", "truncate", "truncated or corrupt image"),
    ("bomb.png", "bomb", "image too large (8000x6000 = 48,000,000 pixels)"),
    ("animated.gif", "animate", "animated/multi-frame image (2 frames)"),
    ("missing.png", None, "cannot read file"),
])
def test_bad_images_are_refused_with_one_line(name, content, message, trained_run, tmp_path, cli):
    path = tmp_path / name
    if content == "truncate":
        seven(300, 200).save(path)
        path.write_bytes(path.read_bytes()[:-200])
    elif content == "bomb":
        Image.new("1", (8000, 6000)).save(path)  # a 6 kB file that would decode to 48 megapixels
        assert path.stat().st_size < 20_000
    elif content == "animate":
        _animated(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputImageError, match=re.escape(f"{path}: ")):
        classify_images(load_model(trained_run), [path])
    code, out, err = cli("predict", "--model", str(trained_run), "--image", str(path))
    assert code == 2 and out == ""
    assert err == f"error: {path}: " + err.split(": ", 2)[2] and message in err and len(err.splitlines()) == 1


def test_bad_image_in_a_real_process_has_no_traceback(trained_run, tmp_path):
    bad = tmp_path / "digit.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing sensible after it
    r = subprocess.run([sys.executable, "-m", "mnistlab", "predict", "--model", str(trained_run), "--image",
                        str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {bad}: ") and "Traceback" not in r.stderr


def test_models_that_already_output_probabilities_are_not_softmaxed_twice(loaded, tmp_path):
    """The lab notebook's own forward() ends in softmax; such outputs pass through unchanged."""

    class SoftmaxNet(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).softmax(1)

    images = torch.rand(8, 1, 28, 28)
    quirky = LoadedModel.of(SoftmaxNet(loaded.model), loaded.meta, tmp_path / "quirky.pt", "pickle")
    assert torch.allclose(quirky.probabilities(images), loaded.probabilities(images), atol=1e-6)
    assert quirky.probabilities(images[:0]).shape == (0, 10)
