"""TensorBoard event files, read back with TensorBoard's own event reader: the per-epoch scalars equal
metrics.csv (also across --resume, with no step twice), and the end-of-run hparams and images are there."""

from __future__ import annotations

import csv
import io
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnistlab.training import tensorboard
from mnistlab.training.run import train

TRAIN = ["train", "--preset", "notebook", "--subset", "1000", "--test-subset", "500", "--seed", "0", "--device", "cpu",
         "--quiet"]


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def csv_rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def assert_scalars_equal_metrics_csv(run: Path) -> EventAccumulator:
    """Every per-epoch tag has exactly one point per metrics.csv row, at step = epoch, with its value."""
    acc, rows = events(run), csv_rows(run)
    logged = 0
    for column, tag in tensorboard.SCALARS.items():
        expected = [(int(r["epoch"]), float(r[column])) for r in rows if r.get(column)]
        if not expected:
            assert tag not in acc.Tags()["scalars"], tag
            continue
        points = acc.Scalars(tag)
        assert [p.step for p in points] == [e for e, _ in expected], tag  # each epoch once, in order
        for p, (_, value) in zip(points, expected, strict=True):
            assert p.value == pytest.approx(value, rel=1e-6), tag  # stored as float32
        logged += 1
    assert logged >= 7
    return acc


def test_scalars_hparams_and_images_of_a_run(cli, mnist_dir, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli(*TRAIN, "--epochs", "2", "--val", "200", "--lr", "2e-3", "--data-dir", str(mnist_dir),
                       "--out", str(run))
    assert code == 0, err
    acc = assert_scalars_equal_metrics_csv(run)
    assert {"loss/val", "accuracy/val", "optim/lr", "speed/images_per_s"} <= set(acc.Tags()["scalars"])
    assert [p.is_dir() for p in run.iterdir()].count(True) == 0  # the hparams are in the run's own folder
    assert len(list(run.glob("events.out.tfevents.*"))) == 1

    last = csv_rows(run)[-1]
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == pytest.approx(2e-3) and hp["optimizer"].string_value == "Adam"
    assert hp["epochs"].number_value == 2 and hp["val"].number_value == 200
    assert hp["precision"].string_value in ("fp32", "bf16")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"hparam/test_acc", "hparam/val_acc", "hparam/best_val_acc"} <= metrics
    for name in ("test_acc", "val_acc", "train_loss"):
        [point] = acc.Scalars(f"hparam/{name}")
        assert point.step == 2 and point.value == pytest.approx(float(last[name]), rel=1e-6)

    images = acc.Tags()["images"]
    assert sorted(images) == ["evaluation/confusion_matrix", "evaluation/most_confident_mistakes",
                              "evaluation/test_samples"]
    for tag in images:
        [event] = acc.Images(tag)
        png = Image.open(io.BytesIO(event.encoded_image_string))
        assert event.step == 2 and png.size[0] > 300 and png.size[1] > 200


def test_resume_appends_and_a_crash_past_the_checkpoint_is_not_counted_twice(cli, mnist_dir, tmp_path):
    run, saved = tmp_path / "run", tmp_path / "after-epoch-2"
    data = ["--data-dir", str(mnist_dir)]
    assert cli(*TRAIN, "--epochs", "2", *data, "--out", str(run))[0] == 0
    saved.mkdir()
    for name in ("checkpoint.pt", "metrics.csv", "metrics.jsonl"):
        shutil.copy2(run / name, saved / name)

    assert cli("train", "--resume", str(run), "--epochs", "3", "--quiet", *data)[0] == 0
    assert [int(r["epoch"]) for r in csv_rows(run)] == [1, 2, 3]
    assert_scalars_equal_metrics_csv(run)

    # As if the process had died after logging epoch 3 but before its checkpoint: the resumed run trains
    # epoch 3 again, and TensorBoard keeps only the new epoch 3 (the earlier files' steps are purged, the
    # checkpoint's epochs 1-2 logged again).
    for name in ("checkpoint.pt", "metrics.csv", "metrics.jsonl"):
        shutil.copy2(saved / name, run / name)
    assert cli("train", "--resume", str(run), "--epochs", "3", "--quiet", *data)[0] == 0
    assert len(list(run.glob("events.out.tfevents.*"))) == 3
    acc = assert_scalars_equal_metrics_csv(run)
    assert [p.step for p in acc.Images("evaluation/confusion_matrix")] == [3]


def test_a_copied_run_without_event_files_gets_its_whole_history(cli, mnist_dir, tmp_path):
    """What a sweep does when it resumes a copy of an existing run (its event files are not copied)."""
    run, copy = tmp_path / "run", tmp_path / "copy"
    data = ["--data-dir", str(mnist_dir)]
    assert cli(*TRAIN, "--epochs", "1", "--subset", "300", *data, "--out", str(run))[0] == 0
    copy.mkdir()
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "checkpoint.pt"):
        shutil.copy2(run / name, copy / name)
    assert cli("train", "--resume", str(copy), "--epochs", "2", "--quiet", *data)[0] == 0
    assert [p.step for p in assert_scalars_equal_metrics_csv(copy).Scalars("accuracy/test")] == [1, 2]


def test_no_tensorboard_option_and_missing_package(cli, mnist_dir, tmp_path, monkeypatch, capsys):
    code, _, err = cli(*TRAIN, "--epochs", "1", "--no-tensorboard", "--data-dir", str(mnist_dir),
                       "--out", str(tmp_path / "off"))
    assert code == 0 and err == ""
    assert not list((tmp_path / "off").glob("events.*")) and (tmp_path / "off" / "metrics.csv").exists()

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    monkeypatch.setattr(tensorboard, "_told_missing", False)
    for name in ("missing-1", "missing-2"):
        result = train("notebook", epochs=1, subset=300, device="cpu", data_dir=mnist_dir, quiet=True,
                       out=tmp_path / name)
        assert result.history and (tmp_path / name / "model.safetensors").exists()
        assert not list((tmp_path / name).glob("events.*"))
    assert capsys.readouterr().err.splitlines() == [tensorboard.MISSING]  # said once, training went on
