"""The fitted one-vs-rest model: prediction on numpy or Dask arrays, and its files.

A model is saved as two files in a folder, never as a pickle:

* ``model.npz``: arrays ``coef`` (n_classes, n_features), ``intercept`` (n_classes,),
  ``classes`` (n_classes,);
* ``model.json``: format and version, the digest of each array, and whatever metadata the
  caller adds (settings, data hash, library versions).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp

from distrib.errors import DataError, OutputError
from distrib.files import write_json, write_npz

MODEL_FORMAT = "distrib-ovr-model"
MODEL_FORMAT_VERSION = 1
MODEL_ARRAYS = ("coef", "intercept", "classes")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _decision_block(X: Any, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    if sp.issparse(X):
        return np.asarray(X @ coef.T) + intercept
    return np.asarray(X, dtype=np.float64) @ coef.T + intercept


def _predict_block(
    X: np.ndarray, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    return classes[np.argmax(_decision_block(X, coef, intercept), axis=1)]


@dataclass(frozen=True)
class OneVsRestModel:
    """Coefficients of one binary logistic regression per class.

    Parameters
    ----------
    coef : ndarray of shape (n_classes, n_features)
    intercept : ndarray of shape (n_classes,)
    classes : ndarray of shape (n_classes,)
    """

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    def _check_input(self, X: Any) -> Any:
        if sp.issparse(X):
            X = sp.csr_matrix(X)
        elif not isinstance(X, da.Array):
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
        """Per-class scores ``X @ coef.T + intercept``.

        ``X`` may be a numpy array, a SciPy sparse matrix, or a Dask array (the result is
        then lazy and chunked like ``X``).
        """
        X = self._check_input(X)
        if isinstance(X, da.Array):
            X = X.rechunk({1: -1})
            return X.map_blocks(
                _decision_block,
                self.coef,
                self.intercept,
                dtype=np.float64,
                chunks=(X.chunks[0], (len(self.classes),)),
            )
        return _decision_block(X, self.coef, self.intercept)

    def predict(self, X: Any) -> Any:
        """The class of highest score per row; lazy (chunked) for Dask arrays."""
        X = self._check_input(X)
        if isinstance(X, da.Array):
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
        from distrib import __version__

        folder = Path(folder)
        arrays = {"coef": self.coef, "intercept": self.intercept, "classes": self.classes}
        header = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "distrib_version": __version__,
            "n_classes": len(self.classes),
            "n_features": self.n_features,
            "classes": self.classes.tolist(),
            "arrays_sha256": {name: _digest(a) for name, a in arrays.items()},
        }
        write_npz(folder / "model.npz", **arrays)
        write_json(folder / "model.json", {**header, **(metadata or {})})

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> tuple[OneVsRestModel, dict[str, Any]]:
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
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise OutputError(f"{json_path} is not a distrib model file (format {MODEL_FORMAT!r})")
        if meta.get("format_version") != MODEL_FORMAT_VERSION:
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
        if (
            coef.ndim != 2
            or intercept.shape != (coef.shape[0],)
            or classes.shape != (coef.shape[0],)
        ):
            raise OutputError(
                f"{npz_path} has inconsistent shapes coef {coef.shape}, intercept "
                f"{intercept.shape}, classes {classes.shape}"
            )
        return cls(coef=coef, intercept=intercept, classes=classes), meta
