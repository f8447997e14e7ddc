"""Choosing C on MNIST: `DaskLogisticRegressionCV` on a user's `LocalCluster(2, 1)` against
scikit-learn's `LogisticRegressionCV(n_jobs=2)`, the same folds and Cs, in one run.

Both search the notebook split's 60,000 training rows (pixels / 255) with stratified folds
and refit the best C; both are timed as calls in this process (the cluster started before),
each beside one default fit of its own kind, so each search's cost in fits is its own ratio.
The result (JSON): wall times, every (fold, C) score of both, the chosen Cs, test accuracy.

    python scripts/cv_bench.py --out scripts/results/cv-2cores.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
from distributed import Client, LocalCluster
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

from distrib import DaskLogisticRegression, DaskLogisticRegressionCV
from distrib.data.datasets import load_mnist
from distrib.data.split import split_arrays
from distrib.files import write_json


def timed(fit) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fitted = fit()
    return time.perf_counter() - start, fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--Cs", default="0.001,0.01,0.1,1,10")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    Cs = [float(c) for c in args.Cs.split(",")]
    parts = split_arrays(load_mnist(fetch=False), "notebook", "unit")
    X, y, X_test, y_test = parts.local("X_train", "y_train", "X_test", "y_test")
    given = " ".join(f"--{name} {value}" for name, value in vars(args).items() if value)
    report: dict[str, object] = {
        "command": f"python scripts/cv_bench.py {given}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": 2},
        "n_train": len(y),
        "Cs": Cs,
        "folds": args.folds,
        "strategy": "multinomial",
    }
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    with cluster, Client(cluster):
        DaskLogisticRegression(strategy="multinomial", max_iter=2).fit(X[:5000], y[:5000])
        one, _ = timed(lambda: DaskLogisticRegression(strategy="multinomial").fit(X, y))
        ours_s, ours = timed(lambda: DaskLogisticRegressionCV(
            Cs=Cs, cv=args.folds, strategy="multinomial").fit(X, y))  # fmt: skip
    report["distrib"] = {
        "search_seconds": ours_s,
        "one_default_fit_seconds": one,
        "search_over_one_fit": ours_s / one,
        "scores": ours.scores_.tolist(),
        "C": ours.C_,
        "test_accuracy": float(ours.score(X_test, y_test)),
        "n_iter": ours.n_iter_.tolist(),
    }
    print("distrib", json.dumps(report["distrib"]), flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its lbfgs stops at max_iter, as its defaults say
        one, _ = timed(lambda: LogisticRegression().fit(X, y))
        theirs_s, theirs = timed(lambda: LogisticRegressionCV(
            Cs=Cs, cv=args.folds, n_jobs=2, scoring="accuracy", l1_ratios=(0,),
            use_legacy_attributes=False).fit(X, y))  # fmt: skip
    report["sklearn"] = {
        "search_seconds": theirs_s,
        "one_default_fit_seconds": one,
        "search_over_one_fit": theirs_s / one,
        "scores": theirs.scores_[:, 0, :].tolist(),
        "C": float(theirs.C_),
        "test_accuracy": float(theirs.score(X_test, y_test)),
    }
    # the chosen C's mean held-out score, ours less scikit-learn's best
    report["chosen_c_mean_score_gap"] = float(
        np.max(np.mean(ours.scores_, axis=0)) - np.max(np.mean(theirs.scores_[:, 0, :], axis=0))
    )
    report["largest_score_gap"] = float(np.max(np.abs(ours.scores_ - theirs.scores_[:, 0, :])))
    report["search_ratio"] = ours_s / theirs_s
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(args.out, report)  # atomically


if __name__ == "__main__":
    main()
