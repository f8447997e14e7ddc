"""Where a block's rows come from: its source, behind one small interface.

A source knows its rows' place in the training matrix (``start``, ``stop``) and the host call
that loads them (`BlockSource.load_call`), and says whether Dask makes its rows on a worker
first (``made_on_workers``: the runner computes that chunk where the block will live, and the
host adopts it). Three kinds:

* `RowsSource`: rows of `distrib.parallel.rows` training data: prepared ``.npy`` files
  read by path on the worker (memory-mapped), or rows held here, sent to their worker alone;
* `StreamSource`: rows of a row store (`distrib.parallel.row_store`), left on disk and
  streamed by every pass (`distrib.parallel.blocks.streamed`);
* `ChunkSource`: a chunk of a Dask array, computed on a worker (rows grown with ``--grow``,
  the estimator's Dask input) and never gathered on the driver.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dask
import numpy as np

from distrib.linear import softmax
from distrib.parallel.blocks.host import BlockHost
from distrib.parallel.row_store import RowStore
from distrib.parallel.rows import InMemoryArrays, RowsFromHere, TrainingData


@dataclass(frozen=True)
class HostCall:
    """One call of a `BlockHost` method on a host: the method itself, and its arguments."""

    method: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The method's name, as distributed's ``actor_execute`` takes it."""
        return self.method.__name__


class BlockSource(ABC):
    """Where one block's rows come from (``start:stop`` of the training matrix)."""

    start: int
    stop: int
    #: Dask makes the rows on a worker first (a chunk to compute, then adopt there).
    made_on_workers: ClassVar[bool]

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    @abstractmethod
    def load_call(self, index: int, common: dict[str, Any], chunk_key: str = "") -> HostCall:
        """The host call that loads these rows as block ``index``; ``common`` are
        `distrib.parallel.blocks.block.load_block`'s keywords every block shares,
        ``chunk_key`` the Dask key of the computed chunk (``made_on_workers`` only)."""


@dataclass(frozen=True, eq=False)
class RowsSource(BlockSource):
    """Rows ``start:stop`` of training data: files opened by path on the worker, or rows
    held here, sent to their worker alone (only these rows travel)."""

    start: int
    stop: int
    data: TrainingData
    made_on_workers: ClassVar[bool] = False

    def load_call(self, index: int, common: dict[str, Any], chunk_key: str = "") -> HostCall:
        data, start, stop = self.data, self.start, self.stop
        if isinstance(data, (InMemoryArrays, RowsFromHere)):  # only these rows travel
            data, start, stop = data.row_block(start, stop), 0, stop - start
        return HostCall(BlockHost.load, (index, data, start, stop), dict(common, offset=self.start))


@dataclass(frozen=True, eq=False)
class StreamSource(BlockSource):
    """Rows ``start:stop`` of a row store, streamed from disk by the host at every pass
    (`distrib.parallel.blocks.streamed`): the worker holds a few pieces, not the rows."""

    start: int
    stop: int
    store: RowStore
    made_on_workers: ClassVar[bool] = False

    def load_call(self, index: int, common: dict[str, Any], chunk_key: str = "") -> HostCall:
        args = (index, self.store, self.start, self.stop)
        return HostCall(BlockHost.open_stream, args, dict(common, offset=self.start))


@dataclass(frozen=True, eq=False)
class ChunkSource(BlockSource):
    """A chunk of a Dask array's rows (``chunk``: a Delayed that makes it), computed on a
    worker; ``codes`` are its rows' class indices, ``weights`` their sample weights."""

    start: int
    stop: int
    chunk: Any
    codes: np.ndarray
    weights: np.ndarray | None = None
    made_on_workers: ClassVar[bool] = True

    def load_call(self, index: int, common: dict[str, Any], chunk_key: str = "") -> HostCall:
        args = (index, chunk_key, self.codes, self.weights)
        return HostCall(BlockHost.adopt, args, dict(common, offset=self.start))


def block_bounds(n_rows: int, n_blocks: int) -> list[tuple[int, int]]:
    """``n_blocks`` (at most ``n_rows``) contiguous row ranges of near-equal size."""
    edges = np.linspace(0, n_rows, max(1, min(n_blocks, n_rows)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def rows_sources(data: TrainingData, n_blocks: int) -> list[BlockSource]:
    """``data``'s rows cut into ``n_blocks`` blocks: streamed from a row store, else
    loaded into memory."""
    bounds = block_bounds(data.shape[0], n_blocks)
    if isinstance(data, RowStore):
        return [StreamSource(a, b, data) for a, b in bounds]
    return [RowsSource(a, b, data) for a, b in bounds]


def chunk_sources(
    X: Any, codes: np.ndarray, sample_weight: np.ndarray | None = None
) -> list[BlockSource]:
    """One block per chunk of rows of the Dask array ``X``; ``codes`` are the rows' class
    indices, ``sample_weight`` their weights (sent with each chunk's load)."""
    X = X.rechunk({1: -1})
    edges = np.cumsum((0, *X.chunks[0]))
    # each chunk as its block keeps it (CSR where sparse), made where it is computed
    chunks = [dask.delayed(softmax.prepare, pure=True)(chunk) for chunk in X.to_delayed().ravel()]
    return [
        ChunkSource(
            int(a),
            int(b),
            chunk,
            np.asarray(codes[a:b]),
            None if sample_weight is None else np.asarray(sample_weight[a:b]),
        )
        for chunk, (a, b) in zip(chunks, itertools.pairwise(edges), strict=True)
    ]
