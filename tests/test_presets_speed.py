"""On-device augmentation, ensembles, the `fast` and `best` presets, and the CPU training mode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mnistlab.cli import main
from mnistlab.errors import ConfigError
from mnistlab.inference.ensemble import EnsembleNet, average_probs, evaluate_runs, train_ensemble
from mnistlab.models import build_model, count_params
from mnistlab.presets import resolve
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


# ---------------------------------------------------------------- augmentation
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


# ---------------------------------------------------------------- ensembles
class Fixed(torch.nn.Module):
    """A stand-in member whose logits are given, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_average_probs_and_the_ensemble_net():
    m1 = torch.tensor([[5.0, 0, 0], [0, 5, 0], [5, 0, 0]])  # wrong on the last
    m2 = torch.tensor([[5.0, 0, 0], [0, 0, 5], [0, 0, 5]])  # wrong on the second
    m3 = torch.tensor([[0.0, 5, 0], [0, 5, 0], [0, 0, 5]])  # wrong on the first
    probs = average_probs([m1, m2, m3])
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert torch.allclose(probs[0], (m1[0].softmax(0) * 2 + m3[0].softmax(0)) / 3)
    out = EnsembleNet([Fixed(m1), Fixed(m2), Fixed(m3)])(torch.zeros(3, 1, 28, 28))
    assert torch.equal(out, probs) and out.argmax(1).tolist() == [0, 1, 2]  # every mistake is outvoted
    with pytest.raises(ConfigError):
        average_probs([])


def test_train_ensemble_writes_members_and_scores(mnist_dir, tmp_path):
    ens = train_ensemble("fast", 2, out=tmp_path / "ens", subset=1024, device="cpu", amp="off",
                         data_dir=mnist_dir, quiet=True, seed=3)
    assert [m.config.seed for m in ens.members] == [3, 4]
    saved = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert saved["seeds"] == [3, 4] and saved["ensemble_test_acc"] == ens.test_acc
    assert saved["member_test_accs"] == pytest.approx([m.test_acc for m in ens.members], abs=1e-3)
    again = evaluate_runs([tmp_path / "ens" / "member-3", tmp_path / "ens" / "member-4"], mnist_dir)
    assert again["ensemble_test_acc"] == ens.test_acc  # the saved weights score what the run reported
    assert ens.test_acc > 30


def test_cli_ensemble(mnist_dir, tmp_path, capsys):
    rc = main(["train", "--preset", "fast", "--subset", "512", "--ensemble", "2", "--device", "cpu",
               "--data-dir", str(mnist_dir), "--out", str(tmp_path / "e")])
    assert rc == 0 and "ensemble of 2: test accuracy" in capsys.readouterr().out
    assert (tmp_path / "e" / "member-1" / "model.safetensors").exists()
    saved = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    members = [str(tmp_path / "e" / f"member-{seed}") for seed in saved["seeds"]]
    rc = main(["evaluate", "--model", members[0], "--model", members[1], "--data-dir", str(mnist_dir),
               "--out", str(tmp_path / "eval"), "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["accuracy"] == saved["ensemble_test_acc"]
    assert result["member_accuracies"] == saved["member_test_accs"] and result["model"] == "ensemble"
    assert main(["train", "--ensemble", "2", "--resume", str(tmp_path / "e")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["train", "--ensemble", "0"])
    assert e.value.code == 2


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", ["fast", "best"])
def test_speed_presets_resolve_and_build(preset):
    cfg = resolve(preset)
    model = build_model(cfg.model, **cfg.model_args)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert 50_000 < count_params(model) < 1_000_000
    assert cfg.normalise is not None and cfg.schedule == "onecycle"
    assert resolve(preset, epochs=3).epochs == 3


def test_fast_net_flattens_in_hwc_order_whatever_the_memory_layout():
    torch.manual_seed(0)
    net = build_model("fast", c1=4, c2=6, hidden=8, flatten="hwc").eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        plain = net(x)
        cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        # the dense layer's inputs are (height, width, channel): feature 1 is channel 1 of pixel (0, 0)
        feats = F.max_pool2d(net.conv2(F.relu(net.conv1(x))), 2).relu()
        by_hand = net.fc2(F.relu(net.fc1(feats.permute(0, 2, 3, 1).reshape(3, -1))))
    torch.testing.assert_close(plain, cl)
    torch.testing.assert_close(plain, by_hand)
    # the default reads them channel-first, as fast models saved before the preset switched were trained
    chw = build_model("fast", c1=4, c2=6, hidden=8)
    chw.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(chw.eval()(x), net.fc2(F.relu(net.fc1(feats.reshape(3, -1)))))
    assert resolve("fast").model_args["flatten"] == "hwc"


def test_fast_preset_trains_a_step(mnist_dir):
    r = train("fast", subset=256, device="cpu", data_dir=mnist_dir, quiet=True, write_run=False)
    assert r.config.model == "fast" and len(r.history) == r.config.epochs and 0 <= r.test_acc <= 100
    assert r.history[0]["images_per_s"] > 0


def test_best_preset_trains_a_step(mnist_dir):
    r = train("best", subset=128, epochs=1, device="cpu", data_dir=mnist_dir, quiet=True, write_run=False)
    assert r.config.augment and r.config.label_smoothing == 0.1
    assert 0 <= r.test_acc <= 100 and r.history[0]["train_loss"] > 0


@pytest.mark.gpu
def test_fast_preset_on_cuda_compiled(mnist_dir):
    """The GPU path: data resident on the GPU, bf16 autocast, torch.compile."""
    r = train("fast", device="cuda", compile=True, data_dir=mnist_dir, quiet=True, write_run=False)
    assert r.test_acc > 98.5
    assert next(r.model.parameters()).device.type == "cuda"


@pytest.mark.gpu
def test_fast_preset_on_cuda_graphs(mnist_dir):
    """--cuda-graphs: the compiled model replayed as CUDA graphs (the last, smaller batch gets its own graph)."""
    r = train("fast", device="cuda", cuda_graphs=True, data_dir=mnist_dir, quiet=True, write_run=False)
    assert r.config.cuda_graphs and r.test_acc > 98.5 and r.history[0]["train_acc"] > 90


# Run in a fresh process: how many minor page faults allocating and freeing a 48 MiB block costs, per step.
FAULTS_PER_STEP = """
import json, resource, torch

def faults_per_step(steps=10):
    out = []
    for _ in range(steps):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(48 << 18).fill_(1.0)  # 48 MiB of float32
        del block
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    return out
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_keep_freed_memory_stops_the_per_step_page_faults():
    """A large block freed and allocated again every step costs fresh zero-filled pages every time by default
    (above 32 MiB glibc always maps a new block; below, whether it does depends on the heap's layout, which is
    how the notebook's 11 MB gradient met it) and none in the steady state once the engine has told glibc to
    keep freed memory, as fit() does on the CPU (after the heap has grown to a few blocks: memalign'd blocks
    do not always fit the hole the last one left)."""
    code = FAULTS_PER_STEP + """
from mnistlab.training.device import keep_freed_memory, release_freed_memory

faults_per_step(2)
before = faults_per_step()
keep_freed_memory()
after = faults_per_step(20)
release_freed_memory()
print(json.dumps([before, after, faults_per_step()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, released = json.loads(out)
    assert min(before) > 10_000, before  # 12,288 pages of 4 KiB
    assert max(after[-5:]) < 50, after
    # Released: the kept pages went back to the kernel, so the first block after it faults them in afresh. (Later
    # steps may reuse that block resident, as glibc does by default with a free chunk left mid-heap: it takes a
    # fitting free chunk before its mmap threshold applies, and trims only the heap's top.)
    assert released[0] > 10_000, released


def test_training_flushes_denormals_on_every_thread_and_restores_the_mode():
    """Inside a CPU training run every thread of torch's pool flushes denormals to zero (Adam's decaying
    averages would otherwise slow the notebook's late epochs 2.3x); before and after, the caller's mode."""
    code = """
import json, torch
from mnistlab.training.device import cpu_training_mode
torch.set_num_threads(2)
x = torch.full((4_000_000,), 1e-39)  # large enough to be split over the pool's threads
kept = lambda: int(((x * 1.0) != 0).sum())
before = kept()
with cpu_training_mode(torch.device("cpu")):
    during = kept()
print(json.dumps([before, during, kept()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [4_000_000, 0, 4_000_000]


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_a_training_mode_inside_a_run_leaves_the_runs_setting_alone():
    """The floor is measured between epochs under its own cpu_training_mode: leaving it must not give the
    allocator its defaults back mid-run (every later step would fault its large blocks in afresh, the step
    slower from then on) nor turn flushing off; the outermost block restores both."""
    code = FAULTS_PER_STEP + """
from mnistlab.training.device import cpu_training_mode, flushes_denormals

cpu = torch.device("cpu")
with cpu_training_mode(cpu):
    faults_per_step(20)
    with cpu_training_mode(cpu):
        pass
    inside = faults_per_step(), flushes_denormals()
after = faults_per_step(), flushes_denormals()
print(json.dumps([inside, after]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    (inside, flushing), (after, flushing_after) = json.loads(out)
    assert max(inside) < 50 and flushing, inside
    assert after[0] > 10_000 and not flushing_after, after
