"""Train/test splits: the notebook's, and MNIST's canonical 60,000 / 10,000.

A split is a pair of row-index arrays into the data set, so the same split can be applied
lazily to Dask arrays and reported (misclassified images keep their data set row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from distrib.data.datasets import Dataset
from distrib.data.grow import grow_rows
from distrib.errors import ConfigError, DataError

NOTEBOOK_RANDOM_STATE = 0
MNIST_CANONICAL_TRAIN = 60_000
#: Past this many bytes of pixels, the notebook split keeps the data set's row order: its
#: rows in a random order would make each chunk of them read from every chunk of the data
#: set, the whole data set read once per chunk (2.25 M rows: ~1.4 s a chunk, minutes in
#: all; 8.1 M: an hour). Spark's ``randomSplit`` and dask-ml's blockwise
#: ``train_test_split`` keep the order alike. The rows are the same, so is the optimum.
SHUFFLE_BYTES = 2**30


@dataclass(frozen=True)
class Split:
    """Row indices of the training and test parts of a data set."""

    name: str
    train_index: np.ndarray
    test_index: np.ndarray
    #: ``"shuffled"``: the rows in the order ``train_test_split`` gives them;
    #: ``"data"``: the same rows in the data set's order (`keeps_row_order`).
    order: str = "shuffled"


@dataclass(frozen=True)
class SplitArrays:
    """A data set after splitting and scaling, still lazy (Dask arrays)."""

    X_train: da.Array
    y_train: da.Array
    X_test: da.Array
    y_test: da.Array
    split: Split
    scale: str
    grow: int = 1
    deform: str = "shift"
    #: The training rows before scaling, where they are one-byte pixels (else None), and
    #: the float32 value the scaling gives each byte: rows kept as codes into that table
    #: (`distrib.parallel.row_store`) are the scaled rows, bit for bit.
    pixels_train: da.Array | None = None
    pixel_values: np.ndarray | None = None

    def local(self, *names: str) -> tuple[np.ndarray, ...]:
        """The named parts (``"X_train"``, ``"y_test"``, ...) computed here, together (the
        data set is read once), on threads."""
        return tuple(da.compute(*(getattr(self, name) for name in names), scheduler="threads"))


def shuffle_split(
    n_samples: int, test_size: float, random_state: int
) -> tuple[np.ndarray, np.ndarray]:
    """The row indices ``train_test_split(np.arange(n_samples), test_size=test_size,
    random_state=random_state)`` returns, computed as it does (`ShuffleSplit`: a
    ``RandomState`` permutation, the first ``ceil(test_size * n)`` rows for the test), with
    numpy alone: a run's driver need not import scikit-learn for it."""
    n_test = math.ceil(test_size * n_samples)
    permutation = np.random.RandomState(random_state).permutation(n_samples)
    return permutation[n_test:], permutation[:n_test]


def keeps_row_order(dataset: Dataset, kind: str) -> bool:
    """Whether a split of ``dataset`` keeps its rows in the data set's order: the notebook
    split of more than `SHUFFLE_BYTES` of pixels (the canonical split is in order anyway)."""
    return kind == "notebook" and int(dataset.X.nbytes) > SHUFFLE_BYTES


def make_split(dataset: Dataset, kind: str = "notebook") -> Split:
    """The row indices of a split.

    ``notebook`` equals ``train_test_split(X, y, test_size=..., random_state=0)`` on the
    whole data set (the permutation does not depend on the data, only on its length); past
    `SHUFFLE_BYTES` of pixels, the same rows in the data set's order (`keeps_row_order`).
    ``canonical`` is MNIST's original split: rows 0..59,999 train, the rest test.
    """
    n = dataset.n_samples
    if kind == "notebook":
        train_index, test_index = shuffle_split(n, dataset.test_fraction, NOTEBOOK_RANDOM_STATE)
        if keeps_row_order(dataset, kind):
            return Split("notebook", np.sort(train_index), np.sort(test_index), "data")
        return Split("notebook", train_index, test_index)
    if kind == "canonical":
        if dataset.name != "mnist":
            raise ConfigError(
                f"split 'canonical' exists only for MNIST, not {dataset.name!r}: "
                "use --split notebook"
            )
        return Split(
            "canonical", np.arange(MNIST_CANONICAL_TRAIN), np.arange(MNIST_CANONICAL_TRAIN, n)
        )
    raise ConfigError(f"unknown split {kind!r}: expected 'notebook' or 'canonical'")


def scale_pixels(X: Any, pixel_max: float, scale: str) -> Any:
    """Pixels as float32: divided by ``pixel_max`` (``unit``) or as they are (``raw``)."""
    if scale == "unit":  # one float32 result, no float32 copy before the division
        return np.divide(X, np.float32(pixel_max), dtype=np.float32)
    if scale == "raw":
        return X.astype(np.float32)
    raise ConfigError(f"unknown scale {scale!r}: expected 'unit' or 'raw'")


def split_arrays(
    dataset: Dataset,
    kind: str = "notebook",
    scale: str = "unit",
    grow: int = 1,
    deform: str = "shift",
) -> SplitArrays:
    """Apply a split and a scaling to a data set, lazily.

    ``grow`` > 1 makes the training part that many variants of each training image
    (`distrib.data.grow`: shifts, or elastic deformations with ``deform="elastic"``),
    variant by variant; the test part stays the data set's own.
    """
    if grow != 1 and deform == "elastic" and dataset.X.dtype != np.uint8:
        raise ConfigError(
            f"elastic deformations make one-byte pixels, and {dataset.name}'s are "
            f"{dataset.X.dtype}: use --deform shift"
        )
    split = make_split(dataset, kind)
    X_train = dataset.X[split.train_index]
    y_train = dataset.y[split.train_index]
    if grow != 1:
        X_train = grow_rows(X_train, split.train_index, grow, dataset.image_shape, deform)
        y_train = da.concatenate([y_train] * grow)
    one_byte = X_train.dtype == np.uint8
    values = scale_pixels(np.arange(256, dtype=np.uint8), dataset.pixel_max, scale)
    return SplitArrays(
        X_train=scale_pixels(X_train, dataset.pixel_max, scale),
        y_train=y_train,
        X_test=scale_pixels(dataset.X[split.test_index], dataset.pixel_max, scale),
        y_test=dataset.y[split.test_index],
        split=split,
        scale=scale,
        grow=grow,
        deform=deform,
        pixels_train=X_train if one_byte else None,
        pixel_values=values if one_byte else None,
    )


def compact_labels(y: np.ndarray) -> np.ndarray:
    """Whole-number labels in the smallest integer type that holds them (MNIST's: one byte,
    8.1 million of them 8 MB instead of 65); other labels as they are."""
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.size == 0:
        return y
    dtype = np.result_type(np.min_scalar_type(y.min()), np.min_scalar_type(y.max()))
    return y.astype(dtype, copy=False)


def check_labels(y_train: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """The classes to fit; refuses splits that cannot give a classifier (of either
    strategy)."""
    classes = np.unique(y_train)
    if classes.size < 2:
        raise DataError(
            f"the training split holds {classes.size} class(es) {classes.tolist()}; a "
            "classifier needs at least 2: give --data rows of two classes or more"
        )
    unseen = np.setdiff1d(np.unique(y_test), classes)
    if unseen.size:
        raise DataError(
            f"the test split holds label(s) {unseen.tolist()} that the training split lacks"
        )
    untested = np.setdiff1d(classes, np.unique(y_test))
    if untested.size:
        raise DataError(
            f"the test split has no sample of class(es) {untested.tolist()}: their recall "
            "could not be measured; use a larger test split"
        )
    return classes
