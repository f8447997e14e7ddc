"""A row block: rows, labels and weights that one host holds and evaluates.

`load_block` reads a block's rows from its source (on a worker, or in this process),
`block_loss_grad` evaluates one block at given coefficients, and a `BlockRunner` evaluates
all of a fit's blocks and sums them in a fixed order: `LocalBlocks` here, in this process,
or `distrib.parallel.blocks.runner.ClusterBlocks` on a Dask cluster's workers.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from distrib.errors import DataError
from distrib.linear import softmax
from distrib.linear.model import predict_codes
from distrib.linear.newton import RowSample, stride_rows
from distrib.parallel.blocks.partial_sums import PartialSum, Timing
from distrib.parallel.row_store import PassReads
from distrib.parallel.rows import Matrix, TrainingData, aligned_copy

#: The workers' event topic of block loads (`distrib.parallel.fit_events.block_loads`).
BLOCK_TOPIC = "distrib-block-load"


@dataclass(frozen=True, eq=False)
class RowBlock:
    """Rows of the training matrix as held by one worker: pixels and class indices."""

    X: Matrix
    codes: np.ndarray
    start: int
    weights: np.ndarray | None = None  # the rows' sample weights; None: each weighs 1

    @property
    def n_rows(self) -> int:
        return len(self.codes)

    def loss_grad(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> tuple[float, np.ndarray, PassReads]:
        """The rows' summed loss and gradient (`distrib.linear.softmax.loss_grad`), and
        what the pass read from disk (nothing: the rows are in memory)."""
        weights = None if class_weight is None else class_weight[self.codes]
        if self.weights is not None:
            weights = self.weights if weights is None else weights * self.weights
        loss, grad = softmax.loss_grad(self.X, self.codes, coef, intercept, weights)
        return loss, grad, PassReads()

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Each row's predicted class index."""
        return predict_codes(self.X, coef, intercept)

    def sample(self, stride: int) -> RowSample:
        """The rows whose index in the whole matrix is a multiple of ``stride``
        (`distrib.linear.newton.stride_rows`)."""
        at = stride_rows(self.start, self.n_rows, stride)
        weights = None if self.weights is None else self.weights[at]
        return RowSample(softmax.rows_at(self.X, at), self.codes[at], weights)


class Block(Protocol):
    """What a host does with a block: rows in memory (`RowBlock`) or streamed from disk
    (`distrib.parallel.blocks.streamed.StreamedBlock`)."""

    @property
    def n_rows(self) -> int: ...

    def loss_grad(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> tuple[float, np.ndarray, PassReads]: ...

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray: ...

    def sample(self, stride: int) -> RowSample: ...


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the objective over every block, and what its coordination cost.

    ``messages`` and ``message_cpu``: the replies the driver read and its CPU time spent
    sending the requests and reading the replies; ``relayed`` and ``relay_cpu``: the same
    for hosts that relayed the evaluation to others (`distrib.parallel.blocks.partial_sums`).
    """

    total: PartialSum
    messages: int = 0
    message_cpu: float = 0.0
    relayed: int = 0
    relay_cpu: float = 0.0


def log_block_load(run_id: str, key: str, offset: int, **extra: object) -> None:
    """Record a block's load in its worker's events (`BLOCK_TOPIC`); nothing outside a
    worker."""
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        worker = get_worker()
        event = {"run_id": run_id, "key": key, "start": offset, "worker": worker.address,
                 "time": time.time(), **extra}  # fmt: skip
        worker.log_event(BLOCK_TOPIC, event)


def class_codes(classes: np.ndarray, y: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Each of rows ``start:stop``'s index into the sorted ``classes`` (their labels
    ``y``); labels outside them are refused by name."""
    codes = np.searchsorted(classes, y)
    codes[codes == len(classes)] = 0
    if not np.array_equal(classes[codes], y):
        raise DataError(f"rows {start}:{stop} hold labels outside the classes {classes.tolist()}")
    return codes


def load_block(
    source: TrainingData,
    start: int,
    stop: int,
    classes: np.ndarray,
    run_id: str = "",
    offset: int | None = None,
    key: str = "",
) -> RowBlock:
    """Read rows ``start:stop`` of ``source`` into a block (on a worker, or here).

    ``classes`` are the sorted labels; the block keeps each row's index into them.
    ``offset`` is the block's first row in the whole matrix (default ``start``); ``key``
    names the block in the load event a worker records (`block_loads`).
    """
    offset = start if offset is None else offset
    log_block_load(run_id, key, offset)
    X, y = source.rows(start, stop)  # a fresh copy of just these rows
    values = X.data if sp.issparse(X) else X
    if not np.isfinite(np.sum(values, dtype=np.float64)) and not np.all(np.isfinite(values)):
        raise DataError(
            f"rows {offset}:{offset + stop - start} of X hold NaN or infinity: remove or "
            "impute them before fit"
        )
    codes = class_codes(classes, y, start, stop)
    weights = source.weights(start, stop)
    block = RowBlock(softmax.prepare(aligned_copy(X)), codes.astype(np.intp), offset, weights)
    if block.n_rows:  # compile (or load from numba's cache) the kernel for these rows now
        zeros = np.zeros((len(classes), X.shape[1]))
        softmax.loss_grad(block.X, block.codes, zeros, zeros[:, 0])
    return block


def block_loss_grad(
    block: Block,
    coef: np.ndarray,
    intercept: np.ndarray,
    class_weight: np.ndarray | None,
    worker: str = "local",
) -> PartialSum:
    """Softmax loss (summed over the block's rows) and its gradient, for one block
    (`distrib.linear.softmax.loss_grad`: one pass over the rows, products in their precision);
    ``worker`` names where it ran, in its timing."""
    started = time.time()
    t0 = time.perf_counter()
    loss, grad, reads = block.loss_grad(coef, intercept, class_weight)
    timing = Timing(worker, started, time.perf_counter() - t0, reads.bytes, reads.wait)
    return PartialSum(loss, grad, (timing,))


class BlockRunner(Protocol):
    """Evaluates every block at given coefficients and sums them in a fixed order; where
    the blocks live is its business."""

    def evaluate(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> Evaluation: ...

    def wait_loaded(self) -> None: ...

    def describe(self) -> list[dict[str, Any]]: ...

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Every row's predicted class index, in row order, where its block lives."""
        ...

    def sample(self, stride: int) -> RowSample:
        """The rows whose index is a multiple of ``stride``, in row order (the Hessian's
        sample of `distrib.linear.newton`)."""
        ...

    def release(self) -> None: ...


class LocalBlocks:
    """All rows as one block in this process (no cluster)."""

    def __init__(self, data: TrainingData, classes: np.ndarray) -> None:
        self.block = load_block(data, 0, data.shape[0], classes)

    def evaluate(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> Evaluation:
        return Evaluation(block_loss_grad(self.block, coef, intercept, class_weight))

    def describe(self) -> list[dict[str, Any]]:
        block = {"start": 0, "rows": self.block.n_rows, "worker": "local", "copies": 1}
        return [{**block, "calls": "in process"}]

    def wait_loaded(self) -> None:
        """Loaded already, in this process."""

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        return self.block.predict(coef, intercept)

    def sample(self, stride: int) -> RowSample:
        return self.block.sample(stride)

    def release(self) -> None:
        """Nothing to release: the block lives in this process."""
