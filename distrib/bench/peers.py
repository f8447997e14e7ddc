"""Apache Spark's `LogisticRegression` as a peer of `distrib bench` (``--peers spark``).

What a user choosing a tool for distributed logistic regression would also try:
``pyspark.ml.classification.LogisticRegression`` (multinomial, L-BFGS, tree aggregation) on
``local[k]``, reading the training rows from a LIBSVM file written from the same split. Two
lines:

* ``same objective``: ``regParam = 1 / (C * n_train)``, ``elasticNetParam = 0``,
  ``standardization = False``, ``maxIter = max_iter`` (scikit-learn's and distrib's
  objective, in Spark's mean-loss convention);
* ``spark defaults``: the same penalty with Spark's default standardization.

Each line: the wall time of the fit (the session and the reading of the rows timed apart),
the iterations, the test accuracy on the same split; and the time it takes to reach
``target`` test accuracy (``maxIter`` stepped until it does, or reported as not reached at
the cap). Needs the ``spark`` extra (``pip install -e ".[spark]"``) and Java.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distrib.errors import ConfigError

#: The two lines fitted: name -> Spark's ``standardization``.
LINES = {"same objective": False, "spark defaults": True}
#: maxIter values tried, in turn, to reach the target accuracy.
ITERATION_STEPS = (10, 20, 40, 80, 160, 320)
#: The test accuracy whose time the bench reports for every solver and peer: the notebook's
#: on MNIST (0.919), rounded down.
TARGET_ACCURACY = 0.918


def check_spark() -> None:
    """Refuse ``--peers spark`` where pyspark or Java is missing, naming the fix."""
    if importlib.util.find_spec("pyspark") is None:
        raise ConfigError('--peers spark needs pyspark: pip install -e ".[spark]"')
    if shutil.which("java") is None:
        raise ConfigError("--peers spark needs Java (17 or newer) on the PATH")


def _write_libsvm(X: Any, y: np.ndarray, path: Path) -> None:
    from sklearn.datasets import dump_svmlight_file

    dump_svmlight_file(sp.csr_matrix(X), y, str(path), zero_based=False)  # LIBSVM: one-based


def time_to_target(
    fit: Callable[[int], dict[str, Any]],
    steps: Sequence[int] = ITERATION_STEPS,
    target: float = TARGET_ACCURACY,
) -> dict[str, Any]:
    """Fits with their iteration cap stepped through ``steps`` until one reaches ``target``
    test accuracy: each step (``fit(cap)``: a dict with the fit's ``wall`` seconds and its
    ``test_accuracy``), and the wall time and cap (``max_iter``) of the first that does."""
    reached: dict[str, Any] = {"target": target, "reached": False, "steps": []}
    for iterations in steps:
        step = fit(iterations)
        reached["steps"].append(step)
        if step["test_accuracy"] >= target:
            reached.update(reached=True, wall=step["wall"], max_iter=iterations)
            break
    return reached


def _session(builder_of: Any, cores: int) -> Any:
    """A local Spark session on ``cores`` cores, without its web UI or console progress."""
    return (
        builder_of.builder.master(f"local[{cores}]")
        .appName("distrib-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )


def _reached(line: dict[str, Any], target: float) -> str:
    """How long a line took to reach the ``target`` accuracy, or that it did not."""
    if line["reached"]:
        return f"test accuracy {target} reached in {line['wall']:.2f} s (maxIter {line['max_iter']})"
    return f"test accuracy {target} not reached by maxIter {ITERATION_STEPS[-1]}"


def _fit_line(
    estimator_of: Any,
    train: Any,
    test: Any,
    accuracy: Any,
    reg: float,
    iterations: int,
    standardization: bool,
) -> dict[str, Any]:
    """One Spark fit on ``train`` (``iterations`` at most): its wall time, iterations and
    test accuracy."""
    estimator = estimator_of(
        regParam=reg,
        elasticNetParam=0.0,
        standardization=standardization,
        maxIter=iterations,
        family="multinomial",
    )
    t0 = time.perf_counter()
    model = estimator.fit(train)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "max_iter": iterations,
        "iterations": int(model.summary.totalIterations),
        "test_accuracy": float(accuracy.evaluate(model.transform(test))),
    }


def spark_runs(
    X_train: Any,
    y_train: np.ndarray,
    X_test: Any,
    y_test: np.ndarray,
    *,
    C: float,
    max_iter: int,
    cores: int,
    scratch: Path,
    target: float = TARGET_ACCURACY,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Spark's fits of the same split on ``local[cores]``; see the module docstring."""
    with warnings.catch_warnings():  # pyspark's about the pandas it does not use here
        warnings.simplefilter("ignore", FutureWarning)
        from pyspark.ml.classification import LogisticRegression
        from pyspark.ml.evaluation import MulticlassClassificationEvaluator
        from pyspark.sql import SparkSession

    say = log or (lambda _message: None)
    train_path, test_path = scratch / "train.libsvm", scratch / "test.libsvm"
    _write_libsvm(X_train, y_train, train_path)
    _write_libsvm(X_test, y_test, test_path)
    n_features = int(X_train.shape[1])
    started = time.perf_counter()
    spark = _session(SparkSession, cores)
    spark.sparkContext.setLogLevel("ERROR")
    session = time.perf_counter() - started
    try:
        started = time.perf_counter()
        reader = spark.read.format("libsvm").option("numFeatures", n_features)
        train = reader.load(str(train_path)).repartition(cores).cache()
        test = reader.load(str(test_path)).cache()
        train.count(), test.count()
        read = time.perf_counter() - started
        accuracy = MulticlassClassificationEvaluator(metricName="accuracy")
        reg = 1.0 / (C * len(y_train))

        fit = functools.partial(_fit_line, LogisticRegression, train, test, accuracy, reg)

        lines: dict[str, Any] = {}
        for name, standardization in LINES.items():
            fit(max_iter, standardization)  # warm-up: Spark compiles its plans on first use
            lines[name] = fit(max_iter, standardization)
            say(
                f"[spark local[{cores}], {name}] {lines[name]['wall']:.2f} s, "
                f"{lines[name]['iterations']} iterations, test {lines[name]['test_accuracy']:.4f}"
            )
        reached = {
            name: time_to_target(
                functools.partial(fit, standardization=standardization), target=target
            )
            for name, standardization in LINES.items()
        }
        for name, line in reached.items():
            say(f"[spark local[{cores}], {name}] {_reached(line, target)}")
        import pyspark

        return {
            "cores": cores,
            "version": pyspark.__version__,
            "session_seconds": session,
            "read_seconds": read,
            "reg_param": reg,
            "lines": lines,
            "time_to_target": reached,
        }
    finally:
        spark.stop()
