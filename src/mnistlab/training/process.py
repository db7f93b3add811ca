"""The settings a process that trains on the CPU takes from its start, for its whole life: glibc's allocator
keeping freed memory, and flush-to-zero on every thread (`device.flush_denormals_everywhere`).

This module imports no torch: the `mnistlab` command calls `prepare_cpu_process` first thing, and when it has
to restart the process to give glibc its setting, the restart comes before the seconds torch takes to import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# glibc reads its tunables once, when a process starts: serve blocks up to 256 MiB from the heap (not a fresh
# mmap each time) and trim the heap only past 1 GiB of free top.
KEEP_FREED_MEMORY = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not a glibc system (or no confstr at all)
        return False


def allocator_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment a process has to start with for glibc to keep freed memory, or None when `environ`
    already gives it that, already tunes glibc's malloc itself (the user's setting wins), or the C library
    is not glibc (nothing to tune)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in tunables or not _is_glibc():
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{KEEP_FREED_MEMORY}" if tunables else KEEP_FREED_MEMORY}


def without_kept_memory(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the allocator setting `allocator_environment` adds (a user's own tunables stay)."""
    env = dict(environ)
    ours = KEEP_FREED_MEMORY.split(":")
    rest = ":".join(t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t not in ours)
    return {**env, "GLIBC_TUNABLES": rest} if rest else env


def prepare_cpu_process() -> None:
    """Give this process the CPU settings training runs fastest with. Call it first thing in a program that
    trains (the `mnistlab` command does). It may restart the process with the same command line, so do not
    call it in a process that something else started and talks to (a multiprocessing child): such a process
    inherits the allocator setting from its parent and takes `device.flush_denormals_everywhere` alone.

    The allocator: by default glibc serves large blocks with mmap and trims its heap as soon as the top is
    free, so blocks freed every step (the notebook network's activations, its 11 MB weight gradient) come back
    as fresh zero-filled pages every time: scoring the 10,000 test images took 2.3x as long. glibc takes
    the setting only at start-up (GLIBC_TUNABLES), so without it the process replaces itself once with the
    tunables added, as PyTorch's CPU launcher (`torch.backends.xeon.run_cpu`) sets the allocator before the
    script it runs starts. The process then keeps its peak memory instead of handing it back between steps.
    """
    env = allocator_environment(os.environ)
    if env is not None and sys.platform == "linux":
        sys.stdout.flush(), sys.stderr.flush()
        try:
            os.execve(sys.executable, sys.orig_argv, env)
        except OSError:
            pass  # cannot restart (no executable to run): go on with glibc's defaults
    from mnistlab.training.device import flush_denormals_everywhere

    flush_denormals_everywhere()
