"""Predict with a saved model: on the run's own test split, or on a user's ``.npy`` images.

The model is read back as the estimator that ``distrib train`` fitted
(`distrib.estimator.DaskLogisticRegression.load`), which predicts.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distrib.data.arrays import load_arrays
from distrib.data.datasets import load_dataset
from distrib.data.split import scale_pixels, split_arrays
from distrib.errors import DataError, OutputError
from distrib.estimator import DaskLogisticRegression
from distrib.files import write_npy


def _load_npy(path: str | os.PathLike[str], what: str) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"{what} file {path} does not exist") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0]
        raise DataError(f"{what} file {path} is not a readable .npy array ({reason})") from exc
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise DataError(f"{what} file {path} is an .npz archive, expected one .npy array")
    return loaded


def check_images(
    X: np.ndarray,
    source: str,
    n_features: int,
    image_shape: tuple[int, ...],
    pixel_max: float | None,
) -> np.ndarray:
    """Raw images as ``(n, n_features)``; refuses wrong shapes, dtypes and values
    (outside ``[0, pixel_max]``; None: any finite value, as for arrays of your own).

    Parameters
    ----------
    X : ndarray
        ``(n, n_features)`` or ``(n, height, width)`` raw pixel values.
    source : str
        Named in error messages (a file path).
    """
    if X.dtype.kind not in "uif":
        raise DataError(f"{source} holds dtype {X.dtype}, expected numbers (uint8 or float)")
    if image_shape and X.ndim == 3 and tuple(X.shape[1:]) == tuple(image_shape):
        X = X.reshape(len(X), -1)
    if X.ndim != 2 or X.shape[1] != n_features:
        shape = "x".join(str(s) for s in image_shape)
        images = f" or (n, {shape}) images" if image_shape else " rows"
        raise DataError(
            f"{source} has shape {X.shape}, expected (n, {n_features}){images} like the "
            "model's training data"
        )
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise DataError(f"{source} holds NaN or infinite values")
    low, high = (float(X.min()), float(X.max())) if X.size else (0.0, 0.0)
    if pixel_max is not None and (low < 0 or high > pixel_max):
        raise DataError(
            f"{source} holds values in [{low:g}, {high:g}], expected raw pixels in "
            f"[0, {pixel_max}] (distrib applies the model's own scaling)"
        )
    return X


def _predict_test_split(
    estimator: DaskLogisticRegression, data: dict[str, Any], home: Any
) -> tuple[np.ndarray, np.ndarray, str]:
    """Predict the saved run's test split, rebuilt from the cache (or the user's arrays):
    the predictions, the true labels, and what was predicted."""
    own = data["dataset"] == "data"  # arrays of the user's own, from data["source"]
    dataset = load_arrays(data["source"]) if own else load_dataset(data["dataset"], home)
    if dataset.X_sha256 != data.get("X_sha256"):
        raise DataError(
            f"the cached {dataset.name} differs from the data this model was trained on "
            "(sha256): pass --input with your own images"
        )
    parts = split_arrays(dataset, data["split"], data["scale"])
    pred = estimator.predict(parts.X_test).compute(scheduler="threads")
    (y,) = parts.local("y_test")
    return pred, y, f"{dataset.name} {data['split']} test split"


def _predict_images(
    estimator: DaskLogisticRegression,
    data: dict[str, Any],
    input_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict the raw images of a ``.npy`` file, scaled as the model's training pixels
    were; the predictions, and the true labels if a labels file is given (checked)."""
    own = data["dataset"] == "data"
    X = check_images(
        _load_npy(input_path, "input"),
        str(input_path),
        estimator.n_features_in_,
        tuple(data.get("image_shape") or ()),
        None if own else float(data.get("pixel_max", 255)),
    )
    X_scaled = scale_pixels(X, float(data.get("pixel_max", 255)), data["scale"])
    pred = estimator.predict(np.asarray(X_scaled))
    if labels_path is None:
        return pred, None
    y = _load_npy(labels_path, "labels")
    if y.shape != (len(X),):
        raise DataError(
            f"labels file {labels_path} has shape {y.shape}, expected ({len(X)},) "
            f"to match {input_path}"
        )
    return pred, y


def predict_saved(
    model_dir: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    labels_path: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Predict with the model saved in ``model_dir``.

    Parameters
    ----------
    model_dir : path
        A run folder with ``model.npz`` and ``model.json``.
    input_path : path, optional
        A ``.npy`` of raw images; default: the run's test split, rebuilt from the cache.
    labels_path : path, optional
        A ``.npy`` of true labels for ``input_path``, to report the accuracy.
    output : path, optional
        Where to write the predictions as ``.npy`` (atomically).
    home : path, optional
        The data cache folder.

    Returns
    -------
    dict
        ``n_samples``, ``accuracy`` (when labels are known), prediction counts per class.
    """
    estimator = DaskLogisticRegression.load(model_dir)
    meta = estimator.saved_metadata_
    data = meta.get("data")
    if not isinstance(data, dict) or not {"dataset", "split", "scale"} <= set(data):
        raise OutputError(f"{Path(model_dir) / 'model.json'} lacks its 'data' section")
    y: np.ndarray | None
    if input_path is None:
        pred, y, source = _predict_test_split(estimator, data, home)
    else:
        pred, y = _predict_images(estimator, data, input_path, labels_path)
        source = str(input_path)
    if output is not None:
        try:
            write_npy(output, pred)
        except OSError as exc:
            raise OutputError(f"cannot write predictions to {output}: {exc}") from exc
    values, counts = np.unique(pred, return_counts=True)
    summary: dict[str, Any] = {
        "model": str(model_dir),
        "input": source,
        "n_samples": len(pred),
        "predicted_counts": {str(v): int(c) for v, c in zip(values, counts, strict=True)},
    }
    if y is not None:
        summary["accuracy"] = float(np.mean(pred == y))
    if output is not None:
        summary["output"] = str(output)
    return summary
