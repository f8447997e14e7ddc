"""The estimator as a Dask user calls it, against loky and scikit-learn, in one run.

Full MNIST, notebook split, the training matrix in memory as float32 CSR (what a user holds
after ``sp.csr_matrix(X / 255)``), default settings (C=0.1, lbfgs, tol 1e-4, max_iter 100).
Each round, in turn:

* ``distrib ovr``: a fresh ``LocalCluster(n_workers=2, threads_per_worker=1)`` and a
  ``Client``, made as a user makes them (``plain``), and one of distrib's own tuned local
  clusters (``tuned``: `start_local_cluster`); on each, ``DaskLogisticRegression().fit(X,
  y)`` twice: the first fit (the rows reach the workers) and a warm one;
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
from distributed import Client, LocalCluster
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

    clusters = {
        "plain": lambda: LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0"),
        "tuned": lambda: start_local_cluster(2),
    }
    for _ in range(args.rounds):
        for kind, make in clusters.items():
            cluster = make()
            client = Client(cluster, set_as_default=False)
            try:
                client.wait_for_workers(2, timeout=120)
                with client.as_current():
                    first = _timed(DaskLogisticRegression().fit, X, y)
                    record(f"distrib ovr, first fit ({kind})", first)
                    warm = _timed(DaskLogisticRegression().fit, X, y)
                    record(f"distrib ovr, warm fit ({kind})", warm)
                    multinomial = DaskLogisticRegression(strategy="multinomial")
                    record(f"distrib multinomial ({kind})", _timed(multinomial.fit, X, y))
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
    loky_warm = medians["loky ovr, warm fit"]
    ratios = {
        kind: {
            "warm_ovr_over_loky_warm": medians[f"distrib ovr, warm fit ({kind})"] / loky_warm,
            "first_ovr_over_loky_warm": medians[f"distrib ovr, first fit ({kind})"] / loky_warm,
            "first_ovr_over_loky_first": medians[f"distrib ovr, first fit ({kind})"]
            / medians["loky ovr, first fit"],
            "multinomial_over_sklearn": medians[f"distrib multinomial ({kind})"]
            / medians["scikit-learn multinomial, one process"],
        }
        for kind in clusters
    }
    report = {"rounds": args.rounds, "times": times, "medians": medians, "ratios": ratios}
    for kind, values in ratios.items():
        for key, ratio in values.items():
            print(f"{kind} cluster, {key}: {ratio:.2f}x")
    write_json(Path(args.out), report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
