"""C helpers built on the machine that runs them: compiled at first use by its C compiler ($CC, else cc) for
its CPU, cached in mnistlab's cache (`kernels/`) under a name that changes with the source, the compiler, the
flags and the CPU, and loaded with ctypes. A library is written under a temporary name and renamed into place,
so a build interrupted or run twice at once never leaves a broken one."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mnistlab.data.sources import cache_home
from mnistlab.files.runs import atomic_path

BUILD_SECONDS = 120


def kernel_dir() -> Path:
    """Where built libraries are kept: `kernels/` in mnistlab's cache (~/.cache/mnistlab unless
    $XDG_CACHE_HOME)."""
    return cache_home() / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def build(source: Path, flags: Sequence[str], libs: Sequence[str] = ()) -> ctypes.CDLL:
    """`source` compiled with `flags` and linked with `libs` into a shared library, built once and then
    loaded from the cache. Raises OSError (no compiler, or it failed: the start of its error) or
    subprocess.SubprocessError (it ran past BUILD_SECONDS)."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise OSError(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
    flags = ["-shared", "-fPIC", *flags]
    key = hashlib.sha256("\0".join([source.read_text(), cc, *flags, *libs, _cpu_flags()]).encode()).hexdigest()[:16]
    lib = kernel_dir() / f"{source.stem}-{key}.so"
    if not lib.exists():
        with atomic_path(lib) as tmp:
            done = subprocess.run([cc, *flags, "-o", str(tmp), str(source), *libs], capture_output=True, text=True,
                                  timeout=BUILD_SECONDS)
            if done.returncode != 0:
                raise OSError(f"{Path(cc).name} could not build {source.name}: {done.stderr.strip()[:300]}")
    return ctypes.CDLL(str(lib))
