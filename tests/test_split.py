from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from distrib.data import split as split_module
from distrib.data.datasets import load_dataset, load_mnist
from distrib.data.split import check_labels, make_split, split_arrays
from distrib.errors import ConfigError, DataError
from distrib.parallel.prepared import prepared_folder, split_key


def test_digits_notebook_split_is_the_notebooks() -> None:
    digits = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0
    )
    parts = split_arrays(load_dataset("digits"), "notebook", "raw")
    np.testing.assert_array_equal(parts.X_train.compute(), X_tr)
    np.testing.assert_array_equal(parts.X_test.compute(), X_te)
    np.testing.assert_array_equal(parts.y_train.compute(), y_tr)
    np.testing.assert_array_equal(parts.y_test.compute(), y_te)
    assert parts.X_train.dtype == np.float32


def test_past_shuffle_bytes_the_notebook_rows_keep_the_data_set_s_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Past `SHUFFLE_BYTES` of pixels the split holds the notebook's rows, train and test,
    in the data set's order (its chunks then read once, not once per chunk); its prepared
    files get a folder of their own, never the shuffled rows' cached ones."""
    digits = load_dataset("digits")
    shuffled = split_arrays(digits, "notebook", "raw")
    shuffled_key = split_key(digits, "notebook", "raw")
    monkeypatch.setattr(split_module, "SHUFFLE_BYTES", int(digits.X.nbytes) - 1)
    ordered = split_arrays(digits, "notebook", "raw")
    assert (shuffled.split.order, ordered.split.order) == ("shuffled", "data")
    for part in ("train_index", "test_index"):
        indices = getattr(ordered.split, part)
        assert np.array_equal(indices, np.sort(getattr(shuffled.split, part)))
    X, y = (np.asarray(a) for a in (digits.X, digits.y))
    index = ordered.split.train_index
    np.testing.assert_array_equal(ordered.X_train.compute(), X[index])
    np.testing.assert_array_equal(ordered.y_train.compute(), y[index])
    np.testing.assert_array_equal(ordered.y_test.compute(), y[ordered.split.test_index])
    ordered_key = split_key(digits, "notebook", "raw")
    assert ordered_key == {**shuffled_key, "order": "data"}
    assert prepared_folder(tmp_path, ordered_key) != prepared_folder(tmp_path, shuffled_key)
    again = load_dataset("digits")
    assert split_key(again, "notebook", "raw") == ordered_key  # as decided, repeatably


def test_mnist_notebook_split_is_the_notebooks(
    mnist_home: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = mnist_arrays
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=1 / 7, random_state=0)
    split = make_split(load_mnist(mnist_home, fetch=False), "notebook")
    assert (len(split.train_index), len(split.test_index)) == (60_000, 10_000)
    np.testing.assert_array_equal(X[split.train_index], X_tr)
    np.testing.assert_array_equal(X[split.test_index], X_te)
    np.testing.assert_array_equal(y[split.test_index], y_te)
    np.testing.assert_array_equal(y[split.train_index], y_tr)


def test_mnist_canonical_split_and_unit_scale(
    mnist_home: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = mnist_arrays
    parts = split_arrays(load_mnist(mnist_home, fetch=False), "canonical", "unit")
    np.testing.assert_array_equal(parts.split.train_index, np.arange(60_000))
    np.testing.assert_array_equal(parts.y_test.compute(), y[60_000:])
    head = parts.X_test[:100].compute()
    np.testing.assert_allclose(head, X[60_000:60_100] / 255.0, rtol=1e-6)
    assert head.dtype == np.float32 and head.max() <= 1.0


def test_canonical_split_needs_mnist() -> None:
    with pytest.raises(ConfigError, match="only for MNIST"):
        make_split(load_dataset("digits"), "canonical")


def test_labels_the_model_cannot_learn_are_refused() -> None:
    with pytest.raises(DataError, match=r"training split holds 1 class\(es\) \[3\]; a classifier"):
        check_labels(np.array([3, 3, 3]), np.array([3]))  # either strategy, not "one-vs-rest"
    with pytest.raises(DataError, match=r"test split holds label\(s\) \[9\]"):
        check_labels(np.array([0, 1, 1]), np.array([0, 9]))
    with pytest.raises(DataError, match=r"test split has no sample of class\(es\) \[2\]"):
        check_labels(np.array([2, 0, 2]), np.array([0]))
    np.testing.assert_array_equal(check_labels(np.array([2, 0, 2]), np.array([0, 2])), [0, 2])


@pytest.mark.parametrize("n", [2, 7, 100, 1797, 4999, 70_000])
@pytest.mark.parametrize("test_size", [0.25, 1 / 7, 0.3, 0.5])
def test_shuffle_split_is_train_test_split(n: int, test_size: float) -> None:
    """The numpy split the driver uses gives scikit-learn's indices, for any size."""
    from distrib.data.split import shuffle_split

    expected_train, expected_test = train_test_split(
        np.arange(n), test_size=test_size, random_state=0
    )
    train, test = shuffle_split(n, test_size, 0)
    np.testing.assert_array_equal(train, expected_train)
    np.testing.assert_array_equal(test, expected_test)
