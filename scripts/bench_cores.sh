#!/usr/bin/env bash
# Wall time of `distrib train` against core count, both strategies (ovr, multinomial), with
# the serial, loky and scikit-learn multinomial baselines
# measured in the same run; writes bench/bench.json and bench/bench.png.
#
#   scripts/bench_cores.sh                        # MNIST, workers 1..cores, 5 repeats
#   scripts/bench_cores.sh --notebook-baseline    # also the notebook's settings (minutes)
#   WORKERS=1,2,4 REPEAT=3 OUT=bench-4 scripts/bench_cores.sh
set -euo pipefail
args=(--dataset "${DATASET:-mnist}" --repeat "${REPEAT:-5}" --out "${OUT:-bench}")
if [[ -n "${WORKERS:-}" ]]; then
  args+=(--workers "$WORKERS")
fi
exec python -m distrib bench "${args[@]}" "$@"
