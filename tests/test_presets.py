"""The `fast` and `best` presets: what they resolve to, their networks, one training step each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnistlab.models import build_model, count_params
from mnistlab.presets import resolve
from mnistlab.training.engine import evaluate
from mnistlab.training.run import load_data, train


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


def scored_as_evaluated(r, data_dir) -> None:
    """The run's reported test accuracy is its returned model evaluated in fp32 on the same test images."""
    test = load_data(r.config, torch.device("cpu"), data_dir).evals["test"]
    assert r.test_acc == evaluate(r.model, test)["acc"] and r.history[-1]["test_n"] == len(test.labels)


def test_fast_preset_trains_and_learns(mnist_dir):
    r = train("fast", subset=2048, test_subset=1000, device="cpu", data_dir=mnist_dir, quiet=True,
              write_run=False)
    assert r.config.model == "fast" and len(r.history) == r.config.epochs == 1
    assert r.test_acc > 50  # 8 one-cycle steps of 256 images already learn far above chance (10%)
    scored_as_evaluated(r, mnist_dir)


def test_best_preset_trains_a_step(mnist_dir):
    r = train("best", subset=128, epochs=1, test_subset=500, device="cpu", data_dir=mnist_dir, quiet=True,
              write_run=False)
    assert r.config.augment and r.config.label_smoothing == 0.1
    assert r.history[0]["train_loss"] > 0
    scored_as_evaluated(r, mnist_dir)


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
