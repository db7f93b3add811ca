"""bf16 training on the CPU from bf16 copies of the weights, kept current by one fused Adam pass.

Under plain bf16 autocast every forward casts each fp32 weight to bf16, and every backward casts each bf16
weight gradient back to fp32 for the optimizer: for the notebook network's 21,632 x 128 layer two extra passes
over its weights a step besides Adam's own, and two autograd nodes per parameter. `Bf16Copies` gives each
fp32 parameter a bf16 copy that the training forward reads instead (autocast finds nothing to cast), so the
gradients come out bf16 and stay so. Then, in the optimizer's step, one fused pass (`adam_bf16.c`, compiled
at first use) reads each bf16 gradient, updates the fp32 master weight and Adam's two moments with the
arithmetic of torch's fused Adam, and writes the new bf16 copy.

The fp32 masters stay the model's parameters and Adam's state stays Adam's: the optimizer's state_dict,
checkpoints (resumable either way), the saved model and fp32 evaluation are those of plain autocast, and
the weights come out as plain autocast + fused Adam makes them (bit for bit where torch's kernel takes its
vector path: every tensor of 16 x threads elements or a multiple of it).

It applies (`copies_apply`) to a plain module (no DDP, no torch.compile) on the CPU under bf16 autocast,
trained by torch.optim.Adam or AdamW without amsgrad, maximize, capturable or differentiable, over all its
fp32 parameters, where a C compiler ($CC, else cc) built the kernel; anywhere else training runs plain
autocast.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
from pathlib import Path

import torch
from torch import nn

from mnistlab.files import native
from mnistlab.training.device import openmp_runtime

SOURCE = Path(__file__).with_name("adam_bf16.c")
# -march=native: the library is built for (and cached per) the CPU it runs on.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno"]


class _Tensor(ctypes.Structure):
    """One tensor's pointers for the kernel (`Tensor` in adam_bf16.c)."""

    _fields_ = [("param", ctypes.c_void_p), ("exp_avg", ctypes.c_void_p), ("exp_avg_sq", ctypes.c_void_p),
                ("step", ctypes.c_void_p), ("grad", ctypes.c_void_p), ("copy", ctypes.c_void_p),
                ("numel", ctypes.c_int64)]


class _Step(ctypes.Structure):
    """One update of one parameter group (`Step` in adam_bf16.c)."""

    _fields_ = [("tensors", ctypes.POINTER(_Tensor)), ("count", ctypes.c_int), ("parts", ctypes.c_int),
                ("decoupled", ctypes.c_int), ("lr", ctypes.c_double), ("beta1", ctypes.c_double),
                ("beta2", ctypes.c_double), ("eps", ctypes.c_double), ("weight_decay", ctypes.c_double),
                ("thread_num", ctypes.c_void_p), ("num_threads", ctypes.c_void_p)]


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled fused update, built once per machine and cached (written under a temporary name and
    renamed into place); None where there is no C compiler or it fails (`kernel_problem` says why)."""
    try:
        return _load()
    except (OSError, subprocess.SubprocessError) as e:
        _problems.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


_problems: list[str] = []


def kernel_problem() -> str | None:
    """Why `kernel()` is None (None when it built, or before it was asked for)."""
    return _problems[-1] if _problems else None


def _load() -> ctypes.CDLL:
    dll = native.build(SOURCE, FLAGS, ["-lm"])
    dll.mnistlab_adam_bf16_begin.argtypes = [ctypes.POINTER(_Step)]
    dll.mnistlab_adam_bf16_work.argtypes = [ctypes.c_void_p]
    for f in (dll.mnistlab_adam_bf16_begin, dll.mnistlab_adam_bf16_work):
        f.restype = None
    return dll


def _supported(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer) in (torch.optim.Adam, torch.optim.AdamW) and not any(
        g.get(k) for g in optimizer.param_groups for k in ("amsgrad", "maximize", "capturable", "differentiable"))


def _decoupled(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """AdamW's weight decay (torch >= 2.6 also lets Adam's groups ask for it)."""
    return isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))


def _dense(p: torch.Tensor) -> bool:
    return p.is_contiguous() or (p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last))


def copies_apply(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp: torch.dtype | None) -> bool:
    """Whether `Bf16Copies(model, optimizer)` can train this (see the module's docstring); builds the kernel
    the first time it gets that far."""
    plain = not isinstance(model, nn.parallel.DistributedDataParallel) and not hasattr(model, "_orig_mod")
    params = list(model.parameters())
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return (device.type == "cpu" and amp == torch.bfloat16 and plain and bool(params)
            and all(p.dtype == torch.float32 and _dense(p) and id(p) in optimized for p in params)
            and _supported(optimizer) and kernel() is not None)


class Bf16Copies(nn.Module):
    """`model` (as `.module`, like DDP) whose training forward passes under bf16 autocast read bf16 copies
    of its parameters; `optimizer`'s step updates the fp32 masters from the copies' gradients and refreshes
    the copies, in one fused pass. Any other call is `model`'s own forward, on the fp32 masters."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.module = model
        self.optimizer = optimizer
        self._kernel = kernel()
        if self._kernel is None:
            raise RuntimeError(f"the fused bf16 update is not available: {kernel_problem()}")
        # The update runs on torch's own OpenMP pool (another set of threads would compete with its workers,
        # which spin a while after each of torch's kernels), else on the calling thread alone.
        self._pool = openmp_runtime()
        self._team: tuple[int | None, int | None] = (None, None)  # omp_get_thread_num, omp_get_num_threads
        if self._pool is not None:
            self._pool.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            self._pool.GOMP_parallel.restype = None
            self._team = tuple(ctypes.cast(getattr(self._pool, f), ctypes.c_void_p).value
                               for f in ("omp_get_thread_num", "omp_get_num_threads"))
        self._work = ctypes.cast(self._kernel.mnistlab_adam_bf16_work, ctypes.c_void_p)
        # One bf16 copy per fp32 master (a tied weight has one), kept in plain containers, not as submodules
        # or buffers: nothing here is part of a state_dict.
        self.copies = {id(p): p.detach().to(torch.bfloat16).requires_grad_() for p in model.parameters()}
        self.masters = list(model.parameters())
        # Where each copy stands in during a training forward: (owning module, attribute name, master, copy).
        self._slots = [(m, name, p, self.copies[id(p)])
                       for m in model.modules() for name, p in m.named_parameters(recurse=False)]
        self._group = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self._hook = optimizer.register_step_pre_hook(lambda *_: self.step())

    def forward(self, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return self.module(*args, **kwargs)
        for m, name, _, copy in self._slots:  # the copies stand in for the masters for this call
            m._parameters[name] = copy
        try:
            return self.module(*args, **kwargs)
        finally:
            for m, name, master, _ in self._slots:
                m._parameters[name] = master

    @torch.no_grad()
    def step(self) -> None:
        """The fused update for every copy that has a gradient, group by group (the optimizer's step then
        finds no master gradient left to apply)."""
        by_group: dict[int, tuple[dict, list[_Tensor], list[torch.Tensor]]] = {}
        for master in self.masters:
            copy = self.copies[id(master)]
            if copy.grad is None:
                continue
            group = self._group[id(master)]
            state = self.optimizer.state[master]
            if not state:  # Adam's own layout (fused: a float32 step tensor), so its state_dict is unchanged
                state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(master),
                             exp_avg_sq=torch.zeros_like(master))
            elif state["step"].dtype != torch.float32:  # loaded from a non-fused Adam under float64 defaults
                state["step"] = state["step"].to(torch.float32)
            grad = copy.grad if copy.grad.stride() == copy.stride() else torch.empty_like(copy).copy_(copy.grad)
            _, structs, keep = by_group.setdefault(id(group), (group, [], []))
            structs.append(_Tensor(master.data_ptr(), state["exp_avg"].data_ptr(), state["exp_avg_sq"].data_ptr(),
                                   state["step"].data_ptr(), grad.data_ptr(), copy.data_ptr(), master.numel()))
            keep.append(grad)
            copy.grad = None
        threads = torch.get_num_threads() if self._pool is not None else 1
        for group, structs, _keep in by_group.values():
            beta1, beta2 = group["betas"]
            step = _Step((_Tensor * len(structs))(*structs), len(structs), threads,
                         _decoupled(self.optimizer, group), float(group["lr"]), beta1, beta2, group["eps"],
                         group["weight_decay"], *self._team)
            self._kernel.mnistlab_adam_bf16_begin(ctypes.byref(step))
            if self._pool is None:
                self._kernel.mnistlab_adam_bf16_work(ctypes.byref(step))
            else:
                self._pool.GOMP_parallel(self._work, ctypes.addressof(step), threads, 0)


def bf16_copies(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                amp: torch.dtype | None) -> nn.Module:
    """`Bf16Copies(model, optimizer)` where it applies (`copies_apply`), else `model` itself."""
    return Bf16Copies(model, optimizer) if copies_apply(model, optimizer, device, amp) else model
