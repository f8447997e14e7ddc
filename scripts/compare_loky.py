#!/usr/bin/env python
"""Fit phase of `distrib train` against OneVsRestClassifier with loky, in one run.

Same data (MNIST, notebook split, unit scale), same settings (distrib's defaults), same
number of processes. After one warm-up of each, ``--repeat`` timed runs; prints and writes
JSON with every time and the medians.

    python scripts/compare_loky.py --workers 2 --repeat 5 --out compare_loky.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster
from joblib import parallel_config
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from distrib import TrainConfig, train
from distrib.cluster import package_versions
from distrib.data import load_dataset
from distrib.split import split_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--out", default="compare_loky.json")
    args = parser.parse_args()

    config = TrainConfig(dataset=args.dataset)
    parts = split_arrays(load_dataset(config.dataset, args.data_home), config.split, config.scale)
    X_train = parts.X_train.compute(scheduler="threads")
    y_train = parts.y_train.compute(scheduler="threads")
    params = config.estimator_params()

    def loky_fit() -> tuple[float, OneVsRestClassifier]:
        ovr = OneVsRestClassifier(LogisticRegression(**params), n_jobs=args.workers)
        t0 = time.perf_counter()
        with parallel_config(backend="loky"):
            ovr.fit(X_train, y_train)
        return time.perf_counter() - t0, ovr

    times: dict[str, list[float]] = {"loky_fit": [], "distrib_fit": [], "distrib_total": []}
    print(f"loky, n_jobs={args.workers}: warm-up", file=sys.stderr)
    loky_fit()
    for i in range(args.repeat):
        seconds, ovr = loky_fit()
        times["loky_fit"].append(seconds)
        print(f"  loky run {i + 1}/{args.repeat}: fit {seconds:.2f} s", file=sys.stderr)

    cluster = LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"distrib, {args.workers} workers: warm-up", file=sys.stderr)
            train(config, client=client, out=Path(tmp) / "warm", home=args.data_home)
            for i in range(args.repeat):
                result = train(config, client=client, out=Path(tmp) / f"r{i}", home=args.data_home)
                times["distrib_fit"].append(result.metrics["timings"]["fit"])
                times["distrib_total"].append(result.metrics["timings"]["total"])
                print(
                    f"  distrib run {i + 1}/{args.repeat}: fit {times['distrib_fit'][-1]:.2f} s",
                    file=sys.stderr,
                )
    finally:
        client.close()
        cluster.close()

    same = bool(
        np.allclose(
            np.vstack([e.coef_ for e in ovr.estimators_]), result.model.coef, rtol=1e-5, atol=1e-7
        )
    )
    medians = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "dataset": args.dataset,
        "workers": args.workers,
        "repeat": args.repeat,
        "settings": config.to_dict(),
        "times_seconds": times,
        "median_seconds": medians,
        "loky_over_distrib_fit": medians["loky_fit"] / medians["distrib_fit"],
        "same_coefficients": same,
        "test_accuracy": result.metrics["test_accuracy"],
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": package_versions(),
        },
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    summary = ("median_seconds", "loky_over_distrib_fit", "same_coefficients", "test_accuracy")
    print(json.dumps({k: report[k] for k in summary}, indent=2))


if __name__ == "__main__":
    main()
