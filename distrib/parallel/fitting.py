"""The fit itself, both strategies, on training data in distrib's transfer form
(`distrib.parallel.strategies` picks which one runs: its entry is `fit_training_data`).

The caller follows the fit through `FitHooks` (progress lines, each class's binary fit as it
arrives, classes already fitted, the name of the fit in the workers' events); the fit returns
a `FitOutcome` and keeps no state.

* `fit_ovr`: the binary problems as joblib tasks (lockstep groups of classes with Newton-CG
  or L-BFGS and an L2 penalty, a scikit-learn `LogisticRegression` per class otherwise): on the Dask
  cluster the caller chose with ``parallel_config(backend="dask")``, else on the given (or
  current) Dask client, else on whatever joblib backend is active (in this process by
  default).
* `fit_multinomial_rows` and `fit_dask_rows`: the rows cut into blocks held by the workers,
  a driver-side L-BFGS over their summed losses and gradients
  (`distrib.linear.multinomial`); in this process without a Dask client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from joblib import parallel_config
from joblib.parallel import get_active_backend
from threadpoolctl import threadpool_limits

from distrib.config import SOLVER_NAMES, TrainConfig
from distrib.errors import DataError
from distrib.files import is_storage_error
from distrib.linear.multinomial import (
    IterationProgress,
    Journal,
    SoftmaxFit,
    fit_softmax,
    objective_weights,
    refuse_weightless_classes,
)
from distrib.linear.newton import RowSample, SampledHessian, sample_stride
from distrib.parallel.blocks.block import BlockRunner, LocalBlocks
from distrib.parallel.blocks.runner import ClusterBlocks
from distrib.parallel.dispatch import BinaryFit, fit_binary_classifiers
from distrib.parallel.joblib_backend import active_dask_client, cluster_backend
from distrib.parallel.prepared import workers_blind_to_paths, write_in_memory
from distrib.parallel.reduce import reduce_fits
from distrib.parallel.row_store import RowStore
from distrib.parallel.rows import (
    ArrayFiles,
    InMemoryArrays,
    TrainingData,
    matrix_nbytes,
    release_aligned,
)


@dataclass
class FitOutcome:
    """A finished fit.

    Attributes
    ----------
    coef : ndarray of shape (n_classes, n_features), or (1, n_features) for two classes
    intercept : ndarray
    n_iter : ndarray
        ``ovr``: iterations of each binary fit; ``multinomial``: one entry (L-BFGS).
    records : list of dict
        ``ovr``: per binary fit (label, iterations, convergence, seconds, worker, times,
        ``from_checkpoint``); ``multinomial``: per row block (key, first row, rows, worker).
    solver : dict
        ``multinomial``: iterations, evaluations, convergence, time per evaluation;
        ``ovr``: how the rows reached the fits.
    train_codes : ndarray, optional
        Each training row's predicted class index, where asked for
        (`fit_dask_rows`'s ``predict_rows``): computed where the rows are held.
    """

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray
    records: list[dict[str, Any]]
    solver: dict[str, Any]
    train_codes: np.ndarray | None = None


@dataclass
class FitHooks:
    """How ``distrib train`` follows a fit (all optional).

    Attributes
    ----------
    log : callable
        Receives one-line progress messages.
    on_binary_fit : callable
        ``ovr``: called with each class's `BinaryFit` as it arrives (checkpoints).
    done : dict
        ``ovr``: classes already fitted (from checkpoints), not dispatched again.
    run_id : str
        Names the fit in the workers' events (retry and block-load records).
    journal : Journal, optional
        ``multinomial``: logs every evaluation, and replays those it holds (resume).
    """

    log: Callable[[str], None] | None = None
    on_binary_fit: Callable[[BinaryFit], None] | None = None
    done: dict[int, BinaryFit] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    journal: Journal | None = None

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


def current_client() -> Any:
    """The client of the caller's joblib dask backend, else the current Dask client."""
    client = active_dask_client()
    if client is not None:
        return client
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def inside_a_dask_task() -> bool:
    """Whether this code runs as (part of) a task on a Dask worker."""
    try:
        from distributed.worker import thread_state
    except ImportError:
        return False
    return getattr(thread_state, "key", None) is not None


@contextlib.contextmanager
def _shared_rows(
    client: Any, data: TrainingData, log: Callable[[str], None] | None = None
) -> Iterator[ArrayFiles | None]:
    """In-memory rows written once to a temporary folder, if every worker of ``client``
    sees that folder as this process does (workers on this machine): tasks then open them
    by path, as ``distrib train`` does, instead of receiving them. None otherwise, and
    where the temporary folder cannot take them (full, read-only: said to ``log``, and the
    rows are sent by value); the folder is removed on exit."""
    if not isinstance(data, InMemoryArrays) or not data.try_paths:
        yield None
        return
    files: ArrayFiles | None = None
    folder: Path | None = None
    try:
        try:
            folder = Path(tempfile.mkdtemp(prefix="distrib-rows-"))
            probe = folder / "probe"  # the rows are written only for workers that read them
            probe.write_bytes(b"distrib")
            if not workers_blind_to_paths(client, [str(probe)]):
                files = write_in_memory(data, folder)
        except OSError as exc:
            if not is_storage_error(exc):
                raise
            if log is not None:
                where = folder if folder is not None else tempfile.gettempdir()
                log(f"rows not written to {where} ({exc.strerror}): sent to the workers instead")
            files = None
        yield files
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _ovr_backend(
    client: Any, data: TrainingData, log: Callable[[str], None] | None = None
) -> Iterator[tuple[TrainingData, str]]:
    """Where the binary fits run, and the rows as they reach them (with how: ``path``,
    ``scatter`` or ``here``). ``log`` hears of backup attempts (`ClusterBackend`).

    Inside a Dask task: in this thread. Else on the client of the caller's dask backend if
    set, else on ``client``, else on joblib's backend as is. In-memory rows go by path to
    workers on this machine, else are scattered once to every worker (never inside the
    tasks)."""
    if inside_a_dask_task():
        # Nested in a task (a search run by the dask joblib backend): tasks of its own
        # could wait for threads that the search's other tasks hold (1 thread: forever).
        with parallel_config(backend="sequential"):
            yield data, "here"
        return
    chosen = active_dask_client()
    if chosen is not None:  # the caller's cluster, rows sent our way
        client = chosen
    if client is None:
        yield data, "here"
        return
    with _shared_rows(client, data, log) as files:
        if files is not None:
            with parallel_config(backend=cluster_backend(client, log=log)):
                yield files, "path"
            return
    scatter = [data] if isinstance(data, InMemoryArrays) else None
    try:
        started = time.perf_counter()
        backend = cluster_backend(client, scatter=scatter, log=log)  # every worker has them
        if isinstance(data, InMemoryArrays) and log is not None:
            size = matrix_nbytes(data.X) / 1e6
            log(f"rows sent to every worker ({size:.0f} MB, {time.perf_counter() - started:.2f} s)")
        with parallel_config(backend=backend):
            yield data, "scatter" if scatter else "path"
    finally:
        if scatter is not None:
            with contextlib.suppress(Exception):
                client.run(release_aligned, data.token)  # type: ignore[attr-defined]


def check_class_weight_labels(class_weight: dict[Any, float], labels: np.ndarray) -> None:
    """Refuse a class weight dict that names a label the data does not have."""
    unknown = [k for k in class_weight if k not in set(labels.tolist())]
    if unknown:
        raise DataError(
            f"class_weight names {unknown}, which are not classes of y "
            f"({labels.tolist()}): key the dict by y's labels"
        )


def by_class_index(
    class_weight: str | dict[Any, float] | None, labels: np.ndarray
) -> str | dict[int, float] | None:
    """``class_weight`` with a dict's keys turned from ``labels``' values into their
    indices (checked first); anything else as it is."""
    if not isinstance(class_weight, dict):
        return class_weight
    check_class_weight_labels(class_weight, labels)
    index = {label: i for i, label in enumerate(labels.tolist())}
    return {index[k]: float(v) for k, v in class_weight.items()}


def fit_multinomial_rows(
    data: TrainingData,
    labels: np.ndarray,
    config: TrainConfig,
    client: Any,
    hooks: FitHooks,
    class_weight: str | dict[Any, float] | None,
) -> FitOutcome:
    """The multinomial fit on ``data``'s rows: cut into blocks held by ``client``'s workers
    (in this process without a client, or inside a Dask task); ``class_weight`` keyed by
    ``labels``' values."""
    codes = class_indices(labels, data.labels())
    by_index = by_class_index(class_weight, labels)
    sample_weight = data.weights(0, len(codes))
    weights = objective_weights(codes, len(labels), by_index, sample_weight, labels)
    layout = hooks.journal.layout() if hooks.journal is not None else None
    # a resumed fit: the first run's blocks
    n_blocks = None if layout is None else int(layout["blocks"])
    runner = _row_blocks(client, data, labels, hooks, n_blocks)
    # streamed rows are predicted where they are read (here they would be decoded whole)
    predict_rows = isinstance(data, RowStore)
    return fit_multinomial(
        runner, int(data.shape[1]), len(labels), weights, config, hooks, predict_rows=predict_rows
    )


def _row_blocks(
    client: Any, data: TrainingData, labels: np.ndarray, hooks: FitHooks, n_blocks: int | None
) -> BlockRunner:
    """``data``'s rows as blocks: on ``client``'s workers (``n_blocks`` of them, default one
    per worker thread), or one block in this process without a client or inside a task."""
    if client is None or inside_a_dask_task():
        # Nested in a task (a search run by the dask joblib backend): its thread is the one
        # this fit may use; actors of its own could wait for a thread that the search's
        # other tasks hold (a deadlock with every thread taken).
        return LocalBlocks(data, labels)
    return ClusterBlocks.from_training_data(client, data, labels, n_blocks=n_blocks,
                                            **_block_options(hooks))  # fmt: skip


def class_indices(labels: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's index into the sorted ``labels``, in the smallest integer type that
    holds it (one byte for up to 256 classes: 8.1 million rows, 8 MB)."""
    if y.dtype.kind in "iu" and y.dtype.itemsize == 1 and len(labels) <= 256:
        table = np.zeros(256, dtype=np.uint8)  # a byte's class index, by lookup
        table[labels.astype(y.dtype).view(np.uint8)] = np.arange(len(labels))
        return table[y.view(np.uint8)]
    codes = np.searchsorted(labels, y)
    return codes.astype(np.min_scalar_type(max(len(labels) - 1, 0)), copy=False)


def fit_ovr(
    data: TrainingData,
    labels: np.ndarray,
    config: TrainConfig,
    client: Any,
    hooks: FitHooks,
    class_weight: str | dict[Any, float] | None,
) -> FitOutcome:
    """One binary fit per class of ``labels`` not yet in ``hooks.done``, as joblib tasks on
    ``client`` (`_ovr_backend`), reduced with the done ones into one model."""
    weights = data.weights(0, int(data.shape[0]))
    if class_weight == "balanced" and weights is not None:
        codes = np.searchsorted(labels, data.labels())
        refuse_weightless_classes(codes, len(labels), weights, labels)
    positives = [int(labels[1])] if len(labels) == 2 else [int(c) for c in labels]
    todo = [c for c in positives if c not in hooks.done]
    fits: list[BinaryFit] = []
    transfer = "none"
    backups: list[dict[str, Any]] = []
    if todo:
        with _ovr_backend(client, data, hooks.log) as (data, transfer):
            fits = fit_binary_classifiers(
                data,
                todo,
                {**config.estimator_params(), "class_weight": class_weight},
                on_fit=hooks.on_binary_fit,
                run_id=hooks.run_id,
            )
            backend, _ = get_active_backend()
            backups = list(getattr(backend, "backups", []))
    coef, intercept, records = reduce_fits([*hooks.done.values(), *fits], np.asarray(positives))
    for record in records:
        record["from_checkpoint"] = record["label"] in hooks.done
    n_iter = np.array([r["n_iter"] for r in records])
    info = {"strategy": "ovr", "transfer": transfer, "backups": backups,
            "solver": config.fit_solver, **_ovr_passes(records)}  # fmt: skip
    return FitOutcome(coef, intercept, n_iter, records, info)


def _ovr_passes(records: list[dict[str, Any]]) -> dict[str, int]:
    """``passes``: the most passes over the rows any lockstep task made (the tasks run side
    by side, each over its own copy of the rows); none for scikit-learn's fits."""
    passes = [int(r["passes"]) for r in records if r.get("passes") is not None]
    return {"passes": max(passes)} if passes else {}


def fit_dask_rows(
    X: Any,
    codes: np.ndarray,
    n_classes: int,
    config: TrainConfig,
    *,
    client: Any,
    hooks: FitHooks | None = None,
    class_weight: str | dict[int, float] | None = None,
    sample_weight: np.ndarray | None = None,
    predict_rows: bool = False,
) -> FitOutcome:
    """The multinomial fit on a Dask array's rows, each chunk computed on a worker and kept
    there as a block (the matrix is never gathered here, nor whole on any worker).

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
    codes : ndarray of shape (n_samples,)
        Each row's class index (``0 .. n_classes - 1``).
    n_classes : int
    config : TrainConfig
    client : distributed.Client
    hooks : FitHooks, optional
    class_weight : "balanced" or dict, optional
        A dict keyed by class index.
    sample_weight : ndarray of shape (n_samples,), optional
    predict_rows : bool
        Also predict every row with the fitted model where its block is (the outcome's
        ``train_codes``): rows that exist only as a graph need not be made again.
    """
    hooks = hooks or FitHooks()
    weights = objective_weights(codes, n_classes, class_weight, sample_weight)
    runner = ClusterBlocks.from_dask_array(
        client, X, codes, np.arange(n_classes), sample_weight=sample_weight, **_block_options(hooks)
    )
    return fit_multinomial(
        runner, int(X.shape[1]), n_classes, weights, config, hooks, predict_rows=predict_rows
    )


def fit_multinomial_configs(
    X: Any,
    codes: np.ndarray,
    n_classes: int,
    configs: list[TrainConfig],
    *,
    client: Any,
    class_weight: str | dict[int, float] | None = None,
    sample_weight: np.ndarray | None = None,
    n_blocks: int | None = None,
) -> list[FitOutcome]:
    """The multinomial fit of each config (e.g. a path of Cs, one solver) on the same rows,
    cut into blocks once (`fit_multinomial_path`: each fit warm-starts from the one before).

    ``X``: numpy, SciPy sparse or a Dask array (a chunk a block, on ``client``'s workers);
    numpy and sparse rows are sent to the workers once, in ``n_blocks`` blocks (default one
    per worker thread; the blocks decide the sums' bits, not where they run), or fitted in
    this process without a client (or inside a Dask task). ``codes``: each row's class
    index; ``class_weight`` keyed by class index.
    """
    import dask.array as da

    hooks = FitHooks()
    weights = objective_weights(codes, n_classes, class_weight, sample_weight)
    classes = np.arange(n_classes)
    runner: BlockRunner
    if isinstance(X, da.Array):
        if client is None:
            raise ValueError("a Dask array's rows are fitted on a client's workers")
        runner = ClusterBlocks.from_dask_array(client, X, codes, classes,
                                               sample_weight=sample_weight,
                                               **_block_options(hooks))  # fmt: skip
    else:
        runner = _row_blocks(client, InMemoryArrays(X, codes, sample_weight), classes, hooks,
                             n_blocks)  # fmt: skip
    return fit_multinomial_path(runner, int(X.shape[1]), n_classes, weights, configs, hooks)


def _block_options(hooks: FitHooks) -> dict[str, Any]:
    """`ClusterBlocks`' settings for a fit followed by ``hooks``: its name, where it says
    that it waits on a silent host (and gives it up), and, for a resumed fit, the order of
    the sums its first run fixed (`_keep_layout` checks the blocks are the same)."""
    layout = hooks.journal.layout() if hooks.journal is not None else None
    tree = None if layout is None else tuple(tuple(int(i) for i in g) for g in layout["tree"])
    return {"run_id": hooks.run_id, "log": hooks.say, "tree": tree}


def _keep_layout(runner: ClusterBlocks, journal: Journal) -> None:
    """A resumed fit sums its blocks in the order its first run did (whatever the workers
    now: the runner has that order from `_block_options`); a new one records its order for
    a later resume."""
    layout = journal.layout()
    if layout is not None:
        if int(layout["blocks"]) != len(runner.sources):
            raise DataError(
                f"the fit being resumed cut its rows into {layout['blocks']} blocks, this one "
                f"into {len(runner.sources)}: the rows differ; train into a new --out"
            )
    else:
        runner.wait_loaded()  # the order follows where the blocks are
        journal.save_layout(len(runner.sources), runner.fix_tree())


def fit_multinomial(
    runner: BlockRunner,
    n_features: int,
    n_classes: int,
    weights: tuple[np.ndarray | None, float],
    config: TrainConfig,
    hooks: FitHooks | None = None,
    *,
    predict_rows: bool = False,
) -> FitOutcome:
    """The multinomial fit over ``runner``'s blocks (released at the end).

    ``weights``: each class's weight and the rows' total
    (`distrib.linear.multinomial.objective_weights`); ``predict_rows``: also predict
    every row where it is held, before the blocks are released.
    """
    hooks = hooks or FitHooks()
    try:
        if isinstance(runner, ClusterBlocks) and hooks.journal is not None:
            _keep_layout(runner, hooks.journal)
        blocks, n_rows, sample = _ready(runner, config, hooks)
        fit = _softmax_fit(runner, sample, n_rows, n_features, n_classes, weights, config, hooks)
        blocks = runner.describe()
        codes = runner.predict(fit.coef, fit.intercept) if predict_rows else None
    finally:
        runner.release()
    return _outcome(fit, runner, blocks, n_rows, hooks, codes)


def fit_multinomial_path(
    runner: BlockRunner,
    n_features: int,
    n_classes: int,
    weights: tuple[np.ndarray | None, float],
    configs: list[TrainConfig],
    hooks: FitHooks | None = None,
) -> list[FitOutcome]:
    """One multinomial fit per config (configs that differ in C only: a path of Cs) over
    ``runner``'s blocks, placed once and released at the end: each fit starts from the one
    before (a warm start); Newton-CG's sample of the rows, and its Hessian's feature
    moments, are made once."""
    if any(dataclasses.replace(config, C=configs[0].C) != configs[0] for config in configs):
        raise ValueError("a path of fits shares every setting but C")
    hooks = hooks or FitHooks()
    outcomes: list[FitOutcome] = []
    hessian: SampledHessian | None = None
    try:
        _, n_rows, sample = _ready(runner, configs[0], hooks)
        if sample is not None:  # as fit_softmax makes it: BLAS on one thread, the same bits
            with threadpool_limits(limits=1, user_api="blas"):
                hessian = SampledHessian(sample, n_classes, weights[0], 0.0,
                                         configs[0].fit_intercept)  # fmt: skip
        start: tuple[np.ndarray, np.ndarray] | None = None
        for config in configs:
            fit = _softmax_fit(runner, sample, n_rows, n_features, n_classes, weights, config,
                               hooks, start, hessian)  # fmt: skip
            start = (fit.coef, fit.intercept)
            outcomes.append(_outcome(fit, runner, runner.describe(), n_rows, hooks, None))
    finally:
        if hessian is not None:
            hessian.close()
        runner.release()
    return outcomes


def _ready(
    runner: BlockRunner, config: TrainConfig, hooks: FitHooks
) -> tuple[list[dict[str, Any]], int, RowSample | None]:
    """The blocks once loaded, their rows, and Newton-CG's sample of them; said."""
    runner.wait_loaded()
    blocks = runner.describe()
    n_rows = sum(int(block["rows"]) for block in blocks)
    solver = config.fit_solver
    sample = runner.sample(sample_stride(n_rows)) if solver == "newton-cg" else None
    hooks.say(
        f"{len(blocks)} row block(s) on {len({b['worker'] for b in blocks})} worker(s); "
        f"{SOLVER_NAMES[solver]} over their summed softmax loss (at most "
        f"{config.max_iter} iterations)"
        + (f", its Hessian from {sample.n_rows:,} of the rows" if sample is not None else "")
    )
    return blocks, n_rows, sample


def _softmax_fit(
    runner: BlockRunner,
    sample: RowSample | None,
    n_rows: int,
    n_features: int,
    n_classes: int,
    weights: tuple[np.ndarray | None, float],
    config: TrainConfig,
    hooks: FitHooks,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    hessian: SampledHessian | None = None,
) -> SoftmaxFit:
    """`fit_softmax` on the runner's blocks, its progress said."""
    # a line per ten L-BFGS iterations (~0.5 s apart on full MNIST, 2 workers), or per
    # Newton iteration (each a whole linear solve)
    every = 10 if config.fit_solver == "lbfgs" else 1

    def on_iteration(progress: IterationProgress) -> None:
        iteration = progress.iteration
        if iteration % every == 0 or iteration in (1, config.max_iter):
            rate = progress.passes * n_rows / max(progress.seconds, 1e-9)
            line = (
                f"[{iteration}/{config.max_iter}] {SOLVER_NAMES[config.fit_solver]} iteration, "
                f"loss {progress.loss:.6f}, "
                f"{progress.passes} passes ({rate:,.0f} rows/s)"
            )
            if progress.read_bytes:  # rows streamed from disk
                line += (f", {progress.read_bytes / 1e9:.2f} GB read a pass, read-ahead "
                         f"waited {progress.read_wait:.2f} s")  # fmt: skip
            hooks.say(line)

    return fit_softmax(
        runner,
        n_features=n_features,
        n_classes=n_classes,
        weight_sum=weights[1],
        C=config.C,
        tol=config.tol,
        max_iter=config.max_iter,
        fit_intercept=config.fit_intercept,
        class_weights=weights[0],
        on_iteration=on_iteration,
        journal=hooks.journal,
        solver=config.fit_solver,
        sample=sample,
        start=start,
        hessian=hessian,
    )


def _outcome(
    fit: SoftmaxFit,
    runner: BlockRunner,
    blocks: list[dict[str, Any]],
    n_rows: int,
    hooks: FitHooks,
    codes: np.ndarray | None,
) -> FitOutcome:
    """A finished fit as a `FitOutcome`; a fit stopped by its iteration cap said so."""
    if not fit.converged:
        hooks.say(
            f"{SOLVER_NAMES[fit.solver]} stopped before convergence ({fit.message}): "
            "raise --max-iter"
        )
    record = fit.record()
    if "hessian_rows_touched" in record:  # the sample's products, in passes' worth of rows
        record["hessian_passes_worth"] = record["hessian_rows_touched"] / max(n_rows, 1)
    record["given_up"] = list(getattr(runner, "given_up", {}).values())  # silent workers
    return FitOutcome(fit.coef, fit.intercept, np.array([fit.n_iter]), blocks, record, codes)
