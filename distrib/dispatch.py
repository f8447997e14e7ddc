"""One binary `LogisticRegression` per class, each a joblib task.

`fit_binary_classifiers` runs under whatever joblib backend is active: the caller picks it
with ``joblib.parallel_config`` (``backend="dask"`` sends every class to the cluster's
workers; the default runs them in this process). Nothing here names a backend.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from joblib._dask import DaskDistributedBackend
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from distrib.transfer import TrainingData


@dataclass(frozen=True)
class BinaryFit:
    """The outcome of one class-versus-rest fit.

    Attributes
    ----------
    label : int
        The class fitted as positive.
    coef : ndarray of shape (n_features,)
    intercept : float
    n_iter : int
        Solver iterations (epochs for sag/saga).
    converged : bool
        False when the solver stopped at ``max_iter`` (scikit-learn's ConvergenceWarning).
    seconds : float
        Compute time of the fit on the worker (excludes loading the data).
    load_seconds : float
        Time the task spent getting its ``(X, y)`` (mapping files or aligning a copy).
    worker : str
        The Dask worker address, or ``host:pid`` outside Dask.
    started, finished : float
        Wall-clock times (``time.time()``) of the fit on the worker.
    """

    label: int
    coef: np.ndarray
    intercept: float
    n_iter: int
    converged: bool
    seconds: float
    load_seconds: float
    worker: str
    started: float
    finished: float

    def record(self) -> dict[str, Any]:
        """The fit as JSON-ready values, without the coefficients."""
        out = asdict(self)
        del out["coef"]
        return out


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _fit_binary(data: TrainingData, label: int, params: dict[str, Any]) -> BinaryFit:
    """Fit class ``label`` against the rest (a module-level function, so tasks pickle)."""
    t0 = time.perf_counter()
    X, y = data.arrays()
    target = (y == label).astype(np.int8)
    load_seconds = time.perf_counter() - t0
    started = time.time()
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(**params).fit(X, target)
    seconds = time.perf_counter() - t1
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return BinaryFit(
        label=int(label),
        coef=np.asarray(model.coef_[0], dtype=np.float64),
        intercept=float(model.intercept_[0]),
        n_iter=int(np.max(model.n_iter_)),
        converged=converged,
        seconds=seconds,
        load_seconds=load_seconds,
        worker=_worker_name(),
        started=started,
        finished=started + seconds,
    )


class ClusterBackend(DaskDistributedBackend):
    """joblib's ``dask`` backend that always dispatches to the cluster.

    joblib runs a `Parallel` call in the calling process when the backend reports one
    job, which the ``dask`` backend does for a cluster of one single-threaded worker: the
    fits would silently leave the cluster. Reporting at least two jobs keeps every class a
    task on the workers; the scheduler still runs one task per worker thread at a time.
    """

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return max(2, int(super().effective_n_jobs(n_jobs)))


def cluster_backend(client: Any, scatter: list[Any] | None = None) -> ClusterBackend:
    """The joblib backend for ``parallel_config(backend=...)`` that runs on ``client``.

    ``scatter`` objects are broadcast to every worker once, before any task runs.
    """
    return ClusterBackend(client=client, scatter=scatter)


def fit_binary_classifiers(
    data: TrainingData,
    labels: Iterable[int],
    params: dict[str, Any],
    *,
    on_fit: Callable[[BinaryFit], None] | None = None,
    timeout: float | None = None,
) -> list[BinaryFit]:
    """Fit one binary classifier per label, as parallel joblib tasks.

    Parameters
    ----------
    data : TrainingData
        Gives ``(X, y)`` inside each task.
    labels : iterable of int
        The classes; one task each (``batch_size=1``, so each class is its own Dask task).
    params : dict
        Keyword arguments of `LogisticRegression`.
    on_fit : callable, optional
        Called with each `BinaryFit` as it arrives (in completion order).
    timeout : float, optional
        Seconds any single task may take before the whole call fails.

    Returns
    -------
    list of BinaryFit
        In completion order.
    """
    labels = [int(label) for label in labels]
    tasks = (delayed(_fit_binary)(data, label, params) for label in labels)
    parallel = Parallel(
        batch_size=1, pre_dispatch="all", return_as="generator_unordered", timeout=timeout
    )
    fits = []
    for fit in parallel(tasks):
        fits.append(fit)
        if on_fit is not None:
            on_fit(fit)
    return fits
