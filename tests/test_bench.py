"""`mnistlab bench --quick`: the harness runs end to end and writes bench.json / bench.md (no timing asserted)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from mnistlab.bench.harness import floor_summary, markdown
from mnistlab.bench.reference import ReferenceMNIST
from mnistlab.cli import main
from mnistlab.data import load_split
from mnistlab.training.device import amp_dtype, amp_name, cpu_supports_bf16


def test_notebook_dataset_matches_totensor(mnist_dir):
    images, labels = load_split("mnist", "test", mnist_dir)
    ds = ReferenceMNIST(images[:5], labels[:5])
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype.is_floating_point and y == int(labels[3])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert (x[0] * 255).round().to(images.dtype).equal(images[3])


def test_floor_summary_takes_each_epoch_against_the_floor_measured_after_it():
    # The host slows down 2x and 4x over the run: steps and kernels alike. Epoch by epoch the step sits at its
    # floor; the mean step over the median floor would read 1.17x.
    shapes = {"a": "2x2 @ 2x2", "b": "Adam"}
    floors = [{"kernels": {"a": 0.25 * f, "b": 0.75 * f}, "floor_ms": f, "shapes": shapes, "steps_per_epoch": 10,
               "amp": "float32", "batch_size": 32, "threads": 2} for f in (100.0, 200.0, 400.0)]
    fl = floor_summary(floors, [1.0, 2.0, 4.0])
    assert fl["kernels"] == {"a": 50.0, "b": 150.0} and fl["floor_ms"] == 200.0 and fl["shapes"] == shapes
    assert fl["step_ms"] == pytest.approx(700.0 / 3) and fl["ratio"] == pytest.approx(1.0)
    assert [e["ratio"] for e in fl["epochs"]] == pytest.approx([1.0, 1.0, 1.0])
    assert [e["step_ms"] for e in fl["epochs"]] == pytest.approx([100.0, 200.0, 400.0])
    fl = floor_summary(floors, [1.5, 2.0, 4.0])  # one slow epoch moves the median of three ratios by nothing
    assert fl["ratio"] == pytest.approx(1.0) and fl["epochs"][0]["ratio"] == pytest.approx(1.5)


@pytest.fixture(scope="module")
def quick(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--quick", "--serve", "--device", "cpu", "--data-dir", str(mnist_dir), "--out", str(out)]
    assert main(argv) == 0
    return out, json.loads((out / "bench.json").read_text())


@pytest.mark.parametrize("missing", ["httpx", "fastapi", "uvicorn"])
def test_bench_serve_without_the_serve_extra_stops_before_training(missing, monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == missing or m.startswith(("mnistlab.serve", f"{missing}."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError, as when not installed
    assert main(["bench", "--quick", "--serve", "--device", "cpu", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --serve needs the 'serve' extra ({missing} is missing): pip install 'mnistlab[serve]'"]
    assert not (tmp_path / "b").exists()  # nothing trained, nothing written


@pytest.mark.slow  # the whole benchmark harness, on a small subset
def test_bench_json_has_every_documented_key(quick):
    _, r = quick
    for name in ("reference", "mnistlab"):
        c = r[name]
        for key in ("seconds_per_epoch", "images_per_s", "peak_rss_mb", "test_acc"):
            assert isinstance(c[key], float) and c[key] > 0, (name, key)
        assert c["test_acc"] <= 100 and c["epochs"] == 1 and len(c["epoch_seconds"]) == 1
        assert c["train_images"] == 640
    assert r["speedup"] == pytest.approx(r["reference"]["seconds_per_epoch"] / r["mnistlab"]["seconds_per_epoch"])
    assert r["reference"]["worker_peak_rss_mb"] > 0
    f = r["fast"]
    assert f["seeds"] == [0, 1] and len(f["test_accs"]) == len(f["train_seconds"]) == 2
    assert f["mean_test_acc"] == pytest.approx(sum(f["test_accs"]) / 2)
    assert f["min_test_acc"] == min(f["test_accs"]) and 0 <= f["frac_at_least_99"] <= 1
    assert f["warmup_images"] == 1024 and f["warmup_seconds"] > 0  # the untimed warm-up is reported, not mixed in
    fl = r["floor"]
    # under bf16 autocast the fp32 master weights cost two conversions a step, counted as kernels of their own
    masters = ["weights to bf16", "gradients to fp32"] if fl["amp"] == "bfloat16" else []
    names = ["conv1 forward", "conv1 backward", "d1 forward", "d1 grad-weight", "d1 grad-input", "d2 forward",
             "d2 grad-weight", "d2 grad-input", *masters, "optimizer"]
    assert sorted(fl["kernels"]) == sorted(names) and list(fl["kernels"])[-1] == "optimizer"
    assert all(isinstance(ms, float) and ms > 0 for ms in fl["kernels"].values())
    assert fl["shapes"]["d1 forward"] == "32x21632 @ 21632x128"
    assert "2,770,634 parameters" in fl["shapes"]["optimizer"]
    assert fl["floor_ms"] == pytest.approx(sum(fl["kernels"].values()))
    assert fl["amp"] == ("bfloat16" if r["machine"]["cpu_native_bf16"] else "float32") and fl["batch_size"] == 32
    assert fl["steps_per_epoch"] == 20  # 640 images in batches of 32
    assert fl["step_ms"] == pytest.approx(1e3 * r["mnistlab"]["seconds_per_epoch"] / 20)
    assert fl["ratio"] == pytest.approx(fl["step_ms"] / fl["floor_ms"])  # one epoch: one floor
    assert len(fl["epochs"]) == 1 and fl["epochs"][0]["ratio"] == pytest.approx(fl["ratio"])
    m = r["machine"]
    assert m["cpu"] and m["cores"] == os.cpu_count() and m["torch"] == torch.__version__ and "gpu" in m
    auto = amp_name(amp_dtype("auto", torch.device("cpu")))  # both mnistlab contenders run --amp auto
    assert m["cpu_native_bf16"] == cpu_supports_bf16()
    assert m["amp_dtype"] == {"reference": None, "mnistlab": auto, "fast": auto}


@pytest.mark.slow  # the whole benchmark harness, on a small subset
def test_bench_serve_load_tests_the_model_it_trained(quick):
    from mnistlab.files.checkpoints import read_model

    out, r = quick
    s = r["serve"]
    assert s["model"] == str(out / "fast.safetensors") and (out / "serve.json").exists()
    _, meta, fmt = read_model(out / "fast.safetensors")
    assert fmt == "safetensors" and meta["preset"] == "fast"
    assert s["errors"] == 0 and s["requests"] > 0 and s["requests_per_s"] > 0
    assert 0 < s["p50_ms"] <= s["p99_ms"] and s["clients"] == 8 and 2.5 <= s["seconds"] < 10


@pytest.mark.slow  # the whole benchmark harness, on a small subset
def test_bench_md_is_the_table(quick):
    out, r = quick
    text = (out / "bench.md").read_text()
    assert text == markdown(r)
    assert "| mnistlab `notebook` preset |" in text and f"{r['speedup']:.2f}x" in text
    assert "| d1 grad-weight | 128x32 @ 32x21632 |" in text and f"**{r['floor']['ratio']:.2f}x** its floor" in text
    auto = f"{r['machine']['amp_dtype']['mnistlab']} autocast" if r["machine"]["amp_dtype"]["mnistlab"] else "fp32"
    assert "| notebook pipeline (DataLoader, 2 workers) | fp32 |" in text
    assert f"| mnistlab `notebook` preset | {auto} |" in text and f"`fast` trained in {auto}." in text
    assert f"p50 {r['serve']['p50_ms']} ms" in text


def test_bench_rejects_bad_options(capsys):
    assert main(["bench", "--dataset", "fashion-mnist"]) == 2
    assert "MNIST only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "--epochs", "0"])
    assert e.value.code == 2
