"""The CPU training mode: glibc keeping freed blocks (no page faults per step) and flush-to-zero on every
thread of torch's pool, entered by a training run and restored after it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Run in a fresh process: how many minor page faults allocating and freeing a 48 MiB block costs, per step.
FAULTS_PER_STEP = """
import json, resource, torch

def faults_per_step(steps=10):
    out = []
    for _ in range(steps):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(48 << 18).fill_(1.0)  # 48 MiB of float32
        del block
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    return out
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_keep_freed_memory_stops_the_per_step_page_faults():
    """A large block freed and allocated again every step costs fresh zero-filled pages every time by default
    (above 32 MiB glibc always maps a new block; below, whether it does depends on the heap's layout, which is
    how the notebook's 11 MB gradient met it) and none in the steady state once the engine has told glibc to
    keep freed memory, as fit() does on the CPU (after the heap has grown to a few blocks: memalign'd blocks
    do not always fit the hole the last one left)."""
    code = FAULTS_PER_STEP + """
from mnistlab.training.device import keep_freed_memory, release_freed_memory

faults_per_step(2)
before = faults_per_step()
keep_freed_memory()
after = faults_per_step(20)
release_freed_memory()
print(json.dumps([before, after, faults_per_step()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, released = json.loads(out)
    assert min(before) > 10_000, before  # 12,288 pages of 4 KiB
    assert max(after[-5:]) < 50, after
    # Released: the kept pages went back to the kernel, so the first block after it faults them in afresh. (Later
    # steps may reuse that block resident, as glibc does by default with a free chunk left mid-heap: it takes a
    # fitting free chunk before its mmap threshold applies, and trims only the heap's top.)
    assert released[0] > 10_000, released


def test_training_flushes_denormals_on_every_thread_and_restores_the_mode():
    """Inside a CPU training run every thread of torch's pool flushes denormals to zero (Adam's decaying
    averages would otherwise slow the notebook's late epochs 2.3x); before and after, the caller's mode."""
    code = """
import json, torch
from mnistlab.training.device import cpu_training_mode
torch.set_num_threads(2)
x = torch.full((4_000_000,), 1e-39)  # large enough to be split over the pool's threads
kept = lambda: int(((x * 1.0) != 0).sum())
before = kept()
with cpu_training_mode(torch.device("cpu")):
    during = kept()
print(json.dumps([before, during, kept()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [4_000_000, 0, 4_000_000]


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_a_training_mode_inside_a_run_leaves_the_runs_setting_alone():
    """The floor is measured between epochs under its own cpu_training_mode: leaving it must not give the
    allocator its defaults back mid-run (every later step would fault its large blocks in afresh, the step
    slower from then on) nor turn flushing off; the outermost block restores both."""
    code = FAULTS_PER_STEP + """
from mnistlab.training.device import cpu_training_mode, flushes_denormals

cpu = torch.device("cpu")
with cpu_training_mode(cpu):
    faults_per_step(20)
    with cpu_training_mode(cpu):
        pass
    inside = faults_per_step(), flushes_denormals()
after = faults_per_step(), flushes_denormals()
print(json.dumps([inside, after]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    (inside, flushing), (after, flushing_after) = json.loads(out)
    assert max(inside) < 50 and flushing, inside
    assert after[0] > 10_000 and not flushing_after, after
