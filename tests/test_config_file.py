"""`train --config FILE`: a run's config.json re-runs that run exactly; TOML files; flags override; bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnistlab import presets
from mnistlab.errors import ConfigError
from mnistlab.files.runs import read_json, read_metrics
from mnistlab.presets import Config, load_config, read_run_config, resolve

TIMING = {"seconds", "eval_seconds", "images_per_s"}


def numbers(run_dir):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run_dir)]


def test_config_json_reruns_the_run_and_flags_override_it(cli, mnist_dir, tmp_path):
    data = ["--data-dir", str(mnist_dir), "--quiet"]
    first, again, longer = tmp_path / "first", tmp_path / "again", tmp_path / "longer"
    code, _, err = cli("train", "--preset", "notebook", "--optimizer", "sgd", "--opt", "momentum=0.9", "--lr", "0.05",
                       "--epochs", "1", "--subset", "600", "--val", "100", "--test-subset", "500", "--seed", "4",
                       "--device", "cpu", *data, "--out", str(first))
    assert code == 0, err
    code, _, err = cli("train", "--config", str(first / "config.json"), *data, "--out", str(again))
    assert code == 0, err
    assert read_json(again / "config.json") == read_json(first / "config.json")
    assert numbers(again) == numbers(first)  # same settings, same seed, same numbers
    # Only the options actually given override the file: --epochs here; not the default --preset notebook.
    code, _, err = cli("train", "--config", str(first / "config.json"), "--epochs", "2", *data, "--out", str(longer))
    assert code == 0, err
    cfg = read_json(longer / "config.json")
    assert cfg["epochs"] == 2 and cfg["optimizer"] == "SGD" and cfg["opt_args"] == {"lr": 0.05, "momentum": 0.9}
    assert cfg["seed"] == 4 and cfg["val"] == 100
    assert numbers(longer)[0] == numbers(first)[0]  # epoch 1 of the longer run is the first run's epoch 1


def test_toml_applies_settings_to_its_preset(tmp_path):
    f = tmp_path / "fast.toml"
    f.write_text('preset = "fast"\nepochs = 2\nval = 5000\nearly_stop = 1\n\n[opt_args]\nlr = 0.02\n')
    cfg = load_config(f)
    assert cfg == resolve("fast", epochs=2, val=5000, early_stop=1, lr=0.02)
    assert cfg.opt_args == {"lr": 0.02, "betas": (0.7, 0.9)}  # merged like --lr/--opt
    plain = tmp_path / "plain.toml"
    plain.write_text("epochs = 3\n")
    assert load_config(plain) == resolve("notebook", epochs=3)


@pytest.mark.parametrize("name, text, message", [
    ("bad.toml", "epochs = ", "not valid TOML"),
    ("bad.json", "{\"epochs\": 2,", "not valid JSON"),
    ("list.json", "[1, 2]", "expected a table of Config settings"),
    ("typo.toml", "epoch = 5\n", "unknown setting(s) epoch"),
    ("type.toml", 'epochs = "5"\n', "epochs = '5' is not of type int"),
    ("value.toml", "val = -1\n", "val must be 0 or more"),
    ("other.toml", 'preset = "mine"\n', "unknown preset 'mine'"),
])
def test_bad_files_are_one_line_errors(cli, tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert message in str(e.value)
    code, out, err = cli("train", "--config", str(f))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_config_conflicts(cli, tmp_path):
    code, _, err = cli("train", "--config", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json: not found" in err
    (tmp_path / "c.toml").write_text("epochs = 1\n")
    code, _, err = cli("train", "--config", str(tmp_path / "c.toml"), "--preset", "fast")
    assert code == 2 and err.startswith("error: --config and --preset cannot be combined")


def test_a_runs_config_has_one_strict_reader_that_says_what_it_filled(monkeypatch, tmp_path):
    def stored(data) -> Path:
        (tmp_path / "config.json").write_text(json.dumps(data))
        return tmp_path

    cfg = Config(epochs=3, subset=500)
    assert read_run_config(stored(cfg.to_dict())) == (cfg, [])
    old = {k: v for k, v in Config(preset="fast", epochs=2).to_dict().items() if k not in ("test_subset", "ema")}
    got, filled = read_run_config(stored(old))  # written before test_subset and ema existed: Config's defaults
    assert filled == ["ema", "test_subset"] and got == Config(preset="fast", epochs=2)
    with pytest.raises(ConfigError, match=r"config.json: unknown setting\(s\) epoch; the settings are preset, "):
        read_run_config(stored({"epoch": 2}))
    with pytest.raises(ConfigError, match="batch_size = 'big' is not of type int"):
        read_run_config(stored({"batch_size": "big"}))
    with pytest.raises(ConfigError, match=r"config.json: batch_size must be at least 1, got 0"):  # validated
        read_run_config(stored({**cfg.to_dict(), "batch_size": 0}))
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON"):
        (tmp_path / "config.json").write_text('{"epochs": 2')
        read_run_config(tmp_path)
    with pytest.raises(ConfigError, match=r"elsewhere: not found"):
        read_run_config(tmp_path / "elsewhere")
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"no config.json \(not a run directory\?\)"):
        read_run_config(tmp_path)
    monkeypatch.setitem(presets.RENAMED, "holdout", "val")  # a key renamed in a later version
    assert read_run_config(stored({"holdout": 100}))[0].val == 100
