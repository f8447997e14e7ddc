"""Coordination cost of one multinomial evaluation against the number of workers.

Each worker holds a block of 50 rows, so an evaluation's wall time is almost all
coordination (`distrib.bench.coordination.measure_coordination`). One fresh LocalCluster of
single-threaded workers per count; on it, the same blocks called over the hosts' direct
channels (what fits use on ``tcp://`` clusters), relayed by one host to all the others (one
group of the sum tree), and through distributed's RPC (``actor_execute``: TLS clusters),
evaluation by evaluation in turn; medians over the evaluations. On a 2-core machine, counts
above 2 share the cores (an upper bound).

    python scripts/coordination.py --workers 1,2,4,8 --out scripts/results/coordination.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from distributed import Client

from distrib.bench.coordination import MODES, measure_coordination
from distrib.files import write_json
from distrib.parallel.cluster import start_local_cluster


def measure(workers: int, evaluations: int) -> dict[str, Any]:
    cluster = start_local_cluster(workers)
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(workers, timeout=120)
        modes = MODES if workers > 1 else ("direct", "rpc")
        return {"workers": workers, **measure_coordination(client, modes, evaluations)}
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    parser.add_argument("--evaluations", type=int, default=300)
    parser.add_argument("--out", default="coordination.json")
    args = parser.parse_args()
    results = []
    for k in (int(part) for part in args.workers.split(",")):
        results.append(measure(k, args.evaluations))
        for mode in MODES:
            r = results[-1].get(mode)
            if r is None:
                continue
            print(
                f"{k} worker(s), {mode}: coordination "
                f"{r['median_coordination_seconds'] * 1e3:.2f} ms "
                f"(p90 {r['p90_coordination_seconds'] * 1e3:.2f} ms) per evaluation; driver "
                f"{r.get('median_driver_cpu_seconds_per_message', 0) * 1e6:.0f} us per reply"
            )
    report = {"cores": os.cpu_count(), "evaluations": args.evaluations, "results": results}
    out = Path(args.out)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
