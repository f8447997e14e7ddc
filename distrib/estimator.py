"""`DaskLogisticRegression`: distrib's trainer as a scikit-learn estimator.

Two strategies fit the same kind of model (`distrib.linear.model.LinearModel`):

* ``ovr``: one binary `LogisticRegression` per class, each a joblib task: on the Dask cluster
  the caller chose with ``parallel_config(backend="dask")``, else on the current Dask client,
  else on whatever joblib backend is active (in this process by default).
* ``multinomial``: one softmax regression; the rows are cut into blocks held by the workers
  and a driver-side L-BFGS sums their losses and gradients
  (`distrib.parallel.multinomial`). Without a Dask client it runs in this process.

Prediction works on numpy arrays, SciPy sparse matrices and Dask arrays (lazy and chunked, so
a test set larger than memory streams through the workers). Models are saved as
``model.npz`` + ``model.json`` (`save` / `load`), never pickled. ``distrib train`` fits
through this same class (`DaskLogisticRegression.fit_training_data`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from joblib import parallel_config
from joblib._dask import DaskDistributedBackend
from joblib.parallel import get_active_backend
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from distrib.config import ESTIMATOR_PARAMS, SETTINGS, TrainConfig
from distrib.errors import DataError, OutputError
from distrib.linear.model import LinearModel
from distrib.parallel.block_hosts import ClusterBlocks
from distrib.parallel.dispatch import BinaryFit, cluster_backend, fit_binary_classifiers
from distrib.parallel.multinomial import (
    BlockRunner,
    LocalBlocks,
    SoftmaxFit,
    fit_softmax,
    objective_weights,
)
from distrib.parallel.reduce import reduce_fits
from distrib.parallel.transfer import (
    ArrayFiles,
    InMemoryArrays,
    TrainingData,
    release_aligned,
    workers_blind_to,
    write_in_memory,
)


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
    """

    log: Callable[[str], None] | None = None
    on_binary_fit: Callable[[BinaryFit], None] | None = None
    done: dict[int, BinaryFit] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


def _current_client() -> Any:
    """The client of the caller's joblib dask backend, else the current Dask client."""
    active, _ = get_active_backend()
    if isinstance(active, DaskDistributedBackend):
        return active.client
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def _inside_a_dask_task() -> bool:
    """Whether this code runs as (part of) a task on a Dask worker."""
    try:
        from distributed.worker import thread_state
    except ImportError:
        return False
    return getattr(thread_state, "key", None) is not None


@contextlib.contextmanager
def _shared_rows(client: Any, data: TrainingData) -> Iterator[ArrayFiles | None]:
    """In-memory rows written once to a temporary folder, if every worker of ``client``
    sees that folder as this process does (workers on this machine): tasks then open them
    by path, as ``distrib train`` does, instead of receiving them. None otherwise; the
    folder is removed on exit."""
    if not isinstance(data, InMemoryArrays):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="distrib-rows-"))
    try:
        files = write_in_memory(data, folder)
        yield None if workers_blind_to(client, files) else files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _ovr_backend(client: Any, data: TrainingData) -> Iterator[tuple[TrainingData, str]]:
    """Where the binary fits run, and the rows as they reach them (with how: ``path``,
    ``scatter`` or ``here``).

    Inside a Dask task: in this thread. Else on the client of the caller's dask backend if
    set, else on ``client``, else on joblib's backend as is. In-memory rows go by path to
    workers on this machine, else are scattered once to every worker (never inside the
    tasks)."""
    if _inside_a_dask_task():
        # Nested in a task (a search run by the dask joblib backend): tasks of its own
        # could wait for threads that the search's other tasks hold (1 thread: forever).
        with parallel_config(backend="sequential"):
            yield data, "here"
        return
    active, _ = get_active_backend()
    if isinstance(active, DaskDistributedBackend):  # the caller's cluster, rows sent our way
        client = active.client
    if client is None:
        yield data, "here"
        return
    with _shared_rows(client, data) as files:
        if files is not None:
            with parallel_config(backend=cluster_backend(client)):
                yield files, "path"
            return
    scatter = [data] if isinstance(data, InMemoryArrays) else None
    try:
        with parallel_config(backend=cluster_backend(client, scatter=scatter)):
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


def _by_class_index(
    class_weight: str | dict[Any, float] | None, labels: np.ndarray
) -> str | dict[int, float] | None:
    """``class_weight`` with a dict's keys turned from ``labels``' values into their
    indices (checked first); anything else as it is."""
    if not isinstance(class_weight, dict):
        return class_weight
    check_class_weight_labels(class_weight, labels)
    index = {label: i for i, label in enumerate(labels.tolist())}
    return {index[k]: float(v) for k, v in class_weight.items()}


class DaskLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression fitted on a Dask cluster, one-vs-rest or multinomial.

    Parameters
    ----------
    strategy : {"ovr", "multinomial"}, default="ovr"
        ``ovr``: one binary fit per class, the classes spread over the workers.
        ``multinomial``: one softmax fit, the rows spread over the workers (L-BFGS, L2);
        scikit-learn's ``LogisticRegression`` fits this model for 3+ classes.
    C : float, default=0.1
        Inverse regularisation strength (scikit-learn's convention).
    l1_ratio : float, default=0.0
        0 is an L2 penalty, 1 is L1 (``ovr`` with ``solver="saga"`` only).
    solver : str, default="lbfgs"
        The binary fits' solver (``ovr``); ``multinomial`` needs ``"lbfgs"``.
    tol : float, default=1e-4
    max_iter : int, default=100
    fit_intercept : bool, default=True
    class_weight : {"balanced"}, dict or None, default=None
        ``multinomial``: per class, as scikit-learn does (a dict maps labels to weights;
        labels it omits weigh 1). ``ovr``: ``"balanced"`` within each binary problem; a
        dict weighs each row by its own class's weight in every binary problem.
    random_state : int or None, default=0
        Seed of the sag/saga solvers.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (n_classes, n_features), or (1, n_features) for two classes
    intercept_ : ndarray of shape (n_classes,), or (1,) for two classes
    n_iter_ : ndarray
        ``ovr``: iterations of each binary fit. ``multinomial``: one entry, L-BFGS iterations.
    fit_records_ : list of dict
        ``ovr``: per binary fit (label, iterations, convergence, seconds, worker, times).
        ``multinomial``: per row block (first row, rows, worker).
    solver_ : dict
        ``multinomial`` only: iterations, evaluations, convergence, time per evaluation.
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        strategy: str = SETTINGS["strategy"].default,
        C: float = SETTINGS["C"].default,
        l1_ratio: float = SETTINGS["l1_ratio"].default,
        solver: str = SETTINGS["solver"].default,
        tol: float = SETTINGS["tol"].default,
        max_iter: int = SETTINGS["max_iter"].default,
        fit_intercept: bool = SETTINGS["fit_intercept"].default,
        class_weight: str | dict[Any, float] | None = SETTINGS["class_weight"].default,
        random_state: int | None = SETTINGS["random_state"].default,
    ) -> None:
        self.strategy = strategy
        self.C = C
        self.l1_ratio = l1_ratio
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.random_state = random_state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _config(self) -> TrainConfig:
        return TrainConfig(**{name: getattr(self, name) for name in ESTIMATOR_PARAMS})

    # --- fitting ----------------------------------------------------------------------

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> DaskLogisticRegression:
        """Fit on numpy, SciPy sparse or Dask arrays.

        Parameters
        ----------
        X : array-like, sparse matrix or Dask array of shape (n_samples, n_features)
            ``ovr`` computes a Dask array first (each binary fit needs all rows);
            ``multinomial`` keeps it distributed, each chunk of rows a block on a worker.
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weight of each row, as scikit-learn's ``fit`` takes it; it
            travels with its row (to the row's block for ``multinomial``).
        """
        self._config()  # validates the parameters before any data is touched
        if isinstance(y, da.Array):
            y = y.compute()
        if isinstance(sample_weight, da.Array):
            sample_weight = sample_weight.compute()
        if isinstance(X, da.Array) and self.strategy == "multinomial":
            return self._fit_dask_multinomial(X, y, sample_weight)
        if isinstance(X, da.Array):
            X = X.compute()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32])
        weights = self._check_weights(sample_weight, X)
        classes, encoded = self._encode(y)
        class_weight = _by_class_index(self.class_weight, classes)
        data = InMemoryArrays(X, encoded, weights)
        self.fit_training_data(data, np.arange(len(classes)), class_weight=class_weight)
        self.classes_ = classes
        self._relabel_records(classes)
        return self

    @staticmethod
    def _check_weights(sample_weight: Any, X: Any) -> np.ndarray | None:
        if sample_weight is None:
            return None
        return _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)

    def _encode(self, y: Any) -> tuple[np.ndarray, np.ndarray]:
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise DataError(
                f"{type(self).__name__} needs samples of at least 2 classes, got "
                f"{len(classes)} class: {classes.tolist()}"
            )
        return classes, encoded.astype(np.int64)

    def _relabel_records(self, classes: np.ndarray) -> None:
        for record in self.fit_records_:
            if "label" in record:
                record["label"] = classes[record["label"]]

    def fit_training_data(
        self,
        data: TrainingData,
        labels: np.ndarray,
        *,
        client: Any = None,
        hooks: FitHooks | None = None,
        class_weight: str | dict[int, float] | None = None,
    ) -> DaskLogisticRegression:
        """Fit on training data already in distrib's transfer form (what ``fit`` and
        ``distrib train`` both call).

        Parameters
        ----------
        data : TrainingData
            `distrib.parallel.transfer.ArrayFiles` (workers open the files by path) or
            `distrib.parallel.transfer.InMemoryArrays` (sent by value).
        labels : ndarray
            The sorted values found in ``data``'s labels; they become ``classes_``.
        client : distributed.Client, optional
            Default: the caller's joblib dask backend, else the current client, else none
            (``ovr`` then runs on joblib's active backend, ``multinomial`` in this process).
        hooks : FitHooks, optional
            Progress, per-class checkpoints and resume (``distrib train``).
        class_weight : "balanced" or dict, optional
            Overrides the ``class_weight`` parameter, a dict keyed by ``labels``' values.
        """
        config = self._config()
        hooks = hooks or FitHooks()
        client = client if client is not None else _current_client()
        labels = np.asarray(labels)
        class_weight = class_weight if class_weight is not None else config.class_weight
        if isinstance(class_weight, dict):
            check_class_weight_labels(class_weight, labels)
        self.n_features_in_ = int(data.shape[1])
        if self.strategy == "ovr":
            self._fit_ovr(data, labels, config, client, hooks, class_weight)
        else:
            y = np.asarray(data.arrays()[1])
            codes = np.searchsorted(labels, y)
            by_index = _by_class_index(class_weight, labels)
            weights = objective_weights(codes, len(labels), by_index, data.weights(0, len(codes)))
            runner: BlockRunner
            if client is None or _inside_a_dask_task():
                # Nested in a task (a search run by the dask joblib backend): its thread is
                # the one this fit may use; actors of its own could wait for a thread that
                # the search's other tasks hold (a deadlock with every thread taken).
                runner = LocalBlocks(data, labels)
            else:
                runner = ClusterBlocks.from_training_data(client, data, labels, run_id=hooks.run_id)
            self._fit_multinomial(runner, len(labels), weights, config, hooks)
        self.classes_ = labels
        return self

    def _fit_ovr(
        self,
        data: TrainingData,
        labels: np.ndarray,
        config: TrainConfig,
        client: Any,
        hooks: FitHooks,
        class_weight: str | dict[int, float] | None,
    ) -> None:
        positives = [int(labels[1])] if len(labels) == 2 else [int(c) for c in labels]
        todo = [c for c in positives if c not in hooks.done]
        fits: list[BinaryFit] = []
        transfer = "none"
        if todo:
            with _ovr_backend(client, data) as (data, transfer):
                fits = fit_binary_classifiers(
                    data,
                    todo,
                    {**config.estimator_params(), "class_weight": class_weight},
                    on_fit=hooks.on_binary_fit,
                    run_id=hooks.run_id,
                )
        coef, intercept, records = reduce_fits([*hooks.done.values(), *fits], np.asarray(positives))
        for record in records:
            record["from_checkpoint"] = record["label"] in hooks.done
        self.coef_ = coef
        self.intercept_ = intercept
        self.n_iter_ = np.array([r["n_iter"] for r in records])
        self.fit_records_ = records
        self.solver_ = {"strategy": "ovr", "transfer": transfer}

    def _fit_multinomial(
        self,
        runner: BlockRunner,
        n_classes: int,
        weights: tuple[np.ndarray | None, float],
        config: TrainConfig,
        hooks: FitHooks,
    ) -> None:
        """``weights``: each class's weight and the rows' total (`objective_weights`)."""
        every = 10  # a line per ten iterations: ~0.5 s apart on full MNIST, 2 workers

        def on_iteration(iteration: int, loss: float) -> None:
            if iteration % every == 0 or iteration in (1, config.max_iter):
                hooks.say(f"[{iteration}/{config.max_iter}] L-BFGS iteration, loss {loss:.6f}")

        try:
            runner.wait_loaded()
            blocks = runner.describe()
            hooks.say(
                f"{len(blocks)} row block(s) on {len({b['worker'] for b in blocks})} worker(s); "
                f"L-BFGS over their summed softmax loss (at most {config.max_iter} iterations)"
            )
            fit: SoftmaxFit = fit_softmax(
                runner,
                n_features=self.n_features_in_,
                n_classes=n_classes,
                weight_sum=weights[1],
                C=config.C,
                tol=config.tol,
                max_iter=config.max_iter,
                fit_intercept=config.fit_intercept,
                class_weights=weights[0],
                on_iteration=on_iteration,
            )
            blocks = runner.describe()
        finally:
            runner.release()
        if not fit.converged:
            hooks.say(f"L-BFGS stopped before convergence ({fit.message}): raise --max-iter")
        self.coef_ = fit.coef
        self.intercept_ = fit.intercept
        self.n_iter_ = np.array([fit.n_iter])
        self.fit_records_ = blocks
        self.solver_ = fit.record()

    def _fit_dask_multinomial(
        self, X: da.Array, y: Any, sample_weight: Any = None
    ) -> DaskLogisticRegression:
        """Multinomial on a Dask array: each chunk of rows becomes one block, computed on
        a worker and kept there; the matrix is never gathered here."""
        if X.ndim != 2:
            raise DataError(f"Expected a 2D array, got a Dask array of shape {X.shape}")
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise DataError(f"X must hold numbers, got dtype {X.dtype}")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != X.shape[0]:
            raise DataError(f"y has shape {y.shape}, X has {X.shape[0]} rows: they must match")
        classes, encoded = self._encode(y)
        client = _current_client()
        if client is None:
            X = X.compute()
            return self.fit(X, y, sample_weight)
        weights = self._check_weights(sample_weight, np.empty((len(y), 0)))
        config = self._config()
        self.n_features_in_ = int(X.shape[1])
        class_weight = _by_class_index(self.class_weight, classes)
        objective = objective_weights(encoded, len(classes), class_weight, weights)
        runner = ClusterBlocks.from_dask_array(
            client, X, encoded, np.arange(len(classes)), sample_weight=weights
        )
        self._fit_multinomial(runner, len(classes), objective, config, FitHooks())
        self.classes_ = classes
        return self

    # --- prediction -------------------------------------------------------------------

    def to_model(self) -> LinearModel:
        """The fitted coefficients as the model object that `save` writes."""
        check_is_fitted(self)
        return LinearModel(
            coef=self.coef_,
            intercept=self.intercept_,
            classes=self.classes_,
            strategy=self.strategy,
        )

    def _check_X(self, X: Any) -> Any:
        if isinstance(X, da.Array):
            check_is_fitted(self)
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise DataError(
                    f"X has {X.shape[-1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input"
                )
            return X
        return validate_data(
            self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False
        )

    def decision_function(self, X: Any) -> Any:
        """Scores per class; for two classes, the score of ``classes_[1]`` (1-D)."""
        check_is_fitted(self)
        scores = self.to_model().decision_function(self._check_X(X))
        if len(self.classes_) == 2:
            return scores[:, 0]
        return scores

    def predict(self, X: Any) -> Any:
        """The class of highest score; lazy and chunked for Dask arrays."""
        check_is_fitted(self)
        return self.to_model().predict(self._check_X(X))

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities: softmax (``multinomial``), or each class's sigmoid
        normalised to sum to one (``ovr``, as scikit-learn's one-vs-rest does)."""
        check_is_fitted(self)
        return self.to_model().predict_proba(self._check_X(X))

    # --- files ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write ``model.npz`` and ``model.json`` into the folder ``path`` (no pickle).

        ``metadata`` (JSON-ready) is stored in ``model.json`` beside the parameters.
        """
        model = self.to_model()
        os.makedirs(path, exist_ok=True)
        model.save(
            path,
            {
                "estimator": type(self).__name__,
                "estimator_params": self.get_params(),
                "n_iter": self.n_iter_.tolist(),
                **(metadata or {}),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DaskLogisticRegression:
        """Read a folder written by `save` or by ``distrib train``.

        The content of ``model.json`` is kept as ``saved_metadata_``.
        """
        model, meta = LinearModel.load(path)
        params = meta.get("estimator_params") or {
            k: v for k, v in meta.get("settings", {}).items() if k in ESTIMATOR_PARAMS
        }
        params = {**params, "strategy": model.strategy}
        try:
            estimator = cls(**params)
        except TypeError as exc:
            raise OutputError(f"{path}: model.json holds unknown parameters ({exc})") from exc
        estimator.classes_ = model.classes
        estimator.coef_ = model.coef
        estimator.intercept_ = model.intercept
        estimator.n_iter_ = np.asarray(meta.get("n_iter", []), dtype=int)
        estimator.n_features_in_ = model.n_features
        estimator.fit_records_ = []
        estimator.saved_metadata_ = meta
        return estimator


#: The name this estimator had when it fitted one-vs-rest only (distrib 0.1).
DaskOneVsRestClassifier = DaskLogisticRegression
