#!/usr/bin/env bash
# The `best` rows of BENCHMARKS.md: three seeds of the `best` preset (each a full run directory), then their
# ensemble: what `mnistlab train --preset best --ensemble 3 --out runs/best-ens` does, except that the members
# train side by side with one thread each (on a CPU shared with other jobs this uses it best; the wall and CPU
# time of each member are recorded by /usr/bin/time in runs/best-ens.member-<seed>.time).
set -euo pipefail
OUT=${OUT:-runs/best-ens}
THREADS=${THREADS:-1}
mkdir -p "$OUT"
for seed in 0 1 2; do
  OMP_NUM_THREADS=$THREADS /usr/bin/time -v mnistlab train --preset best --seed "$seed" --out "$OUT/member-$seed" \
    "$@" > "$OUT.member-$seed.log" 2> "$OUT.member-$seed.time" &
done
wait
for seed in 0 1 2; do
  tail -2 "$OUT.member-$seed.log"
  grep -E "User time|System time|Elapsed|Maximum resident" "$OUT.member-$seed.time"
done
python -m mnistlab.ensemble "$OUT"/member-* > "$OUT.json"
cat "$OUT.json"
