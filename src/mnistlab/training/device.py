"""Where and in what precision training runs: the device, the autocast dtype, and on the CPU the
floating-point mode and allocator setting a training run uses (and restores afterwards)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from mnistlab.errors import ConfigError

# ---------------------------------------------------------------- the CPU's floating-point mode and allocator
GLIBC_MMAP_THRESHOLD, GLIBC_TRIM_THRESHOLD = -3, -1  # mallopt parameters (malloc.h)
GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # both parameters' documented defaults


def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another (its malloc tuning calls do not exist there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks instead of handing them back to the kernel after every step.

    By default glibc serves large blocks with mmap and trims the heap as soon as its top is free, so the
    notebook network's 11 MB weight gradient, freed by zero_grad and re-allocated by the next backward, comes
    back as hundreds of fresh zero-filled pages per step (6-13% of the step here). Blocks up to 256 MiB then
    come from the heap, which is trimmed only past 1 GiB of free top.
    """
    if (libc := _libc()) is not None:
        libc.mallopt(GLIBC_MMAP_THRESHOLD, 256 << 20)
        libc.mallopt(GLIBC_TRIM_THRESHOLD, 1 << 30)


def release_freed_memory() -> None:
    """Undo `keep_freed_memory`: glibc's default thresholds again, and the kept free memory handed back.

    glibc cannot report the previous values; setting the defaults explicitly leaves its dynamic mmap
    threshold (which grows after large frees) switched off for the rest of the process.
    """
    if (libc := _libc()) is not None:
        libc.mallopt(GLIBC_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(GLIBC_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch runs its CPU thread pool on (libgomp, or LLVM's libomp with its GOMP entry
    points), among the libraries this process has already loaded: torch's own copy first (torch/lib), then any
    other; None where there is none to find. Nothing new is loaded: the handle is to a mapped library."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return None
    torch_lib = str(Path(torch.__file__).parent / "lib")
    for path in sorted(paths, key=lambda p: (not p.startswith(torch_lib), p)):
        try:
            lib = ctypes.CDLL(path)
            lib.GOMP_parallel  # noqa: B018 - the entry point used below
            return lib
        except (OSError, AttributeError):
            continue
    return None


def set_flush_denormal_everywhere(on: bool) -> None:
    """Set flush-to-zero on this thread and on every thread of torch's CPU thread pool.

    The mode is per thread and `torch.set_flush_denormal` sets only the caller's, so the pool's threads are
    each asked to set theirs in one OpenMP parallel region of the pool's size (they run torch's kernels).
    """
    torch.set_flush_denormal(on)
    gomp = _openmp_runtime()
    if gomp is None:
        return
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on))
    gomp.GOMP_parallel(callback, None, ctypes.c_uint(torch.get_num_threads()), ctypes.c_uint(0))


def flushes_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (a denormal times one comes out as zero)."""
    return bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)


_in_training_mode = False  # a cpu_training_mode block is open in this process


@contextmanager
def cpu_training_mode(device: torch.device) -> Iterator[None]:
    """On the CPU, the floating-point mode and allocator setting training runs fastest with; both are
    restored when the outermost such block exits, so nothing changes in the caller's process outside a
    training run, and a block inside one (the floor measured between epochs) leaves the run's setting be.

    Flush-to-zero: late in training, Adam's running averages of rarely-updated weights decay into the
    denormal range, where x86 arithmetic is many times slower: without it the notebook preset's epochs 2-5
    run 2.3x slower than epoch 1. The allocator: see `keep_freed_memory`.
    """
    global _in_training_mode
    if device.type != "cpu" or _in_training_mode:
        yield
        return
    was_flushing = flushes_denormals()
    set_flush_denormal_everywhere(True)
    keep_freed_memory()
    _in_training_mode = True
    try:
        yield
    finally:
        _in_training_mode = False
        release_freed_memory()
        set_flush_denormal_everywhere(was_flushing)


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
