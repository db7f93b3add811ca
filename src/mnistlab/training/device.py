"""Where and in what precision training runs: the device, the autocast dtype, and on the CPU the
floating-point mode: flush-to-zero on every thread of a process from its start (`flush_denormals_everywhere`,
through `process.prepare_cpu_process` in the `mnistlab` command) and on the calling thread for a training run
(`cpu_training_mode`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from mnistlab.errors import ConfigError

# ---------------------------------------------------------------- the CPU's floating-point mode
_pool_flushes = False  # flush_denormals_everywhere reached every thread of torch's CPU pool


def flush_denormals_everywhere() -> bool:
    """Set flush-to-zero for this process's CPU training from now on; True when it holds on every thread.

    Late in training, Adam's running averages of rarely-updated weights decay into the denormal range, where
    x86 arithmetic is many times slower (the notebook preset's epochs 2-5 ran 2.3x slower without it on an
    Intel Xeon). The mode is per thread and `torch.set_flush_denormal` sets only the caller's, but a new
    thread inherits its creator's: set before torch starts its CPU thread pool (its first parallel kernel),
    it holds on every thread of the pool. Afterwards only on this one, which this function then reports.
    """
    global _pool_flushes
    torch.set_flush_denormal(True)
    # Checked, not assumed: a product split over the pool, of denormals by one, comes out all zero only if
    # every thread flushes.
    _pool_flushes = not bool((torch.full((1 << 20,), 1e-39) * 1.0).any())
    return _pool_flushes


def flushes_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (a denormal times one comes out as zero)."""
    return bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)


def cpu_settings(device: torch.device) -> dict[str, str | None]:
    """The CPU settings a run on `device` trains with, as env.json records them (nothing off the CPU):
    `flush_denormal`, "every thread" after `flush_denormals_everywhere` reached them all, else "calling
    thread" (`cpu_training_mode` sets only the caller's; the pool's threads keep the mode they started with);
    `glibc_tunables`, the allocator setting this process started with (null: glibc's defaults)."""
    if device.type != "cpu":
        return {}
    return {"flush_denormal": "every thread" if _pool_flushes else "calling thread",
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


_in_training_mode = False  # a cpu_training_mode block is open in this process


@contextmanager
def cpu_training_mode(device: torch.device) -> Iterator[None]:
    """On the CPU, flush-to-zero on the calling thread (which runs the step's serial part and its share of
    every parallel kernel) for the block, restored when the outermost such block exits: nothing changes in the
    caller's process outside a training run, a saved model is scored in the mode it was scored in during
    training, and a block inside one (the floor measured between epochs) leaves the run's mode be. The pool's
    threads and the allocator are set for the whole process, at its start (`process.prepare_cpu_process`)."""
    global _in_training_mode
    if device.type != "cpu" or _in_training_mode:
        yield
        return
    was_flushing = flushes_denormals()
    torch.set_flush_denormal(True)
    _in_training_mode = True
    try:
        yield
    finally:
        _in_training_mode = False
        torch.set_flush_denormal(was_flushing)


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
