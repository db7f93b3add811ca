"""The `notebook` preset's step in each precision, side by side, against its floor.

    python bench/notebook_step.py [--rounds 10] [--steps 100] [--threads N] [--cpu-time] [--variant NAME ...]

Variants: fp32; bf16 autocast as plain autocast runs it (every forward casts the weights, every backward
casts their gradients back); bf16 autocast with the bf16 weight copies `mnistlab train` uses
(training.bf16). Each has its own model and optimizer (same seed, same batches) and trains `--steps` steps of
the engine per round, the variants taking turns round by round; each round also times the floor's kernels
(training.floor) in both precisions. Prints one Markdown row per variant: median ms per step, its floor, and
the median over rounds of the step's ratio to its floor and to the fp32 step of the same round. On a CPU
without native bf16 (AVX512-BF16 or AMX) bf16 is emulated and its rows measure nothing. `--cpu-time` (with
`--threads 1`) counts this process's CPU time instead of wall time, which drifts less on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mnistlab.presets import resolve
from mnistlab.training.bf16 import bf16_weights
from mnistlab.training.device import cpu_supports_bf16, cpu_training_mode
from mnistlab.training.engine import StepOptions, train_epoch
from mnistlab.training.floor import step_kernels, time_kernels
from mnistlab.training.optim import make_optimizer
from mnistlab.training.run import build, load_data

CPU = torch.device("cpu")
VARIANTS = {"fp32": (None, False), "bf16 autocast": (torch.bfloat16, False),
            "bf16 autocast + bf16 weight copies": (torch.bfloat16, True)}


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
    variants = {name: VARIANTS[name] for name in args.variant or VARIANTS}
    runs = {}
    for name, (amp, copies) in variants.items():
        model = build(cfg, CPU)
        opt = make_optimizer(cfg, model.parameters(), CPU)
        runs[name] = (bf16_weights(model, opt, CPU, amp) if copies else model, opt, StepOptions(amp=amp))
    x, _ = data.train.batch(data.train.shard(1)[0][0])
    first = next(iter(runs.values()))[0]
    kernels = {amp: step_kernels(first, lambda p: make_optimizer(cfg, p, CPU), x, amp)
               for amp in {amp for amp, _ in variants.values()}}
    step_ms: dict[str, list[float]] = {name: [] for name in runs}
    floor_ms: dict[torch.dtype | None, list[float]] = {amp: [] for amp in kernels}
    with cpu_training_mode(CPU):
        for net, opt, step in runs.values():  # warm-up: kernel selection, the allocator's first growth
            train_epoch(net, opt, data.train, 0, None, step, [])
        for r in range(1, args.rounds + 1):
            for name, (net, opt, step) in runs.items():
                t0 = clock()
                train_epoch(net, opt, data.train, r, None, step, [])
                step_ms[name].append(1e3 * (clock() - t0) / len(data.train))
            for amp, ks in kernels.items():
                floor_ms[amp].append(sum(time_kernels(ks, CPU, reps=10, warmup=1, clock=clock).values()))
    native = "native" if cpu_supports_bf16() else "EMULATED (the bf16 rows measure nothing)"
    print(f"{args.rounds} rounds of {args.steps} steps, {args.threads} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time; bf16 {native}\n")
    print("| variant | ms/step | floor (ms) | step / floor | vs fp32 |\n| --- | ---: | ---: | ---: | ---: |")
    base = step_ms.get("fp32", [float("nan")] * args.rounds)
    for name, (amp, _) in variants.items():  # ratios: the median of the rounds' side-by-side ratios
        to_floor = statistics.median(s / f for s, f in zip(step_ms[name], floor_ms[amp], strict=True))
        to_fp32 = statistics.median(s / f for s, f in zip(step_ms[name], base, strict=True))
        print(f"| {name} | {statistics.median(step_ms[name]):.3f} | {statistics.median(floor_ms[amp]):.3f} | "
              f"{to_floor:.2f}x | {to_fp32:.2f}x |")


if __name__ == "__main__":
    main()
