"""joblib's dask backend as distrib uses it: every private piece of joblib distrib relies
on is here, and only here, checked against the joblib installed.

`ClusterBackend` reads joblib's private backend state (`JOBLIB_INTERNALS`) to give each
one-vs-rest task backup attempts. joblib does not promise that state across releases, so
pyproject pins the joblib releases it was tested with (`TESTED_JOBLIB`), and a joblib that
lacks any of it is refused with an error that names the fix (`check_joblib`), never run
without backups in silence. `active_dask_client` answers, for the rest of the package,
whether the caller chose joblib's dask backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import joblib
from joblib._dask import DaskDistributedBackend, _TracebackCapturingWrapper
from joblib.parallel import get_active_backend

from distrib.errors import ClusterError
from distrib.parallel.deadlines import BackupPolicy, late_tasks
from distrib.parallel.dispatch import ATTEMPT_TOPIC

#: The joblib releases `ClusterBackend` was tested with (pyproject pins the same range).
TESTED_JOBLIB = ">=1.4,<1.7"

#: What `ClusterBackend` uses of joblib's private dask backend: instance state set by its
#: ``__init__``, state set when a `Parallel` call starts, and methods.
JOBLIB_INTERNALS = {
    "state at init": ("waiting_futures", "_results", "_callbacks", "submit_kwargs"),
    "state at start_call": ("_continue",),
    "methods": ("_collect", "_to_func_args", "start_call"),
}


def missing_joblib_internals(backend: Any) -> list[str]:
    """The names of `JOBLIB_INTERNALS` that ``backend`` (a `DaskDistributedBackend` just
    made) or its class lacks; empty where joblib has everything `ClusterBackend` reads."""
    missing = [n for n in JOBLIB_INTERNALS["state at init"] if not hasattr(backend, n)]
    missing += [n for n in JOBLIB_INTERNALS["methods"] if not hasattr(type(backend), n)]
    if not asyncio.iscoroutinefunction(getattr(type(backend), "_collect", None)):
        missing.append("_collect (a coroutine)")
    return missing


def check_joblib(backend: Any) -> None:
    """Refuse a joblib whose dask backend lacks what `ClusterBackend` reads.

    Raises
    ------
    ClusterError
        Naming what is missing, the joblib installed and the releases that work.
    """
    missing = missing_joblib_internals(backend)
    if missing:
        raise ClusterError(
            f"joblib {joblib.__version__}'s dask backend lacks {', '.join(missing)}, which "
            f"distrib's one-vs-rest backup attempts read: install a tested joblib "
            f"(pip install 'joblib{TESTED_JOBLIB}')"
        )


def active_dask_client() -> Any:
    """The Dask client of the caller's joblib backend, if the caller chose joblib's dask
    backend (``parallel_config(backend="dask")`` or a `ClusterBackend`); else None."""
    active, _ = get_active_backend()
    return active.client if isinstance(active, DaskDistributedBackend) else None


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
      worker whose running task is late (`distrib.parallel.deadlines.late_tasks`) are
      submitted again on the other workers. The first attempt to finish wins, the other is
      cancelled; `backups` records each (what, where, why, which attempt won).

    The overrides read joblib's private state (`JOBLIB_INTERNALS`); a joblib without it is
    refused when the backend is made (`check_joblib`).
    """

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
        check_joblib(self)
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
