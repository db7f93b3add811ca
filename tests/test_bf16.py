"""training.bf16: bf16 weight copies and the fused update train as plain autocast + fused Adam does, bit for
bit; optimizer state moves between the two paths; where it cannot apply, training runs plain autocast."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.bench.floor import step_kernels
from mnistlab.training import bf16
from mnistlab.training.bf16 import Bf16Copies, bf16_copies, copies_apply
from mnistlab.training.device import cpu_training_mode
from mnistlab.training.run import train

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    """torch's fused Adam takes its vector path on whole 16-element blocks of each thread's share; at two
    threads every tensor of `net()` is such blocks, which makes the two paths' arithmetic comparable bit for
    bit whatever the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def net() -> nn.Module:
    """Every parameter a multiple of 32 elements (288, 32, 346,112, 64, 2,048, 32)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 13 * 13, 64),
                         nn.ReLU(), nn.Linear(64, 32))


def batches(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def steps(model: nn.Module, trained: nn.Module, opt: torch.optim.Optimizer, count: int) -> None:
    """`count` steps as the engine takes them (bf16 autocast forward, fp32 loss, backward, step)."""
    data = batches()
    with cpu_training_mode(CPU):
        for i in range(count):
            x, y = data[i % len(data)]
            with torch.autocast("cpu", torch.bfloat16):
                logits = trained(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
    "adam, weight decay": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=0.01, fused=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=0.05, fused=True),
    "adam, beta1 0.3": lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.3, 0.99), fused=True),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_copies_train_as_plain_autocast_with_fused_adam_bit_for_bit(two_threads, name):
    weights, states = [], []
    for copies in (False, True):
        model = net()
        opt = OPTIMIZERS[name](model.parameters())
        trained = Bf16Copies(model, opt) if copies else model
        steps(model, trained, opt, 12)
        weights.append([p.detach().clone() for p in model.parameters()])
        states.append(opt.state_dict())
        if copies:  # the copies hold the masters rounded to bf16, as autocast's cast of them would be
            assert all(torch.equal(c, p.to(torch.bfloat16)) for c, p in zip(trained.copies.values(),
                                                                             model.parameters(), strict=True))
            assert all(p.grad is None and c.grad is None for p, c in zip(model.parameters(),
                                                                          trained.copies.values(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    plain, fused = states
    assert plain["state"].keys() == fused["state"].keys() and plain["param_groups"] == fused["param_groups"]
    for i, s in plain["state"].items():
        assert s.keys() == fused["state"][i].keys()
        assert all(torch.equal(v, fused["state"][i][k]) and v.dtype == fused["state"][i][k].dtype
                   for k, v in s.items())


def test_optimizer_state_moves_between_the_two_paths(two_threads):
    """6 steps from copies, then 6 plain from its saved state == 12 plain (and the reverse)."""
    reference = net()
    opt = OPTIMIZERS["adam"](reference.parameters())
    steps(reference, reference, opt, 12)
    for first_copies in (True, False):
        model = net()
        opt = OPTIMIZERS["adam"](model.parameters())
        steps(model, Bf16Copies(model, opt) if first_copies else model, opt, 6)
        saved_model, saved_opt = model.state_dict(), opt.state_dict()
        resumed = net()
        resumed.load_state_dict(saved_model)
        opt2 = OPTIMIZERS["adam"](resumed.parameters())
        opt2.load_state_dict(saved_opt)
        data = batches()
        # The second half sees batches 6..11, as the reference did.
        with cpu_training_mode(CPU):
            trained = resumed if first_copies else Bf16Copies(resumed, opt2)
            for i in range(6, 12):
                x, y = data[i % len(data)]
                with torch.autocast("cpu", torch.bfloat16):
                    loss = F.cross_entropy(trained(x).float(), y)
                opt2.zero_grad(set_to_none=True)
                loss.backward()
                opt2.step()
        assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters(), strict=True))


def test_outside_a_bf16_training_forward_the_model_runs_on_its_fp32_masters():
    model = net()
    opt = OPTIMIZERS["adam"](model.parameters())
    trained = Bf16Copies(model, opt)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(trained(x), model(x)) and trained(x).dtype == torch.float32
    with torch.autocast("cpu", torch.bfloat16):
        out = trained(x)
    assert out.dtype == torch.bfloat16
    # The copies stood in for that call only: the module's parameters are the masters again, and the graph
    # leads to the copies.
    assert all(p.dtype == torch.float32 and isinstance(p, nn.Parameter) for p in model.parameters())
    out.float().sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(c.grad is not None and c.grad.dtype == torch.bfloat16 for c in trained.copies.values())


def test_a_forward_that_raises_leaves_the_masters_in_place():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            self.fc(x)
            raise ValueError("boom")

    model = Boom()
    trained = Bf16Copies(model, torch.optim.Adam(model.parameters()))
    with torch.autocast("cpu", torch.bfloat16), pytest.raises(ValueError):
        trained(torch.rand(2, 4))
    assert model.fc.weight.dtype == torch.float32 and isinstance(model.fc.weight, nn.Parameter)


def test_a_tied_weight_gets_one_copy_and_one_update():
    torch.manual_seed(0)
    first, second, tied = nn.Linear(784, 32), nn.Linear(32, 32), nn.Linear(32, 32)
    tied.weight = second.weight
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second, nn.ReLU(), tied)
    opt = torch.optim.Adam(model.parameters(), fused=True)
    trained = Bf16Copies(model, opt)
    assert len(trained.copies) == len(list(model.parameters())) == 5
    steps(model, trained, opt, 3)
    assert tied.weight is second.weight and float(opt.state[second.weight]["step"]) == 3.0


@pytest.mark.parametrize("case", ["sgd", "amsgrad", "fp32", "fp16", "not every parameter", "another model's",
                                  "fp64 parameter", "not on the cpu"])
def test_where_the_copies_do_not_apply_training_is_plain_autocast(case):
    model = net()
    params = list(model.parameters())
    amp = {"fp32": None, "fp16": torch.float16}.get(case, torch.bfloat16)
    device = torch.device("meta" if case == "not on the cpu" else "cpu")
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=0.1),
           "amsgrad": lambda: torch.optim.Adam(params, amsgrad=True),
           "not every parameter": lambda: torch.optim.Adam(params[:-1]),
           "another model's": lambda: torch.optim.Adam(net().parameters())}.get(
               case, lambda: torch.optim.Adam(params))()
    if case == "fp64 parameter":
        model[-1].double()
    assert not copies_apply(model, opt, device, amp)
    assert bf16_copies(model, opt, device, amp) is model
    model = net()
    assert isinstance(bf16_copies(model, torch.optim.Adam(model.parameters()), CPU, torch.bfloat16), Bf16Copies)


def test_the_kernel_is_built_once_per_machine_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bf16.kernel.cache_clear()
    try:
        first = bf16.kernel()
        assert first is not None and bf16.kernel_problem() is None
        built = sorted((tmp_path / "mnistlab" / "kernels").iterdir())
        assert [p.suffix for p in built] == [".so"]  # no temporary file left behind
        mtime = built[0].stat().st_mtime_ns
        bf16.kernel.cache_clear()
        assert bf16.kernel() is not None and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt
    finally:
        bf16.kernel.cache_clear()


@pytest.mark.parametrize("cc, says", [("no-such-compiler-here", "no C compiler (no-such-compiler-here) on PATH"),
                                      ("false", "false could not build adam_bf16.c")])
def test_without_a_working_compiler_training_is_plain_autocast_and_says_so(
        tmp_path, monkeypatch, mnist_dir, capsys, cc, says):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", cc)
    bf16.kernel.cache_clear()
    try:
        assert bf16.kernel() is None and bf16.kernel_problem().startswith(says)
        r = train("notebook", epochs=1, subset=256, test_subset=256, amp="bf16", device="cpu",
                  data_dir=mnist_dir, out=tmp_path / "run")
        assert "precision: training in bf16 autocast, evaluation in fp32" in capsys.readouterr().out
        assert json.loads((r.run_dir / "env.json").read_text())["bf16_copies"] is False
        assert not list((tmp_path / "mnistlab" / "kernels").glob("*.so"))
    finally:
        bf16.kernel.cache_clear()


def test_train_uses_the_copies_under_bf16_on_the_cpu_and_records_it(tmp_path, mnist_dir, capsys):
    r = train("notebook", epochs=1, subset=512, test_subset=256, amp="bf16", device="cpu", data_dir=mnist_dir,
              out=tmp_path / "run")
    assert "precision: training in bf16 autocast from bf16 weight copies, evaluation in fp32" in \
        capsys.readouterr().out
    env = json.loads((r.run_dir / "env.json").read_text())
    assert env["bf16_copies"] is True and env["amp_dtype"] == "bf16"
    assert all(p.dtype == torch.float32 for p in r.model.parameters())  # the saved model: the fp32 masters
    off = train("notebook", epochs=1, subset=512, test_subset=256, amp="off", device="cpu", data_dir=mnist_dir,
                out=tmp_path / "fp32")
    assert json.loads((off.run_dir / "env.json").read_text())["bf16_copies"] is False


def test_the_floor_of_a_step_from_copies_counts_the_fused_update_and_no_conversion():
    torch.manual_seed(0)
    model = net()
    k = step_kernels(model, lambda p: torch.optim.Adam(p, fused=True), torch.rand(4, 1, 28, 28), torch.bfloat16,
                     copies=True)
    assert "weights to bf16" not in k and "gradients to fp32" not in k and list(k)[-1] == "optimizer"
    assert k["optimizer"].shapes == "Adam fused with the bf16 copies, 348,576 parameters"
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        k["optimizer"].run()  # runs again and again: the gradients are set afresh before each call
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # on a copy
