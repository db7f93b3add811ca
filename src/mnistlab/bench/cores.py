"""How far apart the cores under this machine's CPUs are, measured: the round trip of one cache line.

A virtual machine's vCPUs run wherever its host puts them, and the host moves them. Two that land on cores
sharing a last-level cache pass a cache line back and forth in a hundred nanoseconds or less; two on
different chiplets or sockets take several times longer, and so does every cache line that a step run by two
threads hands from one to the other (a kernel's output read by the next kernel, split between the threads
differently), which a kernel repeated alone does not pay. `mnistlab bench` records it around every epoch
for that reason.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from pathlib import Path

from mnistlab.files import native

SOURCE = Path(__file__).with_name("round_trip.c")
TRIPS = 100_000  # about 10-40 ms


@functools.cache
def _probe() -> ctypes.CDLL | None:
    try:
        lib = native.build(SOURCE, ["-O2", "-pthread"], ["-pthread"])
    except (OSError, subprocess.SubprocessError):
        return None
    lib.mnistlab_round_trip_ns.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
    lib.mnistlab_round_trip_ns.restype = ctypes.c_double
    return lib


def round_trip_ns(cpus: tuple[int, int] | None = None, trips: int = TRIPS) -> float | None:
    """Mean nanoseconds of one cache line's round trip between two CPUs (default: the first two this process
    may run on); None with fewer than two, where a thread cannot be pinned there, or without a C compiler."""
    if cpus is not None and cpus[0] == cpus[1]:
        raise ValueError(f"a round trip needs two different CPUs, not {cpus[0]} twice")
    if cpus is None:
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(allowed) < 2:
            return None
        cpus = (allowed[0], allowed[1])
    lib = _probe()
    if lib is None:
        return None
    ns = lib.mnistlab_round_trip_ns(cpus[0], cpus[1], trips)
    return ns if ns > 0 else None
