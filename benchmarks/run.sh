#!/usr/bin/env bash
# Reproduce BENCHMARKS.md on this machine: the side-by-side benchmark (5 epochs each of the notebook's pipeline
# and the `notebook` preset, interleaved; then the `fast` preset over 5 seeds), then the `best` preset's three
# seeds and their ensemble (benchmarks/best.sh); the `fast` preset's held-out seeds and how it was chosen. Results land
# in benchmarks/results/, benchmarks/results-seeds20/ and runs/best-ens*.
# On a GPU machine from a source checkout: PYTHONPATH=src python -m mnistlab bench --epochs 5 --device cuda
set -euo pipefail
cd "$(dirname "$0")/.."
mnistlab bench --epochs 5 --serve --out benchmarks/results "$@"
mnistlab bench --seeds 20 --out benchmarks/results-seeds20 "$@"
python benchmarks/fast_ablation.py
benchmarks/best.sh
