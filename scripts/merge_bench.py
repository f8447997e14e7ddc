#!/usr/bin/env python
"""Merge the bench.json of several runs (one worker count each) into one report and plot.

    python scripts/merge_bench.py OUT_DIR bench-1/bench.json bench-2/bench.json ...

Used by compose_bench.sh, where each worker count is a separate docker-compose stack.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from distrib.bench import project
from distrib.files import write_json
from distrib.plots import plot_bench


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, paths = Path(argv[0]), [Path(p) for p in argv[1:]]
    reports = [json.loads(p.read_text()) for p in paths]
    merged = {k: v for k, v in reports[0].items() if k not in ("distrib", "scaling", "memory")}
    merged["distrib"] = {k: v for r in reports for k, v in r["distrib"].items()}
    runs = {int(k): v for k, v in merged["distrib"].items()}
    base_k = min(runs)
    merged["scaling"] = {
        str(k): {
            "speedup_wall": runs[base_k]["median_wall"] / r["median_wall"],
            "speedup_fit": runs[base_k]["median_fit"] / r["median_fit"],
            "relative_to_workers": base_k,
        }
        for k, r in sorted(runs.items())
    }
    merged["projection"] = project(runs)
    merged["sources"] = [str(p) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", merged)
    plot_bench(merged, out / "bench.png")
    for k, r in sorted(runs.items()):
        print(
            f"{k} worker(s): wall {r['median_wall']:.2f} s, fit {r['median_fit']:.2f} s, "
            f"speedup {merged['scaling'][str(k)]['speedup_wall']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
