#!/usr/bin/env bash
# The CUDA path end to end on a machine with an NVIDIA GPU, in at most 8 minutes, into one results folder.
#
#   scripts/gpu-check.sh [--dry-run] [--out DIR] [--data-dir DIR] [--budget SECONDS]
#
# Steps (each with its own time limit; a step that would start past the budget is listed as not run):
#   1 gpu-tests   the suite's tests marked gpu
#   2 bench       mnistlab bench --device cuda --epochs 5 (the notebook's pipeline vs the notebook preset,
#                 then the fast preset over 5 seeds without CUDA graphs)
#   3 fast-graphs the fast preset over the same 5 seeds with --cuda-graphs (one process: one compilation)
#   4 lab         mnistlab lab --quick --device cuda
#   5 notebook    the lab notebook executed on CUDA (mnistlab notebook --execute)
#   6 ddp         one notebook-preset epoch under torchrun, one rank per GPU present
#
# DIR (default gpu-check-<date>) gets env.txt, one <step>.log per step, the steps' own outputs in folders of
# the same names, and summary.md: each step's exit code and seconds, and the fast preset's test accuracy and
# training seconds per seed with and without CUDA graphs. BENCHMARKS.md says how to read it.
# --dry-run prints the steps' commands and runs nothing (it works without a GPU). Only the CLI is called:
# $PYTHON (default .venv/bin/python, else python3) must import mnistlab and the lab extra.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0 out="gpu-check-$(date -u +%Y%m%d-%H%M%S)" data_dir="" budget=480
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --data-dir) data_dir="${2:?--data-dir needs a folder}"; shift ;;
    --budget) budget="${2:?--budget needs seconds}"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
ml="$PYTHON -m mnistlab"
data=${data_dir:+--data-dir $data_dir}
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
if [ "$dry" = 0 ] && [ "$gpus" -lt 1 ]; then
  echo "error: no NVIDIA GPU found (nvidia-smi lists none); --dry-run shows what would run" >&2
  exit 2
fi
ranks=$(( gpus > 0 ? gpus : 1 ))

# name | time limit (s) | command
steps=(
  "gpu-tests|90|$PYTHON -m pytest -q -m gpu tests"
  "bench|200|$ml bench --device cuda --epochs 5 --out $out/bench $data"
  "fast-graphs|90|$ml train --preset fast --ensemble 5 --cuda-graphs --device cuda --no-tensorboard --quiet --out $out/fast-graphs $data"
  "lab|90|$ml lab --quick --device cuda --out $out/lab $data"
  "notebook|90|$ml notebook --execute --device cuda --out $out/notebook/lab_notebook.ipynb $data"
  "ddp|60|$PYTHON -m torch.distributed.run --standalone --nproc-per-node $ranks -m mnistlab train --preset notebook --epochs 1 --device cuda --no-tensorboard --quiet --out $out/ddp $data"
)

if [ "$dry" = 1 ]; then
  echo "gpu-check would run, into $out (budget ${budget}s; GPUs found: $gpus):"
  for s in "${steps[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    printf '  %-12s (limit %3ss)  %s\n' "$name" "$limit" "$cmd"
  done
  exit 0
fi

mkdir -p "$out"
{ date -u; nvidia-smi; $PYTHON -c 'import sys, torch; print(sys.version); print("torch", torch.__version__,
  "cuda", torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
} >"$out/env.txt" 2>&1
start=$SECONDS failed=0
printf '# gpu-check %s\n\n| step | exit | seconds |\n| --- | ---: | ---: |\n' "$(date -u +%F)" >"$out/summary.md"
for s in "${steps[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  if [ $(( SECONDS - start + limit )) -gt "$budget" ]; then
    echo "| $name | not run: budget | |" >>"$out/summary.md"; failed=1; continue
  fi
  echo "== $name: $cmd"
  t0=$SECONDS
  # shellcheck disable=SC2086  # the command is split into words on purpose
  timeout "$limit" $cmd >"$out/$name.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || failed=1
  echo "| $name | $rc$([ "$rc" = 124 ] && echo ' (time limit)') | $(( SECONDS - t0 )) |" >>"$out/summary.md"
  tail -n 3 "$out/$name.log"
done

# The fast preset per seed, without CUDA graphs (bench.json) and with them (the ensemble's member runs).
$PYTHON - "$out" >>"$out/summary.md" <<'EOF'
import csv, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
if (bench := out / "bench" / "bench.json").is_file():
    fast = json.loads(bench.read_text())["fast"]
    rows += [("eager", s, a, t) for s, a, t in zip(fast["seeds"], fast["test_accs"], fast["train_seconds"])]
for f in sorted((out / "fast-graphs").glob("member-*/metrics.csv")):
    epochs = list(csv.DictReader(f.open()))
    rows.append(("CUDA graphs", f.parent.name.removeprefix("member-"), float(epochs[-1]["test_acc"]),
                 sum(float(r["seconds"]) for r in epochs)))
print("\n| fast preset | seed | test acc (%) | train s |\n| --- | --- | ---: | ---: |")
for kind, seed, acc, secs in rows:
    print(f"| {kind} | {seed} | {acc:.2f} | {secs:.2f} |")
EOF
cat "$out/summary.md"
echo "results: $out"
exit $failed
