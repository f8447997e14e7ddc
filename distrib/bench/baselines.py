"""The baselines a benchmark times beside distrib, in this process on the same split:
scikit-learn's one-vs-rest (one process, and loky with as many processes as workers), its
multinomial fit, the notebook's own settings, and Apache Spark as a peer."""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from joblib import parallel_config
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from distrib.config import TrainConfig
from distrib.data.datasets import load_dataset
from distrib.data.split import SplitArrays, split_arrays
from distrib.bench.peers import spark_runs

#: Memory scikit-learn's fit in one process needs, over its training matrix (the matrix,
#: the solver's per-row arrays and numpy's temporaries), for the baseline to be run.
SKLEARN_MEMORY_FACTOR = 3.0


@dataclasses.dataclass
class BenchData:
    """The split every line of a benchmark fits: the matrix as the baselines take it (None
    for grown data, whose rows only distrib's workers make), labels and test rows."""

    parts: SplitArrays
    grown: bool
    X_dense: np.ndarray | None
    X_fit: Any  # X_dense in the chosen layout (CSR for "sparse")
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    density: float
    layout: str
    n_rows: int
    n_features: int


@dataclasses.dataclass(frozen=True)
class Timing:
    """How each line is timed, and where it reports."""

    repeat: int
    warmup: int
    say: Callable[[str], None]


def timed(
    name: str, fit: Callable[[], object], repeat: int, warmup: int, say: Callable[[str], None]
) -> dict[str, Any]:
    walls = []
    for i in range(warmup + repeat):
        started = time.perf_counter()
        fit()
        wall = time.perf_counter() - started
        label = f"warm-up {i + 1}/{warmup}" if i < warmup else f"run {i - warmup + 1}/{repeat}"
        say(f"[{name}] {label}: fit {wall:.2f} s")
        if i >= warmup:
            walls.append(wall)
    return {"walls": walls, "median_wall": float(statistics.median(walls))}


def ovr_baselines(
    config: TrainConfig,
    data: BenchData,
    counts: list[int],
    distrib_runs: dict[int, dict[str, Any]],
    timing: Timing,
) -> dict[str, Any]:
    """scikit-learn's one-vs-rest in one process and with loky (on the chosen layout and on
    the dense matrix) for each worker count, and distrib's fit over each. With ``--solver
    auto`` scikit-learn runs its own default, lbfgs (what its users run), not its newton-cg
    (distrib's ``auto`` is a Newton-CG of its own)."""
    params = config.estimator_params()
    if config.solver == "auto":
        params["solver"] = "lbfgs"
    X_fit, y_train = data.X_fit, data.y_train

    def serial_fit() -> None:  # scikit-learn's one-vs-rest, one class after another
        with parallel_config(backend="sequential"):
            OneVsRestClassifier(LogisticRegression(**params)).fit(X_fit, y_train)

    serial = timed(
        "scikit-learn OneVsRestClassifier, one process",
        serial_fit,
        timing.repeat,
        timing.warmup,
        timing.say,
    )
    variants: dict[str, Any] = {data.layout: X_fit, "dense": data.X_dense}
    loky: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for k in counts:
        for name, X in variants.items():

            def loky_fit(X: Any = X, k: int = k) -> None:
                with parallel_config(backend="loky"):
                    ovr = OneVsRestClassifier(LogisticRegression(**params), n_jobs=k)
                    ovr.fit(X, y_train)

            loky[name][str(k)] = timed(
                f"loky OneVsRestClassifier n_jobs={k}, {name}",
                loky_fit,
                timing.repeat,
                timing.warmup,
                timing.say,
            )
    fit_vs_loky = {
        str(k): {
            name: loky[name][str(k)]["median_wall"] / distrib_runs[k]["median_fit"]
            for name in loky
            if str(k) in loky[name]
        }
        for k in counts
    }
    return {"serial": serial, "loky": loky, "fit_vs_loky": fit_vs_loky,
            "sklearn_ovr_solver": params["solver"]}  # fmt: skip


def spark_lines(
    config: TrainConfig, data: BenchData, counts: list[int], say: Callable[[str], None]
) -> dict[str, Any]:
    """Apache Spark's `LogisticRegression` on ``local[k]`` for each worker count."""
    spark: dict[str, Any] = {}
    for k in counts:
        with tempfile.TemporaryDirectory(prefix="distrib-spark-") as scratch:
            spark[str(k)] = spark_runs(
                data.X_fit,
                data.y_train,
                data.X_test,
                data.y_test,
                C=config.C,
                max_iter=config.max_iter,
                cores=k,
                scratch=Path(scratch),
                log=say,
            )
    return spark


def _sklearn_multinomial(
    X: Any,
    y: np.ndarray,
    X_test: Any,
    y_test: np.ndarray,
    config: TrainConfig,
    repeat: int,
    warmup: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """scikit-learn's multinomial lbfgs in this process: the reference for the multinomial
    strategy (same matrix, C, tol and max_iter)."""
    params = {
        "C": config.C,
        "tol": config.tol,
        "max_iter": config.max_iter,
        "fit_intercept": config.fit_intercept,
        "class_weight": config.class_weight,
    }
    fitted: list[LogisticRegression] = []

    def fit() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted.append(LogisticRegression(**params).fit(X, y))

    timing = timed("scikit-learn multinomial lbfgs, one process", fit, repeat, warmup, say)
    model = fitted[-1]
    return {
        **timing,
        "settings": params,
        "n_iter": int(np.max(model.n_iter_)),
        "test_accuracy": float(model.score(X_test, y_test)),
    }


def multinomial_baselines(
    config: TrainConfig,
    data: BenchData,
    multinomial: dict[int, dict[str, Any]],
    timing: Timing,
    estimators: bool,
    matrix_nbytes: int,
) -> dict[str, Any]:
    """scikit-learn's multinomial fit in one process on the same matrix (made here for
    grown data, where memory allows), and the estimator's lines over it."""
    report: dict[str, Any] = {}
    say = timing.say
    X_test_fit = sp.csr_matrix(data.X_test) if data.layout == "sparse" else data.X_test
    X_fit = data.X_fit
    if X_fit is None:
        X_fit = _matrix_here(data.parts.X_train, data.layout, matrix_nbytes, say)
    if X_fit is not None:
        reference = _sklearn_multinomial(
            X_fit, data.y_train, X_test_fit, data.y_test, config, timing.repeat, timing.warmup, say
        )
        reference["fit_over_sklearn"] = {
            str(k): r["median_fit"] / reference["median_wall"] for k, r in multinomial.items()
        }
        report["sklearn_multinomial"] = reference
    if estimators and data.X_dense is not None:
        # The estimator on each input against scikit-learn on that same matrix (a Dask
        # array is the dense matrix, chunked).
        on_dense = reference
        if data.layout == "sparse":
            on_dense = _sklearn_multinomial(
                data.X_dense,
                data.y_train,
                data.X_test,
                data.y_test,
                config,
                timing.repeat,
                timing.warmup,
                say,
            )
        references = {"numpy": on_dense, "csr": reference, "dask": on_dense}
        report["sklearn_multinomial_dense"] = on_dense
        report["estimator_over_sklearn"] = {
            str(k): {
                name: e["median_fit"] / references[name]["median_wall"]
                for name, e in r.get("estimator", {}).items()
            }
            for k, r in multinomial.items()
        }
    return report


def _matrix_here(X: Any, layout: str, nbytes: int, say: Callable[[str], None]) -> Any:
    """The (grown) training matrix in this process for scikit-learn's fit, made a chunk at
    a time; None where this machine's free memory cannot hold it and the fit."""
    import psutil

    free = psutil.virtual_memory().available
    if SKLEARN_MEMORY_FACTOR * nbytes > free:
        say(
            f"scikit-learn's baseline skipped: it needs ~{SKLEARN_MEMORY_FACTOR * nbytes / 1e9:.1f}"
            f" GB, {free / 1e9:.1f} GB free"
        )
        return None
    say("making the grown matrix here for scikit-learn, a chunk at a time")
    X = X.rechunk({1: -1})
    blocks = []
    for chunk in X.to_delayed().ravel():
        block = np.asarray(chunk.compute(scheduler="threads"))
        blocks.append(sp.csr_matrix(block) if layout == "sparse" else block)
    return sp.vstack(blocks, format="csr") if layout == "sparse" else np.concatenate(blocks)


def _notebook_baseline(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    dataset: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The notebook's settings (one multinomial fit, raw pixels) in this process, once."""
    preset = TrainConfig.from_preset("notebook", dataset=dataset)
    params = preset.estimator_params()
    say(f"[notebook settings] fitting {params} on raw pixels in one process (minutes) ...")
    started = time.perf_counter()
    model = LogisticRegression(**params).fit(X_train, y_train)
    wall = time.perf_counter() - started
    accuracy = float(model.score(X_test, y_test))
    say(f"[notebook settings] fit {wall:.1f} s, test accuracy {accuracy:.4f}")
    return {
        "settings": params,
        "scale": preset.scale,
        "walls": [wall],
        "median_wall": wall,
        "n_iter": int(np.max(model.n_iter_)),
        "test_accuracy": accuracy,
    }


def notebook_line(
    config: TrainConfig,
    data: BenchData,
    home: str | os.PathLike[str] | None,
    distrib_runs: dict[int, dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The notebook's own settings on raw pixels in one process, over distrib's wall."""
    raw = split_arrays(load_dataset(config.dataset, home), config.split, "raw")
    X_raw, X_raw_test = raw.local("X_train", "X_test")
    line = _notebook_baseline(
        X_raw.astype(np.float64),
        data.y_train,
        X_raw_test.astype(np.float64),
        data.y_test,
        config.dataset,
        say,
    )
    line["over_distrib_wall"] = {
        str(k): line["median_wall"] / r["median_wall"] for k, r in distrib_runs.items()
    }
    return line
