"""`DaskLogisticRegression`: distrib's trainer as a scikit-learn estimator.

Two strategies fit the same kind of model (`distrib.linear.model.LinearModel`):

* ``ovr``: one binary problem per class, as joblib tasks (lockstep groups of classes with
  Newton-CG or L-BFGS and an L2 penalty, the default; a `LogisticRegression` per class
  otherwise): on the
  Dask cluster the caller chose with ``parallel_config(backend="dask")``, else on the
  current Dask client, else on whatever joblib backend is active (in this process by
  default).
* ``multinomial``: one softmax regression; the rows are cut into blocks held by the workers
  and a driver-side Newton-CG or L-BFGS sums their losses and gradients
  (`distrib.linear.multinomial`). Without a Dask client it runs in this process.

Prediction works on numpy arrays, SciPy sparse matrices and Dask arrays (lazy and chunked, so
a test set larger than memory streams through the workers). Models are saved as
``model.npz`` + ``model.json`` (`save` / `load`), never pickled. The fit itself is
`distrib.parallel.fitting`'s, which ``distrib train`` calls too.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from distrib.config import ESTIMATOR_PARAMS, SETTINGS, TrainConfig
from distrib.errors import DataError, OutputError
from distrib.linear.model import LinearModel
from distrib.linear.multinomial import refuse_weightless_classes
from distrib.parallel.fitting import FitOutcome, by_class_index, current_client, fit_dask_rows
from distrib.parallel.rows import InMemoryArrays
from distrib.parallel.strategies import fit_training_data, strategy_for


def check_dask_rows(X: da.Array) -> None:
    """Refuse a Dask array that cannot be rows to fit: not 2-D, not numbers, or chunks of
    unknown size."""
    if X.ndim != 2:
        raise DataError(f"Expected a 2D array, got a Dask array of shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"X must hold numbers, got dtype {X.dtype}")
    if np.isnan(X.shape[0]):
        raise DataError(
            "X is a Dask array whose chunk sizes are unknown (a boolean mask or a "
            "filter made them): call X.compute_chunk_sizes() before fit"
        )


class DaskLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression fitted on a Dask cluster, one-vs-rest or multinomial.

    Parameters
    ----------
    strategy : {"ovr", "multinomial"}, default="ovr"
        ``ovr``: one binary fit per class, the classes spread over the workers.
        ``multinomial``: one softmax fit, the rows spread over the workers (Newton-CG or
        L-BFGS, L2);
        scikit-learn's ``LogisticRegression`` fits this model for 3+ classes.
    C : float, default=0.1
        Inverse regularisation strength (scikit-learn's convention).
    l1_ratio : float, default=0.0
        0 is an L2 penalty, 1 is L1 (``ovr`` with ``solver="saga"`` only).
    solver : str, default="auto"
        ``auto``: ``newton-cg`` (its Hessian from a sample of the rows: a fraction of
        L-BFGS's passes), but ``lbfgs`` for ``ovr`` with ``class_weight="balanced"``.
        ``multinomial`` takes ``"newton-cg"`` or ``"lbfgs"``; ``ovr`` fits its classes in
        lockstep with either, and takes any other of scikit-learn's (a class at a time).
    tol : float, default=1e-4
        Every solver stops when the gradient's largest entry is at most ``tol``.
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
        ``ovr``: iterations of each binary fit. ``multinomial``: one entry, the solver's
        iterations.
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
        if isinstance(X, da.Array) and strategy_for(self.strategy).holds_row_blocks:
            return self._fit_dask_multinomial(X, y, sample_weight)
        if isinstance(X, da.Array):
            X = X.compute()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32])
        weights = self._check_weights(sample_weight, X)
        classes, encoded = self._encode(y)
        data = InMemoryArrays(X, encoded, weights)
        outcome = fit_training_data(
            data,
            np.arange(len(classes)),
            self._config(),
            class_weight=by_class_index(self.class_weight, classes),
        )
        self._take(outcome, classes, int(X.shape[1]))
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

    def _fit_dask_multinomial(
        self, X: da.Array, y: Any, sample_weight: Any = None
    ) -> DaskLogisticRegression:
        """Multinomial on a Dask array: each chunk of rows becomes one block, computed on
        a worker and kept there; the matrix is never gathered here."""
        check_dask_rows(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != X.shape[0]:
            raise DataError(f"y has shape {y.shape}, X has {X.shape[0]} rows: they must match")
        classes, encoded = self._encode(y)
        client = current_client()
        if client is None:
            X = X.compute()
            return self.fit(X, y, sample_weight)
        weights = self._check_weights(sample_weight, np.empty((len(y), 0)))
        if self.class_weight == "balanced" and weights is not None:
            refuse_weightless_classes(encoded, len(classes), weights, classes)
        outcome = fit_dask_rows(
            X,
            encoded,
            len(classes),
            self._config(),
            client=client,
            class_weight=by_class_index(self.class_weight, classes),
            sample_weight=weights,
        )
        self._take(outcome, classes, int(X.shape[1]))
        return self

    def _take(self, outcome: FitOutcome, classes: np.ndarray, n_features: int) -> None:
        """Set the fitted attributes from ``outcome`` (fitted on class indices)."""
        self.classes_ = classes
        self.coef_ = outcome.coef
        self.intercept_ = outcome.intercept
        self.n_iter_ = outcome.n_iter
        self.n_features_in_ = n_features
        self.fit_records_ = outcome.records
        for record in self.fit_records_:
            if "label" in record:
                record["label"] = classes[record["label"]]
        self.solver_ = outcome.solver

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
