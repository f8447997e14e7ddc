#!/usr/bin/env python
"""Merge the bench.json of several runs (one worker count each) into one report and plot.

    python scripts/merge_bench.py OUT_DIR bench-1/bench.json bench-2/bench.json ...

Used by compose_bench.sh, where each worker count is a separate docker-compose stack.
"""

from __future__ import annotations

import json
import sys
from dataclasses import astuple
from pathlib import Path

from distrib.bench.bench import project, project_multinomial, speedups
from distrib.files import write_json
from distrib.report.bench_format import STRATEGY_KEYS
from distrib.report.plots import plot_bench

PROJECT = {"ovr": project, "multinomial": project_multinomial}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, paths = Path(argv[0]), [Path(p) for p in argv[1:]]
    reports = [json.loads(p.read_text()) for p in paths]
    per_strategy = {key for keys in STRATEGY_KEYS.values() for key in astuple(keys)}
    merged = {k: v for k, v in reports[0].items() if k not in per_strategy}
    for strategy, keys in STRATEGY_KEYS.items():
        runs_key, scaling_key, memory_key, projection_key = astuple(keys)
        if not any(runs_key in r for r in reports):
            continue
        merged[runs_key] = {k: v for r in reports for k, v in r.get(runs_key, {}).items()}
        merged[memory_key] = {k: v for r in reports for k, v in r.get(memory_key, {}).items()}
        runs = {int(k): v for k, v in merged[runs_key].items()}
        merged[scaling_key] = speedups(runs)
        merged[projection_key] = PROJECT[strategy](runs)
        for k, r in sorted(runs.items()):
            speedup = merged[scaling_key][str(k)]["speedup_wall"]
            print(
                f"{strategy}, {k} worker(s): wall {r['median_wall']:.2f} s, fit "
                f"{r['median_fit']:.2f} s, speedup {speedup:.2f}"
            )
    merged["sources"] = [str(p) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", merged)
    plot_bench(merged, out / "bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
