"""One binary logistic regression per class, in joblib tasks.

With Newton-CG or L-BFGS and an L2 penalty (the default), each task fits a group of classes
in lockstep (`distrib.linear.binary`: one pass over the rows per evaluation for the whole
group), one group per parallel job; with other solvers each class is a task of its own, a
scikit-learn `LogisticRegression`.

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
from joblib.parallel import get_active_backend

from distrib.config import LOCKSTEP_SOLVERS
from distrib.parallel.rows import TrainingData


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
    passes : int or None
        Passes over the rows made by the task that fitted this class (shared by the classes
        fitted beside it, `distrib.linear.binary`); None for scikit-learn's fits.
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
    passes: int | None = None

    def record(self) -> dict[str, Any]:
        """The fit as JSON-ready values, without the coefficients."""
        out = asdict(self)
        del out["coef"]
        return out


ATTEMPT_TOPIC = "distrib-fit-attempt"


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _worker_name() -> str:
    worker = _current_worker()
    if worker is not None:
        return str(worker.address)
    return f"{socket.gethostname()}:{os.getpid()}"


def _announce_attempt(label: int, run_id: str | None, group: list[int] | None = None) -> None:
    """Tell the scheduler (event topic `ATTEMPT_TOPIC`) that this worker starts ``label``
    (in a task with the classes ``group``).

    A class whose worker dies is re-run elsewhere by Dask; these events let the driver say
    which classes ran more than once, where, and what became of the first worker.
    """
    worker = _current_worker()
    if worker is not None and run_id is not None:
        key = worker.get_current_task()  # the dask task: its backend can time it
        event = {"run_id": run_id, "label": int(label), "worker": worker.address, "key": key}
        worker.log_event(
            ATTEMPT_TOPIC, {**event, "group": group or [int(label)], "time": time.time()}
        )


def binary_weights(
    y: np.ndarray, params: dict[str, Any], sample_weight: np.ndarray | None
) -> tuple[dict[str, Any], np.ndarray | None]:
    """One binary fit's `LogisticRegression` parameters and sample weights.

    A dict ``class_weight`` (keyed by the original labels) has no meaning inside a
    class-versus-rest problem, so each row is weighted by its original class's weight in
    every binary problem (times its sample weight), and the fit gets no class weight.
    ``"balanced"`` stays what scikit-learn makes of it within each binary problem."""
    class_weight = params.get("class_weight")
    if not isinstance(class_weight, dict):
        return params, sample_weight
    by_class = np.ones(len(y))
    for label, weight in class_weight.items():
        by_class[y == label] = weight
    weights = by_class if sample_weight is None else by_class * sample_weight
    return {**params, "class_weight": None}, weights


def _fit_binary(
    data: TrainingData, label: int, params: dict[str, Any], run_id: str | None = None
) -> BinaryFit:
    """Fit class ``label`` against the rest (a module-level function, so tasks pickle)."""
    # imported here: a driver that fits no binary model (multinomial) loads no scikit-learn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    _announce_attempt(label, run_id)
    t0 = time.perf_counter()
    X, y = data.arrays()
    target = (y == label).astype(np.int8)
    params, sample_weight = binary_weights(y, params, data.weights(0, len(y)))
    load_seconds = time.perf_counter() - t0
    started = time.time()
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(**params).fit(X, target, sample_weight=sample_weight)
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


def fits_in_lockstep(params: dict[str, Any]) -> bool:
    """Whether the binary fits of ``params`` can share passes over the rows
    (`distrib.linear.binary`): L-BFGS or Newton-CG with an L2 penalty, and rows weighted
    alike in every binary problem (``class_weight="balanced"`` weighs them per problem)."""
    return (
        params.get("solver", "lbfgs") in LOCKSTEP_SOLVERS
        and float(params.get("l1_ratio") or 0.0) == 0.0
        and params.get("class_weight") != "balanced"
    )


def _fit_lockstep(
    data: TrainingData, labels: list[int], params: dict[str, Any], run_id: str | None = None
) -> list[BinaryFit]:
    """Fit classes ``labels`` against the rest together, one pass over the rows per
    evaluation for all of them (a module-level function, so tasks pickle)."""
    from distrib.linear.binary import fit_binary_lbfgs, fit_binary_newton

    for label in labels:
        _announce_attempt(label, run_id, group=labels)
    t0 = time.perf_counter()
    X, y = data.arrays()
    params, sample_weight = binary_weights(y, params, data.weights(0, len(y)))
    load_seconds = time.perf_counter() - t0
    started = time.time()
    fit = fit_binary_newton if params.get("solver") == "newton-cg" else fit_binary_lbfgs
    solutions = fit(
        X,
        y,
        labels,
        C=float(params["C"]),
        tol=float(params["tol"]),
        max_iter=int(params["max_iter"]),
        fit_intercept=bool(params.get("fit_intercept", True)),
        sample_weight=sample_weight,
    )
    worker = _worker_name()
    return [
        BinaryFit(
            label=solution.positive,
            coef=solution.coef,
            intercept=solution.intercept,
            n_iter=solution.n_iter,
            converged=solution.converged,
            seconds=solution.seconds,
            load_seconds=load_seconds,
            worker=worker,
            started=started,
            finished=started + solution.seconds,
            passes=solution.passes,
        )
        for solution in solutions
    ]


def _fit_one(
    data: TrainingData, labels: list[int], params: dict[str, Any], run_id: str | None = None
) -> list[BinaryFit]:
    """`_fit_binary` as a task of one class, shaped as `_fit_lockstep`'s."""
    (label,) = labels
    return [_fit_binary(data, label, params, run_id)]


def _task_groups(labels: list[int], together: bool) -> list[list[int]]:
    """The classes of each task: one task per class, or, where the fits share their passes
    (`fits_in_lockstep`), one group per parallel job of the active joblib backend (classes
    dealt out in turn), so that each job fits its classes together."""
    if not together:
        return [[label] for label in labels]
    backend, n_jobs = get_active_backend()
    n_groups = max(1, min(len(labels), int(backend.effective_n_jobs(n_jobs))))
    return [labels[g::n_groups] for g in range(n_groups)]


def fit_binary_classifiers(
    data: TrainingData,
    labels: Iterable[int],
    params: dict[str, Any],
    *,
    on_fit: Callable[[BinaryFit], None] | None = None,
    timeout: float | None = None,
    run_id: str | None = None,
) -> list[BinaryFit]:
    """Fit one binary classifier per label, as parallel joblib tasks.

    Parameters
    ----------
    data : TrainingData
        Gives ``(X, y)`` inside each task.
    labels : iterable of int
        The classes: a task each, or a group of them a task (`_task_groups`); each task is
        its own Dask task (``batch_size=1``).
    params : dict
        Keyword arguments of `LogisticRegression`.
    on_fit : callable, optional
        Called with each `BinaryFit` as it arrives (in completion order; a group's fits
        arrive together, in the order of their labels).
    timeout : float, optional
        Seconds any single task may take before the whole call fails.
    run_id : str, optional
        Names this call in the attempt events that tasks on Dask workers log.

    Returns
    -------
    list of BinaryFit
        In completion order.
    """
    labels = [int(label) for label in labels]
    together = fits_in_lockstep(params)
    task = _fit_lockstep if together else _fit_one
    groups = _task_groups(labels, together)
    tasks = (delayed(task)(data, group, params, run_id) for group in groups)
    parallel = Parallel(
        batch_size=1, pre_dispatch="all", return_as="generator_unordered", timeout=timeout
    )
    fits = []
    results = parallel(tasks)
    with warnings.catch_warnings():
        # where ``on_fit`` fails (e.g. a full disk), joblib cancels the other tasks and
        # advises "adjusting the input task iterator": not advice for a user of distrib
        warnings.filterwarnings("ignore", "[^\n]*tasks which were still being processed")
        try:
            for group_fits in results:
                for fit in group_fits:
                    fits.append(fit)
                    if on_fit is not None:
                        on_fit(fit)
        finally:
            results.close()  # joblib's abort of the rest, while its warning is silenced
    return fits
