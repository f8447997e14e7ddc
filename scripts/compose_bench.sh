#!/usr/bin/env bash
# Benchmark the docker-compose stack against the number of workers: for each N, bring the
# stack up with N workers, run `distrib bench` against its scheduler, keep bench.json, tear
# down; then one plot of wall time against workers (compose-bench/bench.png).
#
#   scripts/compose_bench.sh                 # N = 1 2 3 4, MNIST, 3 repeats
#   WORKER_COUNTS="1 2" REPEAT=5 DATASET=digits scripts/compose_bench.sh
#   COMPOSE_FILE=my-compose.yml scripts/compose_bench.sh   # another stack definition
#
# Needs the image built (`docker-compose build`) and a running Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${WORKER_COUNTS:-1 2 3 4}
OUT=${OUT:-compose-bench}
FILE=${COMPOSE_FILE:-docker-compose.yml}
SCHEDULER=${SCHEDULER:-tcp://scheduler:8786}
compose() { timeout 900 docker-compose -p distribbench -f "$FILE" "$@"; }
mkdir -p "$OUT"
trap 'compose down -t 5 >/dev/null 2>&1 || true' EXIT

compose run --rm -T fetch >/dev/null 2>&1 || true  # fill the data volume (no-op if cached)
results=()
for n in $COUNTS; do
  echo "== $n worker(s)"
  compose up -d --scale worker="$n" scheduler worker
  compose run --rm -T train distrib bench --scheduler "$SCHEDULER" --workers "$n" \
    --repeat "${REPEAT:-3}" --no-baselines --dataset "${DATASET:-mnist}" \
    --out "/runs/compose-bench-$n"
  compose run --rm -T train cat "/runs/compose-bench-$n/bench.json" >"$OUT/bench-$n.json"
  results+=("$OUT/bench-$n.json")
  compose down -t 5
done
python scripts/merge_bench.py "$OUT" "${results[@]}"
echo "wrote $OUT/bench.json and $OUT/bench.png"
