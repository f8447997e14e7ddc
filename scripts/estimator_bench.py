"""The estimator as a Dask user calls it, against loky and scikit-learn, in one run.

Full MNIST, notebook split, the training matrix in memory as float32 CSR (what a user holds
after ``sp.csr_matrix(X / 255)``), default settings (C=0.1, lbfgs, tol 1e-4, max_iter 100).
Each round, in turn:

* ``distrib ovr``: a fresh ``LocalCluster`` of 2 workers x 1 thread and a ``Client``;
  ``DaskLogisticRegression().fit(X, y)`` twice: the first fit (the rows reach the workers)
  and a warm one;
* ``loky ovr``: ``OneVsRestClassifier(LogisticRegression(), n_jobs=2)``, twice (the first
  starts loky's worker processes);
* ``distrib multinomial`` on the same cluster, and scikit-learn's multinomial
  ``LogisticRegression`` in this process.

Medians per line and the ratios the estimator issue asks for go to a JSON file.

    python scripts/estimator_bench.py --rounds 3 --out scripts/results/estimator-2cores.json
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from distributed import Client
from joblib import parallel_config
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from distrib.data.datasets import load_dataset
from distrib.data.split import split_arrays
from distrib.estimator import DaskLogisticRegression
from distrib.files import write_json
from distrib.parallel.cluster import start_local_cluster


def _timed(fit: Any, *args: Any) -> float:
    started = time.perf_counter()
    fit(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="estimator.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)

    parts = split_arrays(load_dataset("mnist"), "notebook", "unit")
    X = sp.csr_matrix(parts.X_train.compute(scheduler="threads"))
    y = parts.y_train.compute(scheduler="threads")
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)
        print(f"[{name}] {seconds:.2f} s", flush=True)

    for _ in range(args.rounds):
        cluster = start_local_cluster(2)
        client = Client(cluster, set_as_default=False)
        try:
            client.wait_for_workers(2, timeout=120)
            with client.as_current():
                record("distrib ovr, first fit", _timed(DaskLogisticRegression().fit, X, y))
                record("distrib ovr, warm fit", _timed(DaskLogisticRegression().fit, X, y))
                multinomial = DaskLogisticRegression(strategy="multinomial")
                record("distrib multinomial", _timed(multinomial.fit, X, y))
        finally:
            client.close(timeout=10)
            cluster.close(timeout=10)
        with parallel_config(backend="loky"):
            loky = OneVsRestClassifier(LogisticRegression(C=0.1), n_jobs=2)
            record("loky ovr, first fit", _timed(loky.fit, X, y))
            record("loky ovr, warm fit", _timed(loky.fit, X, y))
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)  # the next round's first fit starts it
        reference = LogisticRegression(C=0.1)
        record("scikit-learn multinomial, one process", _timed(reference.fit, X, y))

    medians = {name: float(np.median(values)) for name, values in times.items()}
    report = {
        "rounds": args.rounds,
        "times": times,
        "medians": medians,
        "warm_ovr_over_loky": medians["distrib ovr, warm fit"] / medians["loky ovr, warm fit"],
        "first_ovr_over_loky": medians["distrib ovr, first fit"] / medians["loky ovr, first fit"],
        "multinomial_over_sklearn": medians["distrib multinomial"]
        / medians["scikit-learn multinomial, one process"],
    }
    for key in ("warm_ovr_over_loky", "first_ovr_over_loky", "multinomial_over_sklearn"):
        print(f"{key}: {report[key]:.2f}x")
    write_json(Path(args.out), report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
