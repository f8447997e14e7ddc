"""Which worker holds which block of a fit: plain state, no cluster.

A fit's blocks start on the worker slots they are dealt to (`slots_of`: one slot per worker
thread, workers interleaved); a worker that leaves loses its blocks, which move to the
live worker holding the fewest; a block lost too often ends the fit (dask's
``allowed-failures``); a worker that stops answering is given up for the rest of the fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any


def slots_of(threads: Mapping[str, int]) -> list[str]:
    """One entry per worker thread, workers interleaved (``threads``: worker -> its
    threads): where block ``i`` of a fit should live."""
    slots: list[str] = []
    for round_ in range(max(threads.values(), default=0)):
        slots += [a for a in sorted(threads) if threads[a] > round_]
    return slots


class Placement:
    """The worker of each block of a fit, how often each block lost its worker, and the
    workers given up.

    Parameters
    ----------
    n_blocks : int
    slots : sequence of str
        Block ``i`` starts on ``slots[i % len(slots)]`` (none: unplaced, ``""``, until its
        chunk is computed somewhere: `place`).
    """

    def __init__(self, n_blocks: int, slots: list[str] | None = None) -> None:
        self.workers: list[str] = [slots[i % len(slots)] if slots else "" for i in range(n_blocks)]
        #: block -> times its worker died under it
        self.losses: Counter[int] = Counter()
        #: Workers given up for this fit because they stopped answering (worker -> when,
        #: why, at which evaluation): they get no block of it again.
        self.given_up: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.workers)

    def __getitem__(self, index: int) -> str:
        """The worker of block ``index``."""
        return self.workers[index]

    def __contains__(self, worker: object) -> bool:
        """Whether ``worker`` holds a block."""
        return worker in self.workers

    def place(self, index: int, worker: str) -> None:
        """Block ``index`` is held by ``worker`` now."""
        self.workers[index] = worker

    def by_worker(self, skip: Collection[int] = ()) -> dict[str, list[int]]:
        """Worker -> its blocks (but ``skip``), in block order."""
        found: dict[str, list[int]] = {}
        for index, worker in enumerate(self.workers):
            if index not in skip:
                found.setdefault(worker, []).append(index)
        return found

    def lose(self, worker: str, allowed: int) -> tuple[list[int], int | None]:
        """``worker`` left: its blocks (each counted as lost once more), and the first of
        them lost more than ``allowed`` times, if one was (the fit cannot go on)."""
        lost = [i for i, w in enumerate(self.workers) if w == worker]
        for index in lost:
            self.losses[index] += 1
            if self.losses[index] > allowed:
                return lost, index
        return lost, None

    def reassign(self, blocks: list[int], live: list[str]) -> None:
        """Move ``blocks`` to the live worker holding the fewest of the other blocks (the
        first of ``live`` on a tie)."""
        for index in blocks:
            counts = Counter(w for i, w in enumerate(self.workers) if i not in blocks)
            self.workers[index] = min(live, key=lambda w: (counts[w], live.index(w)))

    def chunk_targets(
        self, blocks: list[int], workers: list[str], rows: Mapping[int, int]
    ) -> dict[int, str | None]:
        """Where to compute the chunks of ``blocks``: each on the worker of ``workers``
        with the fewest rows of computed chunks so far (``rows``: the row counts of every
        block made from a chunk), counting those placed here; None without a worker."""
        held = Counter({w: 0 for w in workers})
        for index, worker in enumerate(self.workers):
            if index not in blocks and worker in held and index in rows:
                held[worker] += rows[index]
        targets: dict[int, str | None] = {}
        for index in blocks:
            target = min(workers, key=lambda w: (held[w], workers.index(w))) if workers else None
            if target is not None:
                held[target] += rows[index]
            targets[index] = target
        return targets

    def give_up(self, worker: str, reason: str, evaluation: int, now: float) -> None:
        """Give ``worker`` up for the rest of the fit (it gets no block of it again)."""
        self.given_up[worker] = {
            "worker": worker,
            "time": now,
            "evaluation": evaluation,
            "why": reason,
        }
