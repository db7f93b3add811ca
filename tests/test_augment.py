"""On-device augmentation: the random affine transform and training with it."""

from __future__ import annotations

import json

import pytest
import torch

from mnistlab.errors import ConfigError
from mnistlab.training.augment import RandomAffine, affine
from mnistlab.training.engine import Callback
from mnistlab.training.run import train


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """(N, 2) centre of mass (x, y) in pixels of (N, 1, H, W) non-negative images."""
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    m = x.sum((1, 2, 3))
    return torch.stack([(x[:, 0] * xs).sum((1, 2)) / m, (x[:, 0] * ys).sum((1, 2)) / m], 1)


def blob(n: int = 3) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, 10:15, 9:13] = 1.0
    return x



class StopAt(Callback):
    """Engine callback interrupting a run when epoch `epoch` starts (after the previous one was saved)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_zero_magnitudes_are_the_identity():
    x = torch.randn(4, 1, 28, 28)
    assert RandomAffine()(x) is x  # nothing to do: no resampling at all
    assert torch.allclose(affine(x, torch.zeros(4, 2)), x, atol=1e-5)
    assert torch.allclose(affine(x, torch.zeros(4, 2), torch.zeros(4), torch.ones(4)), x, atol=1e-5)


def test_shift_moves_the_centre_of_mass_by_the_shift():
    x = blob()
    shift = torch.tensor([[3.0, 0.0], [-2.0, 4.0], [1.5, -2.5]])
    moved = centre_of_mass(affine(x, shift)) - centre_of_mass(x)
    assert torch.allclose(moved, shift, atol=1e-3)


def test_rotation_turns_about_the_centre_and_scale_zooms():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 13:15, 20:22] = 1.0  # right of the centre (13.5, 13.5)
    turned = centre_of_mass(affine(x, torch.zeros(1, 2), torch.tensor([90.0])))[0]
    assert torch.allclose(turned, torch.tensor([13.5, 20.5]), atol=0.1)  # +90 degrees: right -> below (y down)
    zoomed = affine(x, torch.zeros(1, 2), scale=torch.tensor([1.5]))
    assert centre_of_mass(zoomed)[0, 0] > 20.5 + 2  # further from the centre
    assert zoomed.sum() > x.sum() * 1.5  # and bigger


def test_random_affine_is_deterministic_under_a_seed_and_keeps_shapes():
    aug = RandomAffine(translate=2.5, rotate=10, scale=0.1)
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    b = aug(x)
    c = aug(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(b, c)
    digits = torch.nn.functional.interpolate(torch.rand(8, 1, 7, 7), size=28, mode="bilinear")  # smooth images
    out = RandomAffine(translate=1.0, rotate=3)(digits)  # per image, in order: labels stay with their images
    nearest = torch.cdist(out.flatten(1), digits.flatten(1)).argmin(1)
    assert nearest.tolist() == list(range(8))
    shifts = centre_of_mass(aug(blob(64))) - centre_of_mass(blob(64))
    assert shifts.abs().max() <= 2.5 * 1.5 + 2  # bounded by translate plus rotation/zoom of an off-centre blob
    assert shifts.std() > 0.3  # and actually random


def test_bad_augment_settings_are_config_errors():
    with pytest.raises(ConfigError, match="augment"):
        RandomAffine(scale=1.5)


def test_augmented_training_keeps_labels_and_resumes_identically(mnist_dir, tmp_path):
    """The engine augments images only; seeded runs (and a resumed one) see the same augmentations. Under bf16
    autocast (emulated where the CPU lacks it), as a CPU with native bf16 trains by default."""
    kw = dict(subset=512, batch_size=128, epochs=2, device="cpu", amp="bf16", data_dir=mnist_dir, quiet=True,
              model_args={"widths": (8, 8, 16), "extra": 0})
    a = train("best", out=tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        train("best", out=tmp_path / "b", callbacks=(StopAt(2),), **kw)
    b = train(resume=tmp_path / "b", data_dir=mnist_dir, quiet=True)
    assert json.loads((tmp_path / "b" / "env.json").read_text())["amp_dtype"] == "bf16"  # kept on resume
    assert a.history[-1]["train_loss"] == pytest.approx(b.history[-1]["train_loss"], rel=1e-5)
    assert a.history[-1]["test_acc"] == b.history[-1]["test_acc"]
    assert a.history[1]["train_loss"] < a.history[0]["train_loss"]  # labels still match the augmented images
