"""`DaskOneVsRestClassifier`: the one-vs-rest trainer as a scikit-learn estimator.

``fit`` sends one binary `LogisticRegression` per class through joblib: to the Dask cluster
the caller chose with ``parallel_config(backend="dask")``, else to the current Dask client,
else to whatever joblib backend is active (in this process by default). Prediction works on
numpy arrays, SciPy sparse matrices and Dask arrays (lazy and chunked, so a test set larger
than memory streams through the workers). Models are saved as ``model.npz`` +
``model.json`` (`save` / `load`), the same files as ``distrib train``; never pickled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
from joblib import parallel_config
from joblib._dask import DaskDistributedBackend
from joblib.parallel import get_active_backend
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from distrib.config import TrainConfig
from distrib.dispatch import cluster_backend, fit_binary_classifiers
from distrib.errors import OutputError
from distrib.model import OneVsRestModel
from distrib.reduce import reduce_fits
from distrib.transfer import InMemoryArrays

ESTIMATOR_PARAMS = ("C", "l1_ratio", "solver", "tol", "max_iter", "fit_intercept",
                    "class_weight", "random_state")  # fmt: skip


def _take(index: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return classes[index]


@contextlib.contextmanager
def _backend_for(data: InMemoryArrays) -> Iterator[None]:
    """The caller's dask backend if set, else the current Dask client, else as is."""
    active, _ = get_active_backend()
    if isinstance(active, DaskDistributedBackend):
        yield
        return
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        yield
        return
    with parallel_config(backend=cluster_backend(client, scatter=[data])):
        yield


class DaskOneVsRestClassifier(ClassifierMixin, BaseEstimator):
    """One binary logistic regression per class, fitted in parallel on a Dask cluster.

    Parameters
    ----------
    C : float, default=0.1
        Inverse regularisation strength of each binary fit.
    l1_ratio : float, default=0.0
        0 is an L2 penalty, 1 is L1 (needs ``solver="saga"``).
    solver : str, default="lbfgs"
    tol : float, default=1e-4
    max_iter : int, default=100
    fit_intercept : bool, default=True
    class_weight : {"balanced"} or None, default=None
        Applied within each binary problem.
    random_state : int or None, default=0
        Seed of the sag/saga solvers.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (n_classes, n_features), or (1, n_features) for two classes
    intercept_ : ndarray of shape (n_classes,), or (1,) for two classes
    n_iter_ : ndarray of shape (n_binary_fits,)
    fit_records_ : list of dict
        Per binary fit: label, iterations, convergence, seconds, worker, start and end.
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        C: float = 0.1,
        l1_ratio: float = 0.0,
        solver: str = "lbfgs",
        tol: float = 1e-4,
        max_iter: int = 100,
        fit_intercept: bool = True,
        class_weight: str | None = None,
        random_state: int | None = 0,
    ) -> None:
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

    def fit(self, X: Any, y: Any) -> DaskOneVsRestClassifier:
        """Fit one binary classifier per class (two classes: one fit, as scikit-learn does).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            A Dask array is computed first (each binary fit needs all rows).
        y : array-like of shape (n_samples,)
        """
        params = self._config().estimator_params()
        if isinstance(X, da.Array):
            X = X.compute()
        if isinstance(y, da.Array):
            y = y.compute()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"DaskOneVsRestClassifier needs samples of at least 2 classes, got {len(classes)} "
                f"class: {classes.tolist()}"
            )
        positives = [1] if len(classes) == 2 else list(range(len(classes)))
        data = InMemoryArrays(X, encoded.astype(np.int64))
        with _backend_for(data):
            fits = fit_binary_classifiers(data, positives, params)
        model, records = reduce_fits(fits, np.asarray(positives))
        self.classes_ = classes
        self.coef_ = model.coef
        self.intercept_ = model.intercept
        self.n_iter_ = np.array([r["n_iter"] for r in records])
        self.fit_records_ = [{**r, "label": classes[r["label"]]} for r in records]
        return self

    def _model(self) -> OneVsRestModel:
        check_is_fitted(self)
        labels = self.classes_ if len(self.classes_) > 2 else self.classes_[1:]
        return OneVsRestModel(coef=self.coef_, intercept=self.intercept_, classes=labels)

    def _check_X(self, X: Any) -> Any:
        if isinstance(X, da.Array):
            check_is_fitted(self)
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[-1]} features, but DaskOneVsRestClassifier is expecting "
                    f"{self.n_features_in_} features as input"
                )
            return X
        return validate_data(
            self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False
        )

    def decision_function(self, X: Any) -> Any:
        """Scores per class; for two classes, the score of ``classes_[1]`` (1-D)."""
        check_is_fitted(self)
        scores = self._model().decision_function(self._check_X(X))
        if len(self.classes_) == 2:
            return scores[:, 0]
        return scores

    def predict(self, X: Any) -> Any:
        """The class of highest score; lazy and chunked for Dask arrays."""
        check_is_fitted(self)
        X = self._check_X(X)
        scores = self._model().decision_function(X)
        binary = len(self.classes_) == 2
        index = (scores[:, 0] > 0).astype(int) if binary else scores.argmax(axis=1)
        if isinstance(index, da.Array):
            return da.map_blocks(_take, index, self.classes_, dtype=self.classes_.dtype)
        return self.classes_[index]

    def predict_proba(self, X: Any) -> Any:
        """One-vs-rest probabilities: each class's sigmoid, normalised to sum to 1."""
        check_is_fitted(self)
        scores = self._model().decision_function(self._check_X(X))
        lib = da if isinstance(scores, da.Array) else np
        positive = 1.0 / (1.0 + lib.exp(-scores))
        if len(self.classes_) == 2:
            return lib.concatenate([1.0 - positive, positive], axis=1)
        return positive / positive.sum(axis=1, keepdims=True)

    # --- files ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``model.npz`` and ``model.json`` into the folder ``path`` (no pickle)."""
        model = self._model()
        os.makedirs(path, exist_ok=True)
        model.save(
            path,
            {
                "estimator": type(self).__name__,
                "estimator_params": self.get_params(),
                "all_classes": self.classes_.tolist(),
                "n_iter": self.n_iter_.tolist(),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DaskOneVsRestClassifier:
        """Read a folder written by `save` or by ``distrib train``."""
        model, meta = OneVsRestModel.load(path)
        params = meta.get("estimator_params") or {
            k: v for k, v in meta.get("settings", {}).items() if k in ESTIMATOR_PARAMS
        }
        try:
            estimator = cls(**params)
        except TypeError as exc:
            raise OutputError(f"{path}: model.json holds unknown parameters ({exc})") from exc
        classes = np.asarray(meta.get("all_classes", model.classes.tolist()))
        estimator.classes_ = classes
        estimator.coef_ = model.coef
        estimator.intercept_ = model.intercept
        estimator.n_iter_ = np.asarray(meta.get("n_iter", []), dtype=int)
        estimator.n_features_in_ = model.n_features
        estimator.fit_records_ = []
        return estimator
