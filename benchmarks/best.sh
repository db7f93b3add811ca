#!/usr/bin/env bash
# The `best` rows of BENCHMARKS.md: three seeds of the `best` preset (each a full run directory), then their
# ensemble: what `mnistlab train --preset best --ensemble 3 --out runs/best-ens` does, with the wall and CPU
# time and peak RSS of each member recorded by /usr/bin/time in runs/best-ens.member-<seed>.time.
# The members train one after another with torch's default threads; SIDE_BY_SIDE=1 trains them at once with
# one thread each (what suits a CPU shared with other jobs).
set -euo pipefail
OUT=${OUT:-runs/best-ens}
mkdir -p "$OUT"
member() {
  /usr/bin/time -v mnistlab train --preset best --seed "$1" --out "$OUT/member-$1" "${@:2}" \
    > "$OUT.member-$1.log" 2> "$OUT.member-$1.time"
}
for seed in 0 1 2; do
  if [[ "${SIDE_BY_SIDE:-0}" == 1 ]]; then OMP_NUM_THREADS=1 member "$seed" "$@" & else member "$seed" "$@"; fi
done
wait
for seed in 0 1 2; do
  tail -2 "$OUT.member-$seed.log"
  grep -E "User time|System time|Elapsed|Maximum resident" "$OUT.member-$seed.time"
done
mnistlab evaluate $(printf -- "--model %s " "$OUT"/member-*) --format json > "$OUT.json"
cat "$OUT.json"
