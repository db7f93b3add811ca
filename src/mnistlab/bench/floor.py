"""The floor of a training step: the isolated time of each kernel one step of a model needs.

For every convolution and dense layer, the products autograd runs for it (forward; the weight gradient; the
input gradient where the layer's input needs one), each at the step's shapes and in the step's precision
(operands already cast, so no conversion is timed); then the optimizer's update over all parameters. Each
kernel is timed alone, call by call, after a warm-up, the kernels taking turns so that load drift hits all of
them alike; a kernel's time is the median of its calls. Their sum is what the step cannot go below with these
kernels; the step's time over it is how much of the step is something else (activations, the loss, Python,
and the cache misses that a kernel repeated alone does not have).

Under autocast the weights stay fp32 masters, and the floor counts what that costs. Under plain autocast,
two conversions per step, as kernels of their own: each layer's weight and bias cast to the autocast dtype
for its products, and each of their gradients cast back to fp32 for the optimizer (no PyTorch CPU product
writes fp32 from bf16 operands, and the fp32-output alternative, oneDNN's bf16 products on fp32 tensors, is
slower than the product plus the cast on a CPU with native bf16).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.training.device import autocast, cpu_training_mode

MakeOptimizer = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]  # parameters -> the step's optimizer


@dataclass
class Kernel:
    """One kernel of the step: what it computes at which shapes, and a call that runs it."""

    shapes: str
    run: Callable[[], object]


@dataclass
class LayerInput:
    value: torch.Tensor
    needs_grad: bool  # autograd computes a gradient for it (False for the batch itself)


def layer_inputs(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> dict[str, LayerInput]:
    """The input each Conv2d and Linear of `model` gets in a training forward pass of `x` (under autocast
    when `amp` is set), by module name, in the order the layers run."""
    seen: dict[str, LayerInput] = {}

    def record(name: str, args: tuple) -> None:
        seen.setdefault(name, LayerInput(args[0].detach(), args[0].requires_grad))

    hooks = [m.register_forward_pre_hook(lambda _, args, name=name: record(name, args))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with autocast(x.device, amp):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _operands(m: nn.Module, x: torch.Tensor, amp: torch.dtype | None):
    """(input, weight, bias) in the dtype the layer's products run in (autocast's, else the weight's)."""
    dtype = amp or m.weight.dtype
    b = m.bias.detach().to(dtype) if m.bias is not None else None
    return x.to(dtype), m.weight.detach().to(dtype), b


def linear_kernels(name: str, m: nn.Linear, inp: LayerInput, amp: torch.dtype | None) -> dict[str, Kernel]:
    """A dense layer's products: forward x W^T (+ b), grad-weight g^T x and, if needed, grad-input g W."""
    x, w, b = _operands(m, inp.value.reshape(-1, inp.value.shape[-1]), amp)
    g = torch.randn(x.shape[0], w.shape[0], device=x.device).to(x.dtype)
    (n, k), o = x.shape, w.shape[0]
    out = {f"{name} forward": Kernel(f"{n}x{k} @ {k}x{o}", lambda: F.linear(x, w, b)),
           f"{name} grad-weight": Kernel(f"{o}x{n} @ {n}x{k}", lambda: g.t().mm(x))}
    if inp.needs_grad:
        out[f"{name} grad-input"] = Kernel(f"{n}x{o} @ {o}x{k}", lambda: g.mm(w))
    return out


def conv_kernels(name: str, m: nn.Conv2d, inp: LayerInput, amp: torch.dtype | None) -> dict[str, Kernel]:
    """A convolution's forward, and its backward as autograd runs it (weight and bias gradients, and the
    input's if needed), replayed on one retained graph."""
    if m.padding_mode != "zeros":
        raise ValueError(f"{name}: the floor times zero-padded convolutions only, not {m.padding_mode!r}")
    x, w, b = _operands(m, inp.value, amp)
    conv = (m.stride, m.padding, m.dilation, m.groups)
    leaves = ([x] if inp.needs_grad else []) + [w] + ([b] if b is not None else [])
    for t in leaves:
        t.requires_grad_()
    y = F.conv2d(x, w, b, *conv)
    g = torch.randn_like(y)
    shapes = f"{'x'.join(map(str, x.shape))} -> {'x'.join(map(str, y.shape))}"
    xd, wd, bd = (None if t is None else t.detach() for t in (x, w, b))  # the forward alone records no graph
    return {f"{name} forward": Kernel(shapes, lambda: F.conv2d(xd, wd, bd, *conv)),
            f"{name} backward": Kernel(shapes, lambda: torch.autograd.grad(y, leaves, g, retain_graph=True))}


def optimizer_kernel(model: nn.Module, make_optimizer: MakeOptimizer) -> Kernel:
    """`optimizer.step()` over a copy of the model's parameters, gradients in place."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = make_optimizer(params)
    fused = " fused" if opt.defaults.get("fused") else ""
    n = sum(p.numel() for p in params)
    return Kernel(f"{type(opt).__name__}{fused}, {n:,} parameters", opt.step)


def time_kernels(kernels: dict[str, Kernel], device: torch.device, *, reps: int, warmup: int,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median milliseconds of one call of each kernel: `warmup` untimed calls each, then `reps` timed ones,
    the kernels taking turns. `clock` is wall time; `time.thread_time` with one thread counts only this
    process's CPU time (a steadier figure on a shared machine)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for k in kernels.values():
        for _ in range(warmup):
            k.run()
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(reps):
        for name, k in kernels.items():
            sync()
            t0 = clock()
            k.run()
            sync()
            times[name].append(clock() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def master_kernels(layers: Iterable[nn.Module], amp: torch.dtype) -> dict[str, Kernel]:
    """What fp32 master weights add to a step under autocast to `amp`: the layers' fp32 weights and biases
    cast to `amp` for the products, and their `amp` gradients cast back to fp32 for the optimizer."""
    masters = [p.detach() for m in layers for p in m.parameters(recurse=False) if p.dtype == torch.float32]
    grads = [torch.randn_like(p).to(amp) for p in masters]
    n = f"{sum(p.numel() for p in masters):,} parameters"
    name = str(amp).removeprefix("torch.").replace("bfloat16", "bf16").replace("float16", "fp16")
    return {f"weights to {name}": Kernel(n, lambda: [p.to(amp) for p in masters]),
            "gradients to fp32": Kernel(n, lambda: [g.float() for g in grads])}


def step_kernels(model: nn.Module, make_optimizer: MakeOptimizer, x: torch.Tensor,
                 amp: torch.dtype | None) -> dict[str, Kernel]:
    """The kernels of one training step of (a copy of) `model` on the batch `x`: each layer's products, the
    master-weight conversions under autocast, and "optimizer" last."""
    model = copy.deepcopy(model).train()
    kernels: dict[str, Kernel] = {}
    modules = dict(model.named_modules())
    inputs = layer_inputs(model, x, amp)
    for name, inp in inputs.items():
        m = modules[name]
        kernels.update((linear_kernels if isinstance(m, nn.Linear) else conv_kernels)(name, m, inp, amp))
    if amp is not None:
        kernels.update(master_kernels((modules[name] for name in inputs), amp))
    kernels["optimizer"] = optimizer_kernel(model, make_optimizer)
    return kernels


def step_floor(model: nn.Module, make_optimizer: MakeOptimizer, x: torch.Tensor, amp: torch.dtype | None, *,
               reps: int = 100, warmup: int = 10) -> dict[str, object]:
    """The floor of a training step of `model` on the batch `x` in precision `amp` (None = the weights'):
    `kernels` (name -> median ms), `shapes` (name -> what it
    computes), `floor_ms` (their sum). `model` is left untouched: the kernels run on copies."""
    kernels = step_kernels(model, make_optimizer, x, amp)
    with cpu_training_mode(x.device):  # the floating-point mode steps run in (flush-to-zero on the CPU)
        ms = time_kernels(kernels, x.device, reps=reps, warmup=warmup)
    return {"kernels": ms, "shapes": {name: k.shapes for name, k in kernels.items()},
            "floor_ms": sum(ms.values())}
