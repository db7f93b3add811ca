"""The training engine: the one train/evaluate loop that every command (train, compare, sweep, lab, bench,
torchrun) goes through, plus the device, precision, optimizer and schedule choices it runs with.

Speed comes from doing less per step: batches come from the on-device `DeviceLoader`, loss and accuracy are
summed on the device and read once per epoch (no `.item()` in the step loop), optimizers use their fused or
foreach kernels, and matmuls/convolutions run under bf16 autocast where the hardware supports it.

Precision: only training runs under autocast. Evaluation is always fp32, so every number that describes a
model (test/val loss and accuracy) is what its saved weights score, whatever the hardware.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mnistlab.data.loader import DeviceLoader
from mnistlab.errors import ConfigError
from mnistlab.presets import Config, optimizer_class

# Flush denormal floats to zero on the CPU. Late in training, Adam's running averages of rarely-updated
# weights decay into the denormal range, where x86 arithmetic is many times slower: without this the
# notebook preset's epochs 2-5 run 2.3x slower than epoch 1. Set at import, before torch's OpenMP pool
# starts, because its worker threads inherit the floating-point mode of the thread that creates them.
torch.set_flush_denormal(True)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks instead of handing them back to the kernel after every step.

    By default glibc serves large blocks with mmap and trims the heap as soon as its top is free, so the
    notebook network's 11 MB weight gradient, freed by zero_grad and re-allocated by the next backward, comes
    back as hundreds of fresh zero-filled pages per step (6-13% of the step here). Called by fit() on the CPU; a no-op
    where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 256 << 20)  # blocks up to 256 MiB come from the heap...
        libc.mallopt(m_trim_threshold, 1 << 30)  # ...which is trimmed only past 1 GiB of free top
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------- devices and precision
def pick_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but Apple MPS is not available")
    return dev


def cpu_supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `amp` ("auto" | "bf16" | "fp16" | "off") on `device`, or None for fp32."""
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None  # mps: fp32 is the dependable choice


AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def amp_name(dtype: torch.dtype | None) -> str | None:
    """"bf16" | "fp16" for an autocast dtype, None for fp32 (as env.json and bench.json record it)."""
    return None if dtype is None else AMP_NAMES[dtype]


def describe_precision(amp: str, dtype: torch.dtype | None, device: torch.device) -> str:
    """One line for the start of a run: what training computes in (`dtype`, from `amp` on `device`), and
    that evaluation is fp32."""
    trains = "fp32" if dtype is None else f"{amp_name(dtype)} autocast"
    where = device.type
    if device.type == "cpu":
        where += " with native bf16" if cpu_supports_bf16() else " without native bf16"
    return f"precision: training in {trains}, evaluation in fp32 (--amp {amp} on {where})"


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# ---------------------------------------------------------------- optimizer and schedule
def make_optimizer(cfg: Config, params, device: torch.device) -> torch.optim.Optimizer:
    """`cfg.optimizer` (any torch.optim class) with `cfg.opt_args`, using the fused kernel when it has one."""
    cls = optimizer_class(cfg.optimizer)
    args = dict(cfg.opt_args)
    params = list(params)
    if "fused" not in args and "foreach" not in args:
        try:
            return cls(params, **args, fused=True)
        except (TypeError, RuntimeError, ValueError):
            pass  # no fused kernel for this optimizer or device
    try:
        return cls(params, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad arguments for optimizer {cls.__name__}: {e}") from None


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """(scheduler or None, True if it steps every batch else every epoch)."""
    args = dict(cfg.schedule_args)
    if cfg.schedule is None:
        return None, False
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.pop("step_size", 1), **args), False
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        args.setdefault("max_lr", cfg.lr)
        # OneCycleLR divides by (warm-up steps - 1): keep at least 2 warm-up steps on very short runs.
        args["pct_start"] = min(max(args.get("pct_start", 0.3), 2.0 / total), 0.9)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, total_steps=total, **args), True
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, **args), True
    raise ConfigError(f"unknown schedule {cfg.schedule!r}")


# ---------------------------------------------------------------- the loop
class Callback:
    """What fit() calls around the loop; subclasses override the hooks they need (the rest do nothing)."""

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def on_step(self) -> None:
        pass

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        pass


def loss_fn(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0, double_softmax: bool = False,
            reduction: str = "sum"):
    """Cross-entropy (summed unless `reduction="mean"`); `double_softmax` reproduces the notebook (softmax,
    then CrossEntropyLoss)."""
    if double_softmax:
        logits = logits.float().softmax(dim=1)
    return F.cross_entropy(logits, y, reduction=reduction, label_smoothing=label_smoothing)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, double_softmax: bool = False) -> dict[str, float]:
    """Loss and accuracy (percent) over every sample of `loader`, summed across ranks under DDP.

    Always fp32, never under autocast, whatever precision the model trained in: the result is what the
    weights themselves score (`mnistlab evaluate` on the saved file prints the same accuracy).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=loader.device, dtype=torch.float64)  # loss, correct, count
    for x, y in loader.epoch(0):
        logits = model(x)
        sums[0] += loss_fn(logits.float(), y, double_softmax=double_softmax)
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
    loss, correct, n = _all_reduce(sums).tolist()
    model.train(was_training)
    return {"loss": loss / max(n, 1), "acc": 100.0 * correct / max(n, 1), "n": int(n)}


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DeviceLoader) -> torch.Tensor:
    """Logits, computed in fp32, for every sample of a (non-shuffled, single-rank) loader, in order, on the
    CPU."""
    was_training = model.training
    model.eval()
    out = []
    for x, _ in loader.epoch(0):
        out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out).cpu()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: DeviceLoader,
    evals: dict[str, DeviceLoader],
    *,
    epochs: int,
    start_epoch: int = 0,
    scheduler=None,
    schedule_per_step: bool = False,
    amp: torch.dtype | None = None,
    label_smoothing: float = 0.0,
    double_softmax: bool = False,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    history: list[dict[str, Any]] | None = None,
    cuda_graphs: bool = False,
    eval_model: Callable[[], nn.Module] | None = None,
) -> list[dict[str, Any]]:
    """Train epochs `start_epoch+1 .. epochs` (under autocast to `amp` when given), evaluating on each of
    `evals` in fp32 after every epoch.

    Returns the history: one dict per epoch with epoch, train_loss, train_acc, <name>_loss, <name>_acc and
    <name>_n (images evaluated, over all ranks) for each eval loader, seconds (training wall time),
    eval_seconds, images_per_s and lr. train_loss/train_acc come from the epoch's training forward passes
    (in `amp`, as the weights changed); <name>_loss/<name>_acc are the end-of-epoch weights in fp32. `cuda_graphs`: the model was compiled with mode "reduce-overhead";
    each step then tells its CUDA-graph trees that a new iteration begins (the last step's outputs are dead).
    `eval_model`, when given, is called after each epoch for the module to evaluate instead of `model` (e.g.
    a weight average that a callback updates).
    """
    history = list(history or [])
    device = train.device
    scale = float(train.world_size)  # per-rank sum * world / global batch = the global mean under DDP
    if device.type == "cpu":
        keep_freed_memory()
    model.train()
    for epoch in range(start_epoch + 1, epochs + 1):
        steps = train.shard(epoch)
        for cb in callbacks:
            cb.on_epoch_start(epoch, len(steps))
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        n = 0
        _sync(device)
        t0 = time.perf_counter()
        for idx, global_n in steps:
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            x, y = train.batch(idx)
            if augment is not None:
                x = augment(x)
            with autocast(device, amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y, label_smoothing, double_softmax, reduction="mean")
            optimizer.zero_grad(set_to_none=True)
            factor = scale * len(y) / global_n  # 1 except for uneven last batches under DDP
            (loss * factor if factor != 1.0 else loss).backward()
            optimizer.step()
            if schedule_per_step:
                scheduler.step()
            with torch.no_grad():  # metrics stay on the device: no host sync in the step loop
                loss_sum.add_(loss.detach(), alpha=len(y))
                correct.add_((logits.argmax(1) == y).sum())
            n += len(y)
            for cb in callbacks:
                cb.on_step()
        if scheduler is not None and not schedule_per_step:
            scheduler.step()
        sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(n), device=device, dtype=torch.float64)])
        loss_sum, correct, n = _all_reduce(sums).tolist()  # the epoch's one host sync
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / n,
            "train_acc": 100.0 * correct / n,
        }
        t1 = time.perf_counter()
        judged = model if eval_model is None else eval_model()
        for name, loader in evals.items():
            m = evaluate(judged, loader, double_softmax)  # fp32, whatever `amp` trained in
            row[f"{name}_loss"], row[f"{name}_acc"], row[f"{name}_n"] = m["loss"], m["acc"], m["n"]
        row.update(seconds=seconds, eval_seconds=time.perf_counter() - t1, images_per_s=n / seconds, lr=lr)
        history.append(row)
        for cb in callbacks:
            cb.on_epoch_end(row)
    return history
