"""Deadlines for workers that stop answering without dying: which running tasks are late
enough to get a backup attempt (one-vs-rest fits), and when a silent block host is given
up (multinomial fits: `silence_deadline`).

A worker that stops answering without dying (paused, a frozen VM, a swap storm, a link that
drops packets) keeps its tasks: the scheduler lists it until ``worker-ttl`` (5 minutes by
default) and dask moves nothing away from it. `late_tasks` picks, from what the driver can
see (when each task started, from the tasks' own announcements; where each pending task
is; how long the finished ones took), the tasks to run again elsewhere: those on a worker
whose running task has run longer than ``factor`` times the median of the finished tasks
(at least ``minimum`` seconds), once ``min_finished`` tasks have finished. A task queued on
such a worker behind the late one is late too: it would wait as long.

Both attempts of a task compute the same thing (the same rows, classes and settings; the
lockstep fits give a class the same bits whichever worker fits it), so the model does not
depend on which attempt wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dask
import numpy as np
from dask.utils import parse_timedelta


@dataclass(frozen=True)
class BackupPolicy:
    """When a task counts as late (dask config ``distrib.backup.*``).

    Attributes
    ----------
    factor : float
        A running task is late past this multiple of the finished tasks' median time
        (``distrib.backup.factor``, default 2).
    minimum : float
        ... and past this many seconds (``distrib.backup.minimum``, default 2 s).
    min_finished : int
        No backup before this many tasks have finished (``distrib.backup.min-finished``,
        default 2).
    enabled : bool
        ``distrib.backup.enabled`` (default True).
    """

    factor: float = 2.0
    minimum: float = 2.0
    min_finished: int = 2
    enabled: bool = True

    @classmethod
    def from_config(cls) -> BackupPolicy:
        """The policy the dask config sets (``distrib.backup.*``)."""
        minimum = parse_timedelta(dask.config.get("distrib.backup.minimum", "2s"))
        return cls(
            factor=float(dask.config.get("distrib.backup.factor", 2.0)),
            minimum=float(minimum or 0.0),
            min_finished=int(dask.config.get("distrib.backup.min-finished", 2)),
            enabled=bool(dask.config.get("distrib.backup.enabled", True)),
        )

    def deadline(self, finished_seconds: Iterable[float]) -> float | None:
        """Seconds a task may run before it is late; None while too few have finished."""
        done = list(finished_seconds)
        if not self.enabled or len(done) < max(1, self.min_finished):
            return None
        return max(self.factor * float(np.median(done)), self.minimum)


def late_tasks(
    now: float,
    started: Mapping[str, float],
    finished_seconds: Iterable[float],
    processing: Mapping[str, Iterable[str]],
    pending: Iterable[str],
    policy: BackupPolicy,
    assigned: Mapping[str, float] | None = None,
) -> dict[str, tuple[str, float]]:
    """The pending tasks to back up, each with its late worker and how long that worker's
    late task has run.

    A worker none of whose pending tasks has announced its start (cut off, or paused,
    before the announcement reached the scheduler) is timed from when its tasks were first
    seen on it (``assigned``).

    Parameters
    ----------
    now : float
        The time, on the clock of ``started``.
    started : mapping
        When each task that announced its start did (task key -> time).
    finished_seconds : iterable of float
        How long each finished task ran.
    processing : mapping
        The keys each worker holds, running or queued (the scheduler's ``processing``).
    pending : iterable
        The keys still without a result (those that matter here).
    policy : BackupPolicy
    assigned : mapping, optional
        When each key was first seen in ``processing`` (task key -> time).
    """
    deadline = policy.deadline(finished_seconds)
    if deadline is None:
        return {}
    waiting = set(pending)
    late: dict[str, tuple[str, float]] = {}
    for worker, keys in processing.items():
        mine = [k for k in keys if k in waiting]
        since = [started[k] for k in mine if k in started]
        if not since and assigned is not None:  # none of them said it started
            since = [assigned[k] for k in mine if k in assigned]
        ran = max((now - t for t in since), default=0.0)
        if ran > deadline:
            late.update({k: (worker, ran) for k in mine})
    return late


#: Evaluations to time before a silent host can be given up (the first ones set the pace).
SILENCE_AFTER_EVALUATIONS = 3


def silence_deadline(evaluation_seconds: list[float]) -> float:
    """Seconds an evaluation may wait on a host that does not answer before the fit gives
    that host up: ``factor`` times the median of the fit's evaluations so far, at least
    ``minimum`` (dask config ``distrib.silent-host.factor``, default 10, and
    ``distrib.silent-host.minimum``, default 2 s); before `SILENCE_AFTER_EVALUATIONS`
    evaluations have set the pace, ``distrib.silent-host.first`` (default 60 s), so that a
    host silent from the first evaluation on is given up too."""
    if len(evaluation_seconds) < SILENCE_AFTER_EVALUATIONS:
        first = parse_timedelta(dask.config.get("distrib.silent-host.first", "60s"))
        return float(first or 0.0)
    factor = float(dask.config.get("distrib.silent-host.factor", 10))
    minimum = parse_timedelta(dask.config.get("distrib.silent-host.minimum", "2s"))
    return max(factor * float(np.median(evaluation_seconds)), float(minimum or 0.0))


def heartbeats_stale(last_seen: float, now: float, waited: float) -> bool:
    """Whether a worker last heard from at ``last_seen`` has stopped its heartbeats, for a
    host that has not answered for ``waited`` seconds: nothing for half of that."""
    return now - last_seen > waited / 2


def silence_reason(waited: float, deadline: float, *, stale: bool) -> str:
    """Why a host that answered nothing for ``waited`` seconds is given up."""
    how = "nor its heartbeats" if stale else "though its heartbeats came"
    return f"no answer in {waited:.1f} s, {how} (deadline {deadline:.1f} s)"
