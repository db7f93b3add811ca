"""Exercise 1, questions 1-5, answered from the objects themselves: the preset, the model and the optimizer.

The model is traced with torch.fx and run on a dummy batch, so each layer's shapes and the activation that
follows it (even a functional `F.relu` in forward()) come from the code, never from hard-coded text.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from mnistlab.models import build_model
from mnistlab.presets import Config, resolve
from mnistlab.training.optim import make_optimizer

ACTIVATIONS = {"relu", "relu_", "sigmoid", "tanh", "softmax", "log_softmax", "gelu", "silu", "elu",
               "leaky_relu", "hardswish"}

# What each optimizer hyper-parameter means, in one line.
PARAM_MEANINGS = {
    "lr": "learning rate: the step size of every update",
    "betas": "decay rates of the running averages of the gradient (beta1) and of its square (beta2)",
    "eps": "added to the denominator for numerical stability",
    "weight_decay": "L2 penalty on the weights (0 = none)",
    "amsgrad": "use the maximum of past squared-gradient averages (AMSGrad variant)",
    "momentum": "fraction of the previous update added to the current one",
    "dampening": "damping of the momentum term",
    "nesterov": "use Nesterov momentum (look-ahead gradient)",
    "rho": "decay rate of the running averages (Adadelta/RMSprop)",
    "alpha": "smoothing constant of the squared-gradient average",
    "centered": "normalise by the gradient's estimated variance",
    "foreach": "use the multi-tensor (foreach) implementation",
    "fused": "use the fused single-kernel implementation",
    "maximize": "maximise the objective instead of minimising it",
    "capturable": "safe to capture in a CUDA graph",
    "differentiable": "allow autograd through the optimizer step",
    "lr_decay": "learning-rate decay (Adagrad)",
    "initial_accumulator_value": "starting value of the squared-gradient sums (Adagrad)",
    "decoupled_weight_decay": "apply weight decay directly to the weights (AdamW style)",
}


def _shape(node: torch.fx.Node) -> list[int] | None:
    meta = node.meta.get("tensor_meta")
    return list(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _activation_of(node: torch.fx.Node) -> str | None:
    """The activation applied directly to `node`'s output, if its only user is one."""
    users = list(node.users)
    if len(users) != 1:
        return None
    user = users[0]
    if user.op in ("call_function", "call_method"):
        name = getattr(user.target, "__name__", str(user.target))
        return name.rstrip("_") if name in ACTIVATIONS else None
    if user.op == "call_module":
        mod = user.graph.owning_module.get_submodule(user.target)
        name = type(mod).__name__.lower()
        return name if name in ACTIVATIONS else None
    return None


def layer_table(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[dict[str, Any]]:
    """One row per layer module in execution order: shapes, units, activation, conv/pool geometry, params."""
    gm = torch.fx.symbolic_trace(model)
    ShapeProp(gm).propagate(torch.zeros(input_shape))
    rows = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        kind = type(mod).__name__
        if kind.lower() in ACTIVATIONS:
            continue  # reported as the activation of the layer before it
        arg = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        out_shape = _shape(node)
        units = getattr(mod, "out_channels", None) or getattr(mod, "out_features", None)
        if units is None and getattr(mod, "num_features", None):
            units = mod.num_features
        if units is None and out_shape is not None:
            units = out_shape[1]
        geometry = {}
        for key in ("kernel_size", "stride", "padding"):
            value = getattr(mod, key, None)
            geometry[key] = list(value) if isinstance(value, tuple) else value
        rows.append({
            "name": str(node.target),
            "type": kind,
            "input_shape": _shape(arg)[1:] if arg is not None and _shape(arg) else None,
            "output_shape": out_shape[1:] if out_shape else None,
            "units": units,
            "activation": _activation_of(node),
            **geometry,
            "params": sum(p.numel() for p in mod.parameters()),
        })
    return rows


def flops_per_image(model: nn.Module) -> int:
    """Forward FLOPs of one 1x28x28 image, counted by torch.utils.flop_counter."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    return int(counter.get_total_flops())


def describe_optimizer(cfg: Config, model: nn.Module) -> dict[str, Any]:
    """The optimizer the preset builds, with every hyper-parameter of its param group and what it means."""
    opt = make_optimizer(cfg, model.parameters(), torch.device("cpu"))
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
    return {
        "name": type(opt).__name__,
        "params": params,
        "meanings": {k: PARAM_MEANINGS.get(k, "") for k in params},
    }


def inspect(preset: str = "notebook", config: Config | None = None, **overrides: Any) -> dict[str, Any]:
    """Exercise 1, questions 1-5, for a preset: batch size, epochs, model, layers, FLOPs, optimizer."""
    cfg = config or resolve(preset, **overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **cfg.model_args).eval()
    layers = layer_table(model)
    return {
        "preset": cfg.preset,
        "model": cfg.model,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "print_model": str(model),
        "layers": layers,
        "weight_layers": sum(1 for row in layers if row["params"]),
        "total_params": sum(p.numel() for p in model.parameters()),
        "flops_per_image": flops_per_image(model),
        "optimizer": describe_optimizer(cfg, model),
        "schedule": cfg.schedule,
        "normalise": cfg.normalise,
        "loss": "CrossEntropyLoss" + (" on softmax outputs (double softmax)" if cfg.double_softmax else ""),
    }


