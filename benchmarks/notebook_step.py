"""The `notebook` preset's step in each precision, side by side, against its floor.

    python benchmarks/notebook_step.py [--rounds 10] [--steps 100] [--threads N] [--cpu-time] [--variant NAME ...]

Variants: fp32; bf16 autocast, as `mnistlab train` runs it (every forward casts the fp32 weights, every
backward casts their gradients back); fp32 tensors with oneDNN computing the matmuls and
convolutions in bf16 (bf16 inputs, fp32 accumulation and output: no conversion passes, no bf16 gradients;
`torch.backends.mkldnn.*.fp32_precision`).
Each has its own model and optimizer (same seed, same batches) and trains `--steps` steps of the engine per
round, the variants taking turns round by round; each round also times the variant's floor (bench.floor,
in its precision). Prints one Markdown row per variant: median ms per step, its floor, and the median over
rounds of the step's ratio to its floor and to the fp32 step of the same round; then round by round, each
variant's step / floor. On a CPU without
native bf16 (AVX512-BF16 or AMX) the autocast rows time bf16's emulation and the oneDNN row is fp32 again:
only the fp32 row means anything there. `--cpu-time` (with `--threads 1`) counts this process's CPU time instead of wall
time, which drifts less on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mnistlab.bench.floor import step_kernels, time_kernels
from mnistlab.presets import resolve
from mnistlab.training.device import cpu_supports_bf16, cpu_training_mode
from mnistlab.training.engine import StepOptions, train_epoch
from mnistlab.training.optim import make_optimizer
from mnistlab.training.process import prepare_cpu_process
from mnistlab.training.run import build, load_data

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Variant:
    amp: torch.dtype | None = None  # autocast dtype
    onednn_bf16: bool = False  # fp32 tensors, oneDNN's matmuls and convolutions computing in bf16


VARIANTS = {
    "fp32": Variant(),
    "bf16 autocast": Variant(torch.bfloat16),
    "fp32, oneDNN bf16 products": Variant(onednn_bf16=True),
}


@contextmanager
def onednn_precision(v: Variant) -> Iterator[None]:
    """fp32 matmuls and convolutions computed by oneDNN in bf16 (bf16 inputs, fp32 accumulation and output)
    while `v.onednn_bf16`; torch applies it only where the CPU has native bf16, else they stay fp32."""
    if not v.onednn_bf16:
        yield
        return
    mm, conv = torch.backends.mkldnn.matmul, torch.backends.mkldnn.conv
    saved = mm.fp32_precision, conv.fp32_precision
    mm.fp32_precision = conv.fp32_precision = "bf16"
    try:
        yield
    finally:
        mm.fp32_precision, conv.fp32_precision = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100, help="steps per variant per round (batches of 32)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cpu-time", action="store_true", help="time.thread_time instead of wall time (1 thread)")
    ap.add_argument("--variant", action="append", choices=list(VARIANTS),
                    help="only these (repeatable; default all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cpu_time and args.threads != 1:
        ap.error("--cpu-time counts the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    cfg = resolve("notebook", subset=32 * args.steps, device="cpu")
    data = load_data(cfg, CPU)
    x, _ = data.train.batch(data.train.shard(1)[0][0])
    variants = {name: VARIANTS[name] for name in args.variant or VARIANTS}
    runs, kernels = {}, {}
    for name, v in variants.items():
        model = build(cfg, CPU)
        opt = make_optimizer(cfg, model.parameters(), CPU)
        runs[name] = (model, opt, StepOptions(amp=v.amp))
        kernels[name] = step_kernels(model, lambda p: make_optimizer(cfg, p, CPU), x, v.amp)
    step_ms: dict[str, list[float]] = {name: [] for name in runs}
    floor_ms: dict[str, list[float]] = {name: [] for name in runs}
    with cpu_training_mode(CPU):
        for name, (net, opt, step) in runs.items():  # warm-up: kernel selection, the allocator's first growth
            with onednn_precision(variants[name]):
                train_epoch(net, opt, data.train, 0, None, step, [])
        for r in range(1, args.rounds + 1):
            for name, (net, opt, step) in runs.items():
                with onednn_precision(variants[name]):
                    t0 = clock()
                    train_epoch(net, opt, data.train, r, None, step, [])
                    step_ms[name].append(1e3 * (clock() - t0) / len(data.train))
                    floor = time_kernels(kernels[name], CPU, reps=10, warmup=1, clock=clock)
                floor_ms[name].append(sum(floor.values()))
    native = "native" if cpu_supports_bf16() else "NOT native: bf16 autocast is emulated, oneDNN stays fp32"
    print(f"{args.rounds} rounds of {args.steps} steps, {args.threads} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time; bf16 {native}\n")
    print("| variant | ms/step | floor (ms) | step / floor | vs fp32 |\n| --- | ---: | ---: | ---: | ---: |")
    base = step_ms.get("fp32")
    for name in variants:  # ratios: the median of the rounds' side-by-side ratios
        to_floor = statistics.median(s / f for s, f in zip(step_ms[name], floor_ms[name], strict=True))
        to_fp32 = "-" if base is None else \
            f"{statistics.median(s / f for s, f in zip(step_ms[name], base, strict=True)):.2f}x"
        print(f"| {name} | {statistics.median(step_ms[name]):.3f} | {statistics.median(floor_ms[name]):.3f} | "
              f"{to_floor:.2f}x | {to_fp32} |")
    print("\nRound by round, each variant's step / floor")
    for r in range(args.rounds):
        each = ", ".join(f"{step_ms[name][r] / floor_ms[name][r]:.2f}x" for name in variants)
        print(f"{r + 1}: {each}")


if __name__ == "__main__":
    prepare_cpu_process()  # the process `mnistlab train` trains in (it may restart once)
    main()
