"""The fitted linear model: prediction on numpy or Dask arrays, and its files.

One model type serves both training strategies: ``ovr`` (one binary logistic regression per
class) and ``multinomial`` (one softmax regression). They predict alike (the class of highest
score) and differ in their probabilities. With two classes there is one row of coefficients,
the score of ``classes[1]``, as in scikit-learn.

A model is saved as two files in a folder, never as a pickle:

* ``model.npz``: arrays ``coef`` (n_rows, n_features), ``intercept`` (n_rows,), ``classes``
  (n_classes,), where ``n_rows`` is ``n_classes``, or 1 for two classes;
* ``model.json``: format and version, the strategy, the digest of each array, and whatever
  metadata the caller adds (settings, data hash, library versions).

Format version 1 (distrib 0.1: one-vs-rest only, one row per class) is still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distrib.config import STRATEGIES
from distrib.errors import ConfigError, DataError, OutputError
from distrib.files import storage_error, write_json, write_npz

MODEL_FORMAT = "distrib-linear-model"
MODEL_FORMAT_VERSION = 2
# Every name the format has had (format 1 was "distrib-ovr-model"): recognised, so that an
# older file is refused by its version, with the fix, rather than as a stranger.
_FORMAT_NAMES = {"distrib-ovr-model", MODEL_FORMAT}
MODEL_ARRAYS = ("coef", "intercept", "classes")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


#: Rows scored at a time: the products' float64 copies (of a sparse matrix's values and
#: indices, or of dense rows) are of a slice, not of the whole input (562,500 sparse test
#: rows in one product took the driver from 0.4 to 1.6 GB).
SCORE_ROWS = 65_536


def _decision_block(X: Any, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    n_rows = X.shape[0]
    if n_rows <= SCORE_ROWS:
        return _decision_slice(X, coef, intercept)
    scores = np.empty((n_rows, coef.shape[0]))
    for start in range(0, n_rows, SCORE_ROWS):
        stop = min(start + SCORE_ROWS, n_rows)
        scores[start:stop] = _decision_slice(X[start:stop], coef, intercept)
    return scores


def _decision_slice(X: Any, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    if sp.issparse(X):
        if X.format == "csr" and X.indices.dtype not in (np.int32, np.int64):
            # a multinomial block's narrow column indices: scipy's products take int32
            X = sp.csr_matrix((X.data, X.indices.astype(np.int32), X.indptr), shape=X.shape)
        return np.asarray(X @ coef.T) + intercept
    return np.asarray(X, dtype=np.float64) @ coef.T + intercept


def _index_of_best(scores: np.ndarray) -> np.ndarray:
    """Row-wise winning class index; one column of scores means two classes."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(np.intp)
    return np.argmax(scores, axis=1)


def predict_codes(X: Any, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Each row's predicted class index (two classes: one row of ``coef``, 1 where its
    score is positive)."""
    return _index_of_best(_decision_block(X, coef, intercept))


def _predict_block(
    X: np.ndarray, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    return classes[_index_of_best(_decision_block(X, coef, intercept))]


def _proba_block(scores: np.ndarray, strategy: str) -> np.ndarray:
    if scores.shape[1] == 1:  # two classes: the sigmoid of classes[1]'s score
        positive = 1.0 / (1.0 + np.exp(-scores))
        return np.hstack([1.0 - positive, positive])
    if strategy == "multinomial":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    # One-vs-rest: each class's sigmoid, normalised to sum to one. In log space, so that a
    # row far from every class (all sigmoids underflow to 0) still gets finite probabilities.
    log_positive = -np.logaddexp(0.0, -scores)
    shifted = np.exp(log_positive - log_positive.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _is_dask_array(X: Any) -> bool:
    """Whether ``X`` is a Dask array, without importing dask.array where nothing has (a
    worker that evaluates blocks never does: ~0.25 s of its start)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(X, module.Array)


@dataclass(frozen=True)
class LinearModel:
    """Coefficients of a linear classifier: one row per class, or one row for two classes.

    Parameters
    ----------
    coef : ndarray of shape (n_classes, n_features), or (1, n_features) for two classes
    intercept : ndarray of shape (n_classes,), or (1,) for two classes
    classes : ndarray of shape (n_classes,)
    strategy : {"ovr", "multinomial"}
        How it was trained; decides `predict_proba` (normalised sigmoids or softmax).
    """

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    strategy: str = "ovr"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: expected one of {STRATEGIES}")
        if len(self.classes) < 2:
            raise DataError(f"a model needs at least 2 classes, got {len(self.classes)}")
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        if self.coef.ndim != 2 or self.coef.shape[0] != rows or self.intercept.shape != (rows,):
            raise DataError(
                f"{len(self.classes)} classes need coef of shape ({rows}, n_features) and "
                f"intercept ({rows},), got {self.coef.shape} and {self.intercept.shape}"
            )

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    def _check_input(self, X: Any) -> Any:
        if sp.issparse(X):
            X = X if X.format == "csr" else sp.csr_matrix(X)  # CSR as it is: narrow indices too
        elif not _is_dask_array(X):
            X = np.asarray(X)
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        if X.shape[1] != self.n_features:
            raise DataError(
                f"X has {X.shape[1]} features per row, the model expects {self.n_features}"
            )
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise DataError(f"X must hold numbers, got dtype {X.dtype}")
        return X

    def decision_function(self, X: Any) -> Any:
        """Scores ``X @ coef.T + intercept``, shape (n_samples, n_rows).

        ``X`` may be a numpy array, a SciPy sparse matrix, or a Dask array (the result is
        then lazy and chunked like ``X``).
        """
        X = self._check_input(X)
        if _is_dask_array(X):
            X = X.rechunk({1: -1})
            return X.map_blocks(
                _decision_block,
                self.coef,
                self.intercept,
                dtype=np.float64,
                chunks=(X.chunks[0], (self.coef.shape[0],)),
            )
        return _decision_block(X, self.coef, self.intercept)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, shape (n_samples, n_classes); lazy for Dask arrays.

        ``multinomial``: the softmax of the scores. ``ovr``: each class's sigmoid, normalised
        to sum to one (as scikit-learn's one-vs-rest does). Two classes: the sigmoid.
        """
        scores = self.decision_function(X)
        if _is_dask_array(scores):
            return scores.map_blocks(
                _proba_block,
                self.strategy,
                dtype=np.float64,
                chunks=(scores.chunks[0], (len(self.classes),)),
            )
        return _proba_block(scores, self.strategy)

    def predict(self, X: Any) -> Any:
        """The class of highest score per row (two classes: ``classes[1]`` where its score
        is positive); lazy (chunked) for Dask arrays."""
        X = self._check_input(X)
        if _is_dask_array(X):
            X = X.rechunk({1: -1})
            return X.map_blocks(
                _predict_block,
                self.coef,
                self.intercept,
                self.classes,
                dtype=self.classes.dtype,
                drop_axis=1,
            )
        return _predict_block(X, self.coef, self.intercept, self.classes)

    # --- files -------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write ``model.npz`` and ``model.json`` into ``folder``, each atomically."""
        from distrib._version import __version__

        folder = Path(folder)
        arrays = {"coef": self.coef, "intercept": self.intercept, "classes": self.classes}
        header = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "distrib_version": __version__,
            "strategy": self.strategy,
            "n_classes": len(self.classes),
            "n_features": self.n_features,
            "classes": self.classes.tolist(),
            "arrays_sha256": {name: _digest(a) for name, a in arrays.items()},
        }
        try:
            write_npz(folder / "model.npz", **arrays)
            write_json(folder / "model.json", {**header, **(metadata or {})})
        except OSError as exc:
            raise storage_error(
                "the model in", folder, exc, "free space there, or save it elsewhere"
            ) from exc

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> tuple[LinearModel, dict[str, Any]]:
        """Read a model folder; returns the model and its ``model.json`` content.

        Raises
        ------
        OutputError
            A file is missing, of another format or version, or fails its digest.
        """
        folder = Path(folder)
        json_path, npz_path = folder / "model.json", folder / "model.npz"
        for path in (json_path, npz_path):
            if not path.is_file():
                raise OutputError(
                    f"{path} is missing: {folder} is not a saved model "
                    "(train one with `distrib train --out DIR`)"
                )
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"{json_path} is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") not in _FORMAT_NAMES:
            raise OutputError(f"{json_path} is not a distrib model file (format {MODEL_FORMAT!r})")
        if (meta.get("format"), meta.get("format_version")) != (MODEL_FORMAT, MODEL_FORMAT_VERSION):
            raise OutputError(
                f"{json_path} has model format version {meta.get('format_version')!r}, written by "
                f"distrib {meta.get('distrib_version')}; this distrib reads version "
                f"{MODEL_FORMAT_VERSION}: retrain, or load it with that distrib version"
            )
        try:
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in MODEL_ARRAYS}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise OutputError(f"{npz_path} is corrupt or incomplete ({exc})") from exc
        expected = meta.get("arrays_sha256", {})
        for name, array in arrays.items():
            if expected.get(name) != _digest(array):
                raise OutputError(
                    f"{npz_path}: array {name!r} does not match the digest in {json_path.name} "
                    "(the files were changed or mixed from two runs): retrain or restore them"
                )
        coef, intercept, classes = arrays["coef"], arrays["intercept"], arrays["classes"]
        strategy = meta.get("strategy", "ovr")
        if strategy not in STRATEGIES:
            raise OutputError(f"{json_path} names an unknown strategy {strategy!r}")
        try:
            model = cls(coef=coef, intercept=intercept, classes=classes, strategy=strategy)
        except ValueError as exc:
            raise OutputError(f"{npz_path} has inconsistent shapes: {exc}") from exc
        return model, meta
