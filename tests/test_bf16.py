"""training.bf16: bf16 copies of the large dense weights train exactly like autocast, and apply only where
they can (bf16 forced on the CPU: emulated where the CPU has no native bf16, so correct and only slow)."""

from __future__ import annotations

import torch

from mnistlab.files.checkpoints import read_model
from mnistlab.models import build_model, unwrap
from mnistlab.presets import resolve
from mnistlab.training.bf16 import Bf16Weights, bf16_weights
from mnistlab.training.engine import StepOptions, fit
from mnistlab.training.optim import make_optimizer
from mnistlab.training.run import build, load_data, train

CPU = torch.device("cpu")


def test_copies_train_bit_for_bit_like_autocast(mnist_dir, tmp_path):
    # Through train(): the run's wrap phase puts the copies in.
    run = train("notebook", amp="bf16", subset=192, epochs=1, device="cpu", data_dir=mnist_dir, quiet=True,
                out=tmp_path / "run")
    # Plain autocast, the same seed, data and optimizer.
    cfg = resolve("notebook", amp="bf16", subset=192, epochs=1, device="cpu")
    data = load_data(cfg, CPU, mnist_dir)
    model = build(cfg, CPU)
    opt = make_optimizer(cfg, model.parameters(), CPU)
    history = fit(model, opt, data.train, data.evals, epochs=1, step=StepOptions(amp=torch.bfloat16))
    assert history[0]["train_loss"] == run.history[0]["train_loss"]
    assert history[0]["test_acc"] == run.history[0]["test_acc"]
    trained = run.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    # The saved model is the fp32 master weights, under the model's own names.
    loaded, meta, fmt = read_model(run.run_dir / "model.safetensors")
    assert fmt == "safetensors" and meta["config"]["amp"] == "bf16" and type(loaded) is type(model)
    assert all(v.dtype == torch.float32 and torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())


def test_copies_follow_the_optimizer_and_stay_out_of_state_dicts():
    torch.manual_seed(0)
    model = build_model("notebook")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    net = bf16_weights(model, opt, CPU, torch.bfloat16)
    assert isinstance(net, Bf16Weights) and list(net.copies) == ["d1.weight"] and unwrap(net) is model
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(net(x).float(), y)
    loss.backward()
    assert model.d1.weight.grad.dtype == torch.float32 and net.copies["d1.weight"].grad is None
    opt.step()
    assert torch.equal(net.copies["d1.weight"], model.d1.weight.detach().to(torch.bfloat16))
    # Outside a training forward under autocast it is the model's own fp32 forward.
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    assert set(unwrap(net).state_dict()) == set(build_model("notebook").state_dict())
    net.remove()
    opt.step()
    assert not torch.equal(net.copies["d1.weight"], model.d1.weight.detach().to(torch.bfloat16))


def test_falls_back_to_the_plain_model_where_copies_do_not_apply():
    model = build_model("notebook")
    opt = torch.optim.Adam(model.parameters())
    assert bf16_weights(model, opt, CPU, None) is model  # fp32
    assert bf16_weights(model, opt, CPU, torch.float16) is model
    compiled = torch.compile(model)  # compiled lazily: nothing is compiled here
    assert bf16_weights(compiled, opt, CPU, torch.bfloat16) is compiled
    small = build_model("fast", c1=12, c2=24, hidden=128, flatten="hwc")  # dense weights of 77k elements
    assert bf16_weights(small, torch.optim.Adam(small.parameters()), CPU, torch.bfloat16) is small
