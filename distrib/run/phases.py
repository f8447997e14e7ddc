"""A run's wall time as named phases that tile it, measured in one place."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Phases:
    """The run as named phases, one after another in the calling thread, timed in one place.

    The phases tile the run: each starts where the one before ended (the little work
    between two of them counts in the later one), so they add up to ``total``, the run's
    wall time. It starts at ``started`` (``time.time()`` of the process's start for the
    CLI, whose ``startup`` phase is then the interpreter, the imports and the parsing).
    Work another thread does meanwhile (starting the cluster, closing it) is no phase: the
    time this thread waits for it is.
    """

    def __init__(self, started: float | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._origin = self._mark = time.perf_counter()
        if started is not None:
            self._origin -= max(0.0, time.time() - started)
            self.seconds["startup"] = self._mark - self._origin

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        try:
            yield
        finally:  # a phase entered twice counts both times
            now = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
            self._mark = now

    def elapsed(self) -> float:
        return time.perf_counter() - self._origin

    def report(self) -> dict[str, float]:
        """Seconds per phase so far, and ``total``: the run's wall time up to now."""
        return {**self.seconds, "total": self.elapsed()}
