"""Data-parallel multinomial (softmax) logistic regression.

The other way to distribute the same model (issue 8). One-vs-rest sends whole problems to
workers: it cannot use more workers than classes, and every worker holds the whole matrix.
Here the training rows are cut into blocks, one per worker thread; each block is loaded once
onto its worker and kept there as a Dask future (no worker holds more than its rows). Each
evaluation of the objective sends the current coefficients to every block; the worker returns
its block's softmax loss and gradient; the driver sums them, adds the L2 term, and SciPy's
L-BFGS takes the step, with scikit-learn's options and its ``C`` convention::

    mean_i w_i * (logsumexp(z_i) - z_i[y_i]) + ||coef||^2 / (2 * C * sum_i w_i)

(``w_i``: class weights, else 1; the intercept is not penalised). The optimum is scikit-learn's
``LogisticRegression(solver="lbfgs")`` multinomial fit. Two classes are fitted as the
equivalent binomial problem (one row, as scikit-learn does).

Blocks are Dask tasks that read their rows from their source: the prepared files opened by
path (`distrib.transfer.ArrayFiles`), or a slice of an in-memory matrix carried in the task
itself. When a worker dies, Dask recomputes its blocks from that source on another worker and
the pending evaluation runs there: the fit continues on the same path, to the same model.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.optimize
from threadpoolctl import threadpool_limits

from distrib.errors import DataError
from distrib.transfer import InMemoryArrays, Matrix, TrainingData, aligned_copy

BLOCK_TOPIC = "distrib-block-load"


@dataclass(frozen=True, eq=False)
class RowBlock:
    """Rows of the training matrix as held by one worker: pixels and class indices.

    The pixels are kept as consecutive parts of at most `PART_ROWS` rows, so that sums over
    rows in the data's own precision (float32) stay short; the parts are added in float64.
    """

    parts: tuple[Matrix, ...]
    codes: np.ndarray
    start: int

    @property
    def n_rows(self) -> int:
        return len(self.codes)


# Rows per part of a block: float32 sums over at most this many rows lose at most
# ~PART_ROWS * 6e-8 of their relative precision; whole blocks of 30,000 rows lost ~2e-3.
PART_ROWS = 2048


@dataclass(frozen=True)
class BlockResult:
    """One block's share of one objective evaluation."""

    loss: float
    grad: np.ndarray  # (n_classes, n_features + 1): coefficients, then the intercept
    seconds: float
    worker: str
    started: float


def _worker_address() -> str:
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        return str(get_worker().address)
    return "local"


def load_block(
    source: TrainingData,
    start: int,
    stop: int,
    classes: np.ndarray,
    run_id: str = "",
    offset: int | None = None,
) -> RowBlock:
    """Read rows ``start:stop`` of ``source`` into a block (a task on a worker).

    ``classes`` are the sorted labels; the block keeps each row's index into them.
    ``offset`` is the block's first row in the whole matrix (default ``start``).
    """
    offset = start if offset is None else offset
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(
            BLOCK_TOPIC,
            {
                "run_id": run_id,
                "key": str(worker.get_current_task()),
                "start": offset,
                "worker": worker.address,
                "time": time.time(),
            },
        )
    # Part by part: the block never exists a second time as one matrix (peak memory).
    pieces = [source.rows(a, min(a + PART_ROWS, stop)) for a in range(start, stop, PART_ROWS)]
    parts = tuple(aligned_copy(X) for X, _ in pieces)
    y = np.concatenate([labels for _, labels in pieces]) if pieces else np.empty(0)
    codes = np.searchsorted(classes, y)
    codes[codes == len(classes)] = 0
    if not np.array_equal(classes[codes], y):
        raise DataError(f"rows {start}:{stop} hold labels outside the classes {classes.tolist()}")
    return RowBlock(parts, codes.astype(np.intp), offset)


def block_loss_grad(
    block: RowBlock,
    coef: np.ndarray,
    intercept: np.ndarray,
    class_weight: np.ndarray | None,
) -> BlockResult:
    """Softmax loss (summed over the block's rows) and its gradient, for one block.

    The two products with ``X`` run in ``X``'s precision (float32 for prepared data: half
    the bytes to read), part by part; the parts and everything else are summed in float64.
    """
    started = time.time()
    t0 = time.perf_counter()
    parts, codes = block.parts, block.codes
    if not parts:  # an empty chunk of a Dask array
        grad = np.zeros((coef.shape[0], coef.shape[1] + 1))
        return BlockResult(0.0, grad, time.perf_counter() - t0, _worker_address(), started)
    dtype = parts[0].dtype
    rows = np.arange(len(codes))
    weights_t = coef.T.astype(dtype)
    scores = np.vstack([np.asarray(part @ weights_t, dtype=np.float64) for part in parts])
    scores += intercept
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=(expd := np.empty_like(scores)))
    total = expd.sum(axis=1)
    point_loss = np.log(total) - scores[rows, codes]
    residual = expd / total[:, None]
    residual[rows, codes] -= 1.0
    if class_weight is not None:
        weights = class_weight[codes]
        point_loss *= weights
        residual *= weights[:, None]
    grad = np.zeros((coef.shape[0], coef.shape[1] + 1))
    low_precision = residual.astype(dtype)
    for part, first in zip(parts, range(0, len(codes), PART_ROWS), strict=True):
        chunk = low_precision[first : first + part.shape[0]]
        grad[:, :-1] += np.asarray(part.T @ chunk, dtype=np.float64).T
    grad[:, -1] = residual.sum(axis=0)
    return BlockResult(
        loss=float(point_loss.sum()),
        grad=grad,
        seconds=time.perf_counter() - t0,
        worker=_worker_address(),
        started=started,
    )


class BlockRunner(Protocol):
    """Evaluates every block at given coefficients; where the blocks live is its business."""

    def evaluate(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> list[BlockResult]: ...

    def wait_loaded(self) -> None: ...

    def describe(self) -> list[dict[str, Any]]: ...

    def release(self) -> None: ...


class LocalBlocks:
    """All rows as one block in this process (no cluster)."""

    def __init__(self, data: TrainingData, classes: np.ndarray) -> None:
        self.block = load_block(data, 0, data.shape[0], classes)

    def evaluate(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> list[BlockResult]:
        return [block_loss_grad(self.block, coef, intercept, class_weight)]

    def describe(self) -> list[dict[str, Any]]:
        return [{"start": 0, "rows": self.block.n_rows, "worker": "local", "copies": 1}]

    def wait_loaded(self) -> None:
        """Loaded already, in this process."""

    def release(self) -> None:
        """Nothing to release: the block lives in this process."""


def _block_from_rows(
    X: Matrix, codes: np.ndarray, start: int, classes: np.ndarray, run_id: str
) -> RowBlock:
    """A block from rows already computed on the worker (a chunk of a Dask array)."""
    return load_block(InMemoryArrays(X, classes[codes]), 0, len(codes), classes, run_id, start)


def _block_bounds(n_rows: int, n_blocks: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n_rows, max(1, min(n_blocks, n_rows)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def worker_slots(client: Any) -> list[str]:
    """One entry per worker thread, workers interleaved: where block ``i`` should live.

    Empty if the cluster has no worker yet; the blocks are then placed by Dask.
    """
    from distrib.cluster import worker_infos

    workers = worker_infos(client)
    threads = {address: int(info.get("nthreads", 1)) for address, info in workers.items()}
    slots: list[str] = []
    for round_ in range(max(threads.values(), default=0)):
        slots += [a for a in sorted(threads) if threads[a] > round_]
    return slots


def _wait_all(client: Any, futures: list[Any], timeout: float | None) -> None:
    """`distributed.wait` on ``client``'s futures (it otherwise asks for the default client)."""
    from distributed import wait

    with client.as_current():
        wait(futures, timeout=timeout)


def _placement(home: str | None) -> dict[str, Any]:
    """Ask for ``home`` but let any worker take over (it may die); nothing if unknown."""
    return {"workers": [home], "allow_other_workers": True} if home else {}


@contextlib.contextmanager
def _quiet_large_graph() -> Iterator[None]:
    """Blocks sent by value travel in their task on purpose: that is what lets Dask
    recompute them after a worker dies (scattered data would be lost with the worker)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ll]arge (object|graph).*")
        yield


class ClusterBlocks:
    """Row blocks held by the workers of a Dask cluster (futures of `RowBlock`).

    Build it with `from_training_data` or `from_dask_array`.

    Parameters
    ----------
    client : distributed.Client
    futures : list of Future
        One `RowBlock` each, in row order.
    bounds : list of (int, int)
        Each block's rows in the whole matrix.
    run_id : str
        Names this fit in task keys and block-load events.
    timeout : float, optional
        Seconds one evaluation may take before the fit fails.
    homes : list of str or None
        The worker each block was placed on. Evaluations of a block are asked to run there
        (a loose restriction: if that worker dies they run wherever Dask recomputed the block);
        it also keeps Dask's work stealing from copying blocks to other workers.
    """

    def __init__(
        self,
        client: Any,
        futures: list[Any],
        bounds: list[tuple[int, int]],
        run_id: str,
        timeout: float | None = None,
        homes: list[str | None] | None = None,
    ) -> None:
        self.client = client
        self.futures = futures
        self.bounds = bounds
        self.homes = homes or [None] * len(futures)
        self.run_id = run_id
        self.timeout = timeout
        self._evaluations = 0

    @classmethod
    def from_training_data(
        cls,
        client: Any,
        data: TrainingData,
        classes: np.ndarray,
        *,
        n_blocks: int | None = None,
        run_id: str = "",
        timeout: float | None = None,
    ) -> ClusterBlocks:
        """One block per worker thread (or ``n_blocks``), block ``i`` placed on the
        ``i``-th thread's worker (other workers may take it over if that one dies).

        `distrib.transfer.ArrayFiles` are read by path on the workers; in-memory arrays are
        cut here and each block travels in its own task.
        """
        run_id = run_id or uuid.uuid4().hex
        slots = worker_slots(client)
        bounds = _block_bounds(data.shape[0], n_blocks or len(slots) or 1)
        futures = []
        homes: list[str | None] = [
            slots[i % len(slots)] if slots else None for i in range(len(bounds))
        ]
        with _quiet_large_graph():
            for i, (start, stop) in enumerate(bounds):
                if isinstance(data, InMemoryArrays):
                    args: tuple[Any, ...] = (data.row_block(start, stop), 0, stop - start)
                else:
                    args = (data, start, stop)
                futures.append(
                    client.submit(
                        load_block,
                        *args,
                        classes,
                        run_id,
                        start,
                        key=f"distrib-rows-{run_id}-{i}",
                        **_placement(homes[i]),
                    )
                )
        return cls(client, futures, bounds, run_id, timeout, homes)

    @classmethod
    def from_dask_array(
        cls,
        client: Any,
        X: Any,
        codes: np.ndarray,
        classes: np.ndarray,
        *,
        run_id: str = "",
        timeout: float | None = None,
    ) -> ClusterBlocks:
        """One block per chunk of rows of the Dask array ``X``, computed on the workers.

        ``codes`` are the rows' class indices (0 .. n_classes - 1).
        """
        import dask

        run_id = run_id or uuid.uuid4().hex
        X = X.rechunk({1: -1})
        edges = np.cumsum((0, *X.chunks[0]))
        bounds = [(int(a), int(b)) for a, b in itertools.pairwise(edges)]
        make = dask.delayed(_block_from_rows, pure=True)
        chunks = X.to_delayed().ravel()
        blocks = [
            make(chunk, codes[a:b], a, classes, run_id, dask_key_name=f"distrib-rows-{run_id}-{i}")
            for i, (chunk, (a, b)) in enumerate(zip(chunks, bounds, strict=True))
        ]
        futures = list(client.compute(blocks))
        _wait_all(client, futures, timeout)
        holders = client.who_has(futures)
        homes = [next(iter(sorted(holders.get(f.key, ()))), None) for f in futures]
        return cls(client, futures, bounds, run_id, timeout, homes)

    def wait_loaded(self) -> None:
        """Block until every block is in worker memory (raises a load error here)."""
        _wait_all(self.client, self.futures, self.timeout)
        for future in self.futures:
            if future.status == "error":
                future.result()

    def evaluate(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> list[BlockResult]:
        self._evaluations += 1
        tasks = [
            self.client.submit(
                block_loss_grad,
                block,
                coef,
                intercept,
                class_weight,
                key=f"distrib-softmax-{self.run_id}-{self._evaluations}-{i}",
                **_placement(home),
            )
            for i, (block, home) in enumerate(zip(self.futures, self.homes, strict=True))
        ]
        _wait_all(self.client, tasks, self.timeout)
        results: list[BlockResult] = self.client.gather(tasks)
        return results

    def describe(self) -> list[dict[str, Any]]:
        holders = self.client.who_has(self.futures)
        described = []
        for f, (start, stop) in zip(self.futures, self.bounds, strict=True):
            held_by = sorted(holders.get(f.key, ()))
            described.append(
                {
                    "key": str(f.key),
                    "start": start,
                    "rows": stop - start,
                    "worker": held_by[0] if held_by else "",
                    "copies": len(held_by),
                }
            )
        return described

    def release(self) -> None:
        """Drop the blocks from the workers' memory."""
        with contextlib.suppress(Exception):
            self.client.cancel(self.futures)
        self.futures = []


@dataclass
class SoftmaxFit:
    """A finished multinomial fit, and how its time was spent."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    n_evaluations: int
    converged: bool
    message: str
    seconds: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """JSON-ready summary: iterations, evaluations, where the time went."""
        walls = np.array([e["wall"] for e in self.evaluations] or [0.0])
        compute = np.array([e["compute_max"] for e in self.evaluations] or [0.0])
        total = np.array([e["compute_sum"] for e in self.evaluations] or [0.0])
        return {
            "strategy": "multinomial",
            "n_iter": self.n_iter,
            "n_evaluations": self.n_evaluations,
            "converged": self.converged,
            "message": self.message,
            "seconds": self.seconds,
            "median_evaluation_seconds": float(np.median(walls)),
            "median_block_compute_seconds": float(np.median(compute)),
            "median_compute_seconds_all_blocks": float(np.median(total)),
            "median_coordination_seconds": float(np.median(walls - compute)),
            "per_evaluation": {
                "loss": [e["loss"] for e in self.evaluations],
                "seconds": walls.tolist() if self.evaluations else [],
                "slowest_block_seconds": compute.tolist() if self.evaluations else [],
            },
        }


def _minimize(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    size: int,
    tol: float,
    max_iter: int,
    callback: Callable[[scipy.optimize.OptimizeResult], None],
) -> scipy.optimize.OptimizeResult:
    """L-BFGS from zero with scikit-learn's options for `LogisticRegression` (1.9)."""
    return scipy.optimize.minimize(
        objective,
        np.zeros(size),
        method="L-BFGS-B",
        jac=True,
        options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
        callback=callback,
    )


def balanced_weights(codes_count: np.ndarray) -> np.ndarray:
    """scikit-learn's ``class_weight="balanced"``: n_samples / (n_classes * count)."""
    return codes_count.sum() / (len(codes_count) * codes_count.astype(np.float64))


def fit_softmax(
    runner: BlockRunner,
    *,
    n_features: int,
    class_counts: np.ndarray,
    C: float,
    tol: float,
    max_iter: int,
    fit_intercept: bool = True,
    class_weight: str | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
) -> SoftmaxFit:
    """Minimise the multinomial objective over the runner's blocks with L-BFGS.

    Parameters
    ----------
    runner : BlockRunner
        Gives every block's loss and gradient at given coefficients.
    n_features : int
    class_counts : ndarray of shape (n_classes,)
        Rows per class (for the class weights and the sample count).
    C, tol, max_iter, fit_intercept, class_weight
        As in `sklearn.linear_model.LogisticRegression`.
    on_iteration : callable, optional
        Called after each L-BFGS iteration with its number and the objective value.

    Returns
    -------
    SoftmaxFit
        ``coef`` of shape (n_classes, n_features), ``intercept`` (n_classes,), or a single
        row for two classes (the binomial model).
    """
    n_classes = len(class_counts)
    binary = n_classes == 2
    weights = balanced_weights(class_counts) if class_weight == "balanced" else None
    weight_sum = float(class_counts @ weights) if weights is not None else float(class_counts.sum())
    # Two classes: the softmax over two rows with C/2 is the binomial problem with C.
    penalty = (2.0 if binary else 1.0) / (C * weight_sum)
    width = n_features + 1
    evaluations: list[dict[str, Any]] = []

    def unpack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = w.reshape((n_classes, width), order="F")
        intercept = W[:, -1] if fit_intercept else np.zeros(n_classes)
        return np.ascontiguousarray(W[:, :-1]), np.ascontiguousarray(intercept)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        coef, intercept = unpack(w)
        t0 = time.perf_counter()
        results = runner.evaluate(coef, intercept, weights)
        wall = time.perf_counter() - t0
        seconds = [r.seconds for r in results]
        evaluations.append(
            {"wall": wall, "compute_max": max(seconds), "compute_sum": float(np.sum(seconds))}
        )
        loss = sum(r.loss for r in results) / weight_sum
        grad = np.sum([r.grad for r in results], axis=0) / weight_sum
        loss += 0.5 * penalty * float(np.sum(coef * coef))
        evaluations[-1]["loss"] = loss
        grad[:, :-1] += penalty * coef
        if not fit_intercept:
            grad[:, -1] = 0.0
        return loss, grad.ravel(order="F")

    iteration = 0

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        nonlocal iteration
        iteration += 1
        if on_iteration is not None:
            on_iteration(iteration, float(intermediate_result.fun))

    t0 = time.perf_counter()
    # The solver's own linear algebra is tiny; BLAS threads here would spin between steps
    # and take the CPU from the workers on this host (measured: block time 28 -> 45 ms).
    with threadpool_limits(limits=1, user_api="blas"):
        result = _minimize(objective, n_classes * width, tol, max_iter, callback)
    seconds = time.perf_counter() - t0
    coef, intercept = unpack(result.x)
    if binary:
        coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
    message = result.message if isinstance(result.message, str) else str(result.message)
    return SoftmaxFit(
        coef=coef,
        intercept=intercept,
        n_iter=int(min(result.nit, max_iter)),
        n_evaluations=int(result.nfev),
        converged=bool(result.status == 0),
        message=message,
        seconds=seconds,
        evaluations=evaluations,
    )


def block_loads(client: Any, run_id: str) -> list[dict[str, Any]]:
    """Every load of every block of fit ``run_id``, from the workers' events, oldest first."""
    try:
        events = client.get_events(BLOCK_TOPIC)
    except Exception:  # events are diagnostics; never fail a run for them
        return []
    loads = [m for _, m in events if isinstance(m, dict) and m.get("run_id") == run_id]
    return sorted(loads, key=lambda m: m["time"])


def class_counts_of(codes: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Rows per class index."""
    return np.bincount(np.asarray(codes, dtype=np.intp), minlength=n_classes)
