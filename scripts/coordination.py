"""Coordination cost of one multinomial evaluation against the number of workers.

Each worker holds a block of 50 rows, so an evaluation's wall time is almost all
coordination: the coefficients sent to every worker's block host, the call, the gradients
back. One fresh LocalCluster of single-threaded workers per count; on it, the same blocks
called over the hosts' direct channels (what fits use on ``tcp://`` clusters) and through
distributed's RPC (``actor_execute``: TLS clusters), evaluation by evaluation in turn;
medians over the evaluations. On a 2-core machine, counts above 2 share the cores (an upper
bound).

    python scripts/coordination.py --workers 1,2,4,8 --out scripts/results/coordination.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from distributed import Client

from distrib.files import write_json
from distrib.parallel.block_hosts import ClusterBlocks
from distrib.parallel.cluster import start_local_cluster
from distrib.parallel.transfer import InMemoryArrays


def measure(workers: int, evaluations: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = 50 * workers
    X = sp.csr_matrix(
        (rng.random((rows, 784)) * (rng.random((rows, 784)) < 0.2)).astype(np.float32)
    )
    y = rng.integers(0, 10, rows)
    coef, intercept = rng.normal(size=(10, 784)) * 0.01, np.zeros(10)
    cluster = start_local_cluster(workers)
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(workers, timeout=120)
        runners = {}
        for calls, direct in (("direct", True), ("rpc", False)):
            data = InMemoryArrays(X, y)
            runners[calls] = ClusterBlocks.from_training_data(client, data, np.arange(10))
            runners[calls].direct = direct
            runners[calls].wait_loaded()
        walls: dict[str, list[float]] = {calls: [] for calls in runners}
        compute: dict[str, list[float]] = {calls: [] for calls in runners}
        for _ in range(evaluations):
            for calls, runner in runners.items():
                started = time.perf_counter()
                results = runner.evaluate(coef, intercept, None)
                walls[calls].append(time.perf_counter() - started)
                compute[calls].append(max(r.seconds for r in results))
        for runner in runners.values():
            runner.release()
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)
    report: dict[str, Any] = {"workers": workers}
    for calls in walls:
        coordination = np.array(walls[calls]) - np.array(compute[calls])
        report[calls] = {
            "median_wall_seconds": float(np.median(walls[calls])),
            "median_coordination_seconds": float(np.median(coordination)),
            "p90_coordination_seconds": float(np.percentile(coordination, 90)),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    parser.add_argument("--evaluations", type=int, default=300)
    parser.add_argument("--out", default="coordination.json")
    args = parser.parse_args()
    results = []
    for k in (int(part) for part in args.workers.split(",")):
        results.append(measure(k, args.evaluations))
        for calls in ("direct", "rpc"):
            r = results[-1][calls]
            print(
                f"{k} worker(s), {calls}: coordination "
                f"{r['median_coordination_seconds'] * 1e3:.2f} ms "
                f"(p90 {r['p90_coordination_seconds'] * 1e3:.2f} ms) per evaluation"
            )
    report = {"cores": os.cpu_count(), "evaluations": args.evaluations, "results": results}
    out = Path(args.out)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
