"""Will the training rows fit in the workers' memory? Asked before any fit.

Dask workers may have a memory limit (``dask worker --memory-limit``, or ``--memory-limit``
on distrib's local cluster); past ``distributed.worker.memory.pause`` of it a worker stops
taking tasks, and its nanny kills it past ``terminate``. So each strategy's need is checked
against what a worker has left under its pause threshold:

* ``ovr``: every worker holds the whole training matrix (each binary fit reads all rows)
  and the solver's copy of it: `OVR_COPIES` times the matrix;
* ``multinomial``: a worker holds its share of the rows (its threads' share of the blocks),
  plus one chunk on its way in (the strategies say it: `distrib.parallel.strategies`).

A strategy that cannot fit is refused with the numbers and what to do instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import dask

from distrib.errors import ClusterError
from distrib.parallel.cluster import worker_infos

#: How many copies of the training matrix a one-vs-rest worker holds: the rows and the
#: solver's working copy of them.
OVR_COPIES = 2.0


class RowsOnWorkers(Protocol):
    """What a strategy puts in a worker's memory (`check_fits`)."""

    def memory_refusal(self, worker: WorkerMemory, nbytes: int, share: float) -> str | None:
        """Why ``worker`` cannot hold this strategy's rows (None if it can)."""
        ...


@dataclass(frozen=True)
class WorkerMemory:
    """One worker's memory limit, what it uses now, and its threads."""

    address: str
    limit: int  # bytes; 0: none
    used: int
    threads: int

    @property
    def available(self) -> float:
        """Bytes it can take before it pauses (inf without a limit)."""
        if not self.limit:
            return float("inf")
        pause = dask.config.get("distributed.worker.memory.pause")
        fraction = float(pause) if pause else 0.95
        return fraction * self.limit - self.used


def process_memory() -> int:
    """This process's resident memory in bytes (what dask's memory limit is held against)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def worker_memory(client: Any) -> list[WorkerMemory]:
    """The memory of each worker of ``client``'s cluster, its use measured now."""
    used = client.run(process_memory)
    return [
        WorkerMemory(
            address,
            int(info.get("memory_limit") or 0),
            int(used.get(address, 0)),
            int(info.get("nthreads", 1)),
        )
        for address, info in sorted(worker_infos(client).items())
    ]


def matrix_bytes(n_rows: int, n_features: int, density: float, layout: str) -> int:
    """Bytes of a float32 training matrix: dense, or CSR (int32 indices, int64 row ends)."""
    if layout == "dense":
        return n_rows * n_features * 4
    nonzeros = round(density * n_rows * n_features)
    return nonzeros * (4 + 4) + (n_rows + 1) * 8


def check_fits(
    workers: list[WorkerMemory], strategy: RowsOnWorkers, nbytes: int, chunk_bytes: int = 0
) -> None:
    """Refuse ``strategy`` if its rows cannot fit in some worker's memory.

    Parameters
    ----------
    workers : list of WorkerMemory
    strategy : RowsOnWorkers
        A `distrib.parallel.strategies.Strategy`: says what it needs of each worker.
    nbytes : int
        The training matrix's bytes (`matrix_bytes`).
    chunk_bytes : int
        The largest chunk of rows a worker computes before it keeps it (grown rows).

    Raises
    ------
    ClusterError
        The strategy's own words for the first worker that cannot hold its rows.
    """
    limited = [w for w in workers if w.limit]
    if not limited:
        return
    total_threads = sum(w.threads for w in workers) or 1
    for worker in limited:
        share = nbytes * worker.threads / total_threads + chunk_bytes
        refusal = strategy.memory_refusal(worker, nbytes, share)
        if refusal is not None:
            raise ClusterError(refusal)
