"""The CPU settings training runs with: for a whole process from its start (`process.prepare_cpu_process`:
glibc keeping freed memory, flush-to-zero on every thread of torch's pool), and for a training run on the
calling thread (`device.cpu_training_mode`, restored after it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from mnistlab.training.process import KEEP_FREED_MEMORY, allocator_environment, without_kept_memory

# Run in a fresh process, after PREPARE: the minor page faults that allocating and freeing a 48 MiB block
# costs per step (above 32 MiB glibc always maps a new block by default); how many of 4,000,000 denormals
# survive a product split over the pool's two threads; the calling thread's mode before, inside and after a
# training block with one nested in it (the floor measured between epochs), and what env.json would record.
PROBES = """
import json, os, resource, torch
from mnistlab.training.device import cpu_settings, cpu_training_mode, flushes_denormals

def faults_per_step(steps=10):
    out = []
    for _ in range(steps):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(48 << 18).fill_(1.0)  # 48 MiB of float32
        del block
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    return out

torch.set_num_threads(2)
x = torch.full((4_000_000,), 1e-39)
cpu = torch.device("cpu")
faults_per_step(2)
out = {"faults": faults_per_step(20), "survivors": int(((x * 1.0) != 0).sum()), "modes": [flushes_denormals()]}
with cpu_training_mode(cpu):
    with cpu_training_mode(cpu):
        pass
    out["modes"].append(flushes_denormals())
    out["recorded"] = cpu_settings(cpu)
out["modes"].append(flushes_denormals())
print(json.dumps({**out, "starts": starts}))
"""
PREPARE = """
import os
starts = int(os.environ.get("STARTS", "0")) + 1
os.environ["STARTS"] = str(starts)  # a restart inherits it
"""

glibc = pytest.mark.skipif(allocator_environment({}) is None, reason="glibc's allocator")


def run_python(code: str, **env_changes: str | None) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


@glibc
def test_a_plain_process_trains_with_the_callers_mode_for_the_run_only():
    """Started plainly (as `python`, importing mnistlab), a process faults a freed-and-reallocated 48 MiB block
    in afresh every step and flushes denormals on no thread; a training run sets the caller's flush-to-zero
    for its duration (so a saved model scores as it did in training), a block inside it leaves the run's mode
    alone, and the caller gets its own mode back; env.json would say the pool's threads were not reached."""
    out = run_python(PREPARE + PROBES)
    assert min(out["faults"]) > 10_000, out["faults"]  # 12,288 pages of 4 KiB
    assert out["survivors"] == 4_000_000 and out["modes"] == [False, True, False]
    assert out["recorded"] == {"flush_denormal": "calling thread", "glibc_tunables": None}


@glibc
def test_a_prepared_process_keeps_freed_memory_and_flushes_on_every_thread():
    """Prepared as the `mnistlab` command prepares itself, the process restarts once with the allocator setting
    (the same command line: the code runs again) and then keeps the block resident, and every thread of the
    pool flushes, before, inside and after a training block; env.json records both."""
    out = run_python(PREPARE + "from mnistlab.training.process import prepare_cpu_process\nprepare_cpu_process()\n"
                     + PROBES)
    assert max(out["faults"][-5:]) < 50, out["faults"]
    assert out["survivors"] == 0 and out["modes"] == [True, True, True] and out["starts"] == 2
    assert out["recorded"] == {"flush_denormal": "every thread", "glibc_tunables": KEEP_FREED_MEMORY}


@glibc
def test_a_users_own_malloc_tunables_win_and_no_restart_happens():
    out = run_python("""
import json, os
starts = int(os.environ.get("STARTS", "0")) + 1
os.environ["STARTS"] = str(starts)
from mnistlab.training.process import prepare_cpu_process
prepare_cpu_process()
print(json.dumps([os.environ["GLIBC_TUNABLES"], starts]))
""", GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert out == ["glibc.malloc.arena_max=2", 1]


@glibc
def test_the_allocator_environment_adds_to_other_tunables_and_comes_off_again():
    """The bench's reference contender runs without the setting the command added: as a plain `python`."""
    env = allocator_environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=2048"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": f"glibc.rtld.optional_static_tls=2048:{KEEP_FREED_MEMORY}"}
    assert allocator_environment(env) is None  # already set: no second restart
    assert without_kept_memory(env) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=2048"}
    assert without_kept_memory(allocator_environment({"PATH": "/bin"})) == {"PATH": "/bin"}
