"""bf16 copies of the large dense weights, for training under CPU bf16 autocast.

Autocast casts every fp32 weight to a new bf16 tensor in each forward, and autograd casts each bf16 weight
gradient back to fp32 in backward: for the notebook network's 21,632 x 128 layer an 11 MB read and a 5.5 MB
allocation and write each way, every step. `Bf16Weights` keeps one bf16 copy of each large dense weight
instead, which the forward reads directly; the copy's bf16 gradient becomes the fp32 master's `.grad` the
moment backward has produced it (a post-accumulate-grad hook, while it is in cache, freeing it at once), and
the optimizer's step refreshes the copy in place from the master it has just written (a step post-hook).
The arithmetic is autocast's exactly (the same round-to-nearest casts of the same values, the same
products), and the fp32 master weights, the optimizer, its state and the saved model are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

MIN_NUMEL = 1 << 20  # weights from 4 MB (fp32) up: below that autocast's cast costs less than the hooks


class Bf16Weights(nn.Module):
    """`model` (as `.module`, like DDP), its dense weights of at least `min_numel` elements read from bf16
    copies in training forward passes under CPU bf16 autocast; any other call is `model`'s own forward."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, min_numel: int = MIN_NUMEL
                 ) -> None:
        super().__init__()
        self.module = model
        self.masters = {f"{name}.weight": m.weight for name, m in model.named_modules()
                        if isinstance(m, nn.Linear) and m.weight.numel() >= min_numel}
        # Plain tensors, not buffers: not part of any state_dict, nothing to save or load.
        self.copies = {name: w.detach().to(torch.bfloat16).requires_grad_()
                       for name, w in self.masters.items()}
        self._hooks = [c.register_post_accumulate_grad_hook(lambda c, w=w: _to_master(c, w))
                       for c, w in zip(self.copies.values(), self.masters.values(), strict=True)]
        self._hooks.append(optimizer.register_step_post_hook(lambda *_: self.refresh()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu") \
                and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            return functional_call(self.module, self.copies, (x,))
        return self.module(x)

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the fp32 masters into the bf16 copies (after every optimizer step)."""
        for name, w in self.masters.items():
            self.copies[name].copy_(w)

    def remove(self) -> None:
        """Detach the hooks: the optimizer no longer refreshes the copies."""
        for h in self._hooks:
            h.remove()


def _to_master(copy: torch.Tensor, master: torch.Tensor) -> None:
    grad = copy.grad.float()
    master.grad = grad if master.grad is None else master.grad.add_(grad)
    copy.grad = None


def bf16_weights(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp: torch.dtype | None, min_numel: int = MIN_NUMEL) -> nn.Module:
    """`Bf16Weights(model, ...)` where it applies (CPU, bf16 autocast, a plain module with a dense weight of
    at least `min_numel` elements), else `model` itself."""
    plain = not isinstance(model, nn.parallel.DistributedDataParallel) and not hasattr(model, "_orig_mod")
    large = any(isinstance(m, nn.Linear) and m.weight.numel() >= min_numel for m in model.modules())
    if device.type == "cpu" and amp == torch.bfloat16 and plain and large:
        return Bf16Weights(model, optimizer, min_numel)
    return model
