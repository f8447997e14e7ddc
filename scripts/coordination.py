"""Coordination cost of one multinomial evaluation against the number of workers.

Each worker holds a block of 50 rows, so an evaluation's wall time is almost all
coordination: the coefficients sent to every worker's block host, the call, the gradients
back. One fresh LocalCluster of single-threaded workers per count; medians over the
evaluations. On a 2-core machine, counts above 2 share the cores (an upper bound).

    python scripts/coordination.py --workers 1,2,4,8 --out scripts/results/coordination.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from distributed import Client

from distrib.block_hosts import ClusterBlocks
from distrib.cluster import start_local_cluster
from distrib.files import write_json
from distrib.transfer import InMemoryArrays


def measure(workers: int, evaluations: int) -> dict[str, float]:
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
        runner = ClusterBlocks.from_training_data(client, InMemoryArrays(X, y), np.arange(10))
        runner.wait_loaded()
        walls, compute = [], []
        for _ in range(evaluations):
            started = time.perf_counter()
            results = runner.evaluate(coef, intercept, None)
            walls.append(time.perf_counter() - started)
            compute.append(max(r.seconds for r in results))
        runner.release()
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)
    coordination = np.array(walls) - np.array(compute)
    return {
        "workers": workers,
        "median_wall_seconds": float(np.median(walls)),
        "median_coordination_seconds": float(np.median(coordination)),
        "p90_coordination_seconds": float(np.percentile(coordination, 90)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    parser.add_argument("--evaluations", type=int, default=300)
    parser.add_argument("--out", default="coordination.json")
    args = parser.parse_args()
    results = []
    for k in (int(part) for part in args.workers.split(",")):
        results.append(measure(k, args.evaluations))
        r = results[-1]
        print(
            f"{k} worker(s): coordination {r['median_coordination_seconds'] * 1e3:.2f} ms "
            f"(p90 {r['p90_coordination_seconds'] * 1e3:.2f} ms) per evaluation"
        )
    report = {"cores": os.cpu_count(), "evaluations": args.evaluations, "results": results}
    out = Path(args.out)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
