"""One binary logistic regression per class, in joblib tasks.

With L-BFGS and an L2 penalty (the default), each task fits a group of classes in lockstep
(`distrib.linear.binary`: one pass over the rows per evaluation for the whole group), one
group per parallel job; with other solvers each class is a task of its own, a scikit-learn
`LogisticRegression`.

`fit_binary_classifiers` runs under whatever joblib backend is active: the caller picks it
with ``joblib.parallel_config`` (``backend="dask"`` sends every class to the cluster's
workers; the default runs them in this process). Nothing here names a backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from joblib._dask import DaskDistributedBackend, _TracebackCapturingWrapper
from joblib.parallel import get_active_backend

from distrib.parallel.backup import BackupPolicy, late_tasks
from distrib.parallel.transfer import TrainingData


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
    (`distrib.linear.binary`): L-BFGS with an L2 penalty, and rows weighted alike in every
    binary problem (``class_weight="balanced"`` weighs them per problem)."""
    return (
        params.get("solver", "lbfgs") == "lbfgs"
        and float(params.get("l1_ratio") or 0.0) == 0.0
        and params.get("class_weight") != "balanced"
    )


def _fit_lockstep(
    data: TrainingData, labels: list[int], params: dict[str, Any], run_id: str | None = None
) -> list[BinaryFit]:
    """Fit classes ``labels`` against the rest together, one pass over the rows per
    evaluation for all of them (a module-level function, so tasks pickle)."""
    from distrib.linear.binary import fit_binary_lbfgs

    for label in labels:
        _announce_attempt(label, run_id, group=labels)
    t0 = time.perf_counter()
    X, y = data.arrays()
    params, sample_weight = binary_weights(y, params, data.weights(0, len(y)))
    load_seconds = time.perf_counter() - t0
    started = time.time()
    solutions = fit_binary_lbfgs(
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


class _Task:
    """One joblib batch submitted to the cluster, and its attempts' bookkeeping (its dask
    futures are those whose callback, in the backend's ``_callbacks``, is this task)."""

    def __init__(self, batch: Any, callback: Callable[[Any], None]) -> None:
        self.batch = batch
        self.callback = callback
        self.done = False
        self.backup: dict[str, Any] | None = None

    def __call__(self, result: Any) -> None:  # joblib's own ``_collect`` calls it so
        self.callback(result)


class ClusterBackend(DaskDistributedBackend):
    """joblib's ``dask`` backend, with what distrib depends on.

    * joblib runs a `Parallel` call in the calling process when the backend reports one
      job, which the ``dask`` backend does for a cluster of one single-threaded worker: the
      fits would silently leave the cluster. Reporting at least two jobs keeps every class
      a task on the workers; the scheduler still runs one task per worker thread at a time.
    * When Dask fails a task itself (``KilledWorker`` after workers died running it, a
      result that cannot be serialised), joblib 1.6's ``_collect`` sets the exception on
      its future but never calls the task's callback, and `Parallel` waits forever. Here
      the callback receives the exception, so `Parallel` raises it.
    * **Backup attempts.** A worker that stops answering without dying keeps its tasks
      (dask moves nothing off a worker it still lists). Every half second, once enough
      tasks have finished, the backend asks the scheduler where its pending tasks are and
      reads when each started (the tasks announce it, `ATTEMPT_TOPIC`); the tasks of a
      worker whose running task is late (`distrib.parallel.backup.late_tasks`) are
      submitted again on the other workers. The first attempt to finish wins, the other is
      cancelled; `backups` records each (what, where, why, which attempt won).

    The overrides read joblib's private state (`_COLLECT_STATE`); a joblib without it gets
    its own ``_collect`` back (no backups) rather than a loop that cannot work.
    """

    #: The attributes of joblib's backend that `_collect` reads (joblib 1.4-1.6).
    _COLLECT_STATE = ("waiting_futures", "_results", "_callbacks", "_continue")
    #: Seconds between two looks for late tasks.
    WATCH_INTERVAL = 0.5

    def __init__(
        self,
        *args: Any,
        log: Callable[[str], None] | None = None,
        policy: BackupPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.log = log
        self.policy = policy if policy is not None else BackupPolicy.from_config()
        #: One record per backup attempt started.
        self.backups: list[dict[str, Any]] = []
        self._started: dict[str, float] = {}  # task key -> when it announced its start
        self._finished: dict[str, float] = {}  # task key -> when its result arrived
        self._assigned: dict[str, float] = {}  # task key -> when first seen on a worker
        self._cancelling: set[asyncio.Future[Any]] = set()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return max(2, int(super().effective_n_jobs(n_jobs)))

    def submit(self, func: Any, callback: Any = None) -> Any:
        return super().submit(func, callback=_Task(func, callback))

    async def _collect(self) -> None:
        if not all(hasattr(self, name) for name in self._COLLECT_STATE):
            await super()._collect()  # a joblib whose backend changed: its own loop
            return
        watch = asyncio.ensure_future(self._watch())
        try:
            while self._continue:
                async for future, result in self.waiting_futures:
                    self._settle(future, result)
                await asyncio.sleep(0.01)
        finally:
            watch.cancel()

    def _attempts(self, task: _Task) -> list[Any]:
        return [f for f, t in self._callbacks.items() if t is task]

    def _settle(self, future: Any, result: Any) -> None:
        """A dask future finished: give its task its result, unless another attempt won
        already or may still succeed where this one failed."""
        cf_future = self._results.pop(future)
        task = self._callbacks.pop(future)
        failed = future.status != "finished"  # an error, or cancelled
        value = result[1] if failed and isinstance(result, tuple) and len(result) == 3 else result
        if failed and not isinstance(value, BaseException):
            value = CancelledError(f"dask task {future.key} was {future.status}")
        if failed:
            cf_future.set_exception(value)
        else:
            cf_future.set_result(value)
        self._finished[str(future.key)] = time.time()
        if not isinstance(task, _Task):
            task(value)
            return
        if task.done:
            return  # the attempt that lost
        others = self._attempts(task)
        if failed and others:
            return  # the other attempt may still finish
        task.done = True
        if task.backup is not None:
            task.backup["winner"] = "backup" if future.key == task.backup["key"] else "first"
            task.backup["winner_seconds"] = time.time() - task.backup["time"]
        for other in others:  # the losing attempt, still running somewhere
            lost = self._callbacks[other] = _Task(None, lambda _: None)
            lost.done = True
            cancel = asyncio.ensure_future(self.client._cancel([other]))
            self._cancelling.add(cancel)
            cancel.add_done_callback(self._cancelling.discard)
        task.callback(value)  # joblib registers a result, or the error it raises

    async def _watch(self) -> None:
        while self._continue and self.policy.enabled:
            await asyncio.sleep(self.WATCH_INTERVAL)
            try:
                await self._back_up_late_tasks()
            except asyncio.CancelledError:
                raise
            except Exception:  # a look that failed (scheduler busy or gone): the next one
                continue

    async def _back_up_late_tasks(self) -> None:
        pending = {
            str(f.key): t
            for f, t in self._callbacks.items()
            if isinstance(t, _Task) and not t.done and t.backup is None
        }
        if not pending:
            return
        if len(self._finished) >= self.policy.min_finished:  # else no deadline yet
            self._read_starts(await self.client.scheduler.events(topic=ATTEMPT_TOPIC))
        finished = [
            end - self._started[key] for key, end in self._finished.items() if key in self._started
        ]
        processing = await self.client.scheduler.processing()
        now = time.time()
        for keys in processing.values():
            for key in keys:
                self._assigned.setdefault(str(key), now)
        if self.policy.deadline(finished) is None:
            return
        late = late_tasks(
            now, self._started, finished, processing, pending, self.policy, self._assigned
        )
        late_workers = {worker for worker, _ in late.values()}
        elsewhere = [w for w in processing if w not in late_workers]
        for key, (worker, ran) in late.items():
            if elsewhere:
                await self._submit_backup(pending[key], key, worker, ran, elsewhere)

    def _read_starts(self, events: list[tuple[float, Any]]) -> None:
        for _, message in events:
            if isinstance(message, dict) and "key" in message:
                self._started.setdefault(str(message["key"]), float(message["time"]))

    async def _submit_backup(
        self, task: _Task, key: str, worker: str, ran: float, elsewhere: list[str]
    ) -> None:
        batch, tasks = await self._to_func_args(task.batch)
        backup_key = f"{key}-backup"
        future = self.client.submit(
            _TracebackCapturingWrapper(batch),
            tasks=tasks,
            key=backup_key,
            workers=elsewhere,
            allow_other_workers=False,
            **self.submit_kwargs,
        )
        self.waiting_futures.add(future)
        self._callbacks[future] = task
        self._results[future] = concurrent.futures.Future()
        task.backup = {"key": backup_key, "first": key, "late_worker": worker,
                       "ran_seconds": ran, "time": time.time()}  # fmt: skip
        self.backups.append(task.backup)
        if self.log is not None:
            self.log(
                f"{worker} has run a task for {ran:.1f} s, past "
                f"{self.policy.factor:g}x the finished tasks' median: a backup attempt "
                "started on another worker"
            )


def cluster_backend(
    client: Any, scatter: list[Any] | None = None, log: Callable[[str], None] | None = None
) -> ClusterBackend:
    """The joblib backend for ``parallel_config(backend=...)`` that runs on ``client``.

    ``scatter`` objects are broadcast to every worker once, before any task runs; ``log``
    hears of backup attempts.
    """
    return ClusterBackend(client=client, scatter=scatter, log=log)


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
    for group_fits in parallel(tasks):
        for fit in group_fits:
            fits.append(fit)
            if on_fit is not None:
                on_fit(fit)
    return fits
