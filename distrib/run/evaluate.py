"""Scores of a fitted model: accuracies, confusion matrix, per-class report, mistakes."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(labels: np.ndarray, true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of (true, predicted) pairs, rows and columns in the order of ``labels``, as
    `sklearn.metrics.confusion_matrix` (pairs with a label outside ``labels`` are left out).
    """
    labels = np.asarray(labels)
    n = len(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]

    def index(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        at = np.clip(np.searchsorted(sorted_labels, values), 0, max(n - 1, 0))
        found = sorted_labels[at] == values if n else np.zeros(len(values), bool)
        return np.where(found, order[at], -1)

    rows, cols = index(true), index(predicted)
    keep = (rows >= 0) & (cols >= 0)
    return np.bincount(rows[keep] * n + cols[keep], minlength=n * n).reshape(n, n)


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 and support per class from a confusion matrix, 0 where a ratio
    has no denominator: `sklearn.metrics.precision_recall_fscore_support` with
    ``zero_division=0`` (the same divisions, so the same floats)."""
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        out = np.zeros(len(top))
        np.divide(top, bottom, out=out, where=bottom != 0)
        return out

    f1 = ratio(2 * true_positive, (support + predicted).astype(np.float64))
    return ratio(true_positive, predicted), ratio(true_positive, support), f1, support


def evaluate(
    classes: np.ndarray,
    y_train: np.ndarray,
    train_pred: np.ndarray,
    y_test: np.ndarray,
    test_pred: np.ndarray,
    test_index: np.ndarray,
) -> dict[str, Any]:
    """Everything the notebook reported, as JSON-ready values.

    Parameters
    ----------
    classes : ndarray
        The model's classes (rows and columns of the confusion matrix, in this order).
    y_train, train_pred, y_test, test_pred : ndarray
        True and predicted labels of both splits.
    test_index : ndarray
        Row of each test sample in the whole data set.

    Returns
    -------
    dict
        ``train_accuracy``, ``test_accuracy``, ``confusion_matrix`` (rows true, columns
        predicted), ``classes``, ``per_class`` (precision, recall, f1, support) and
        ``misclassified`` (test position, data set row, true and predicted label).
    """
    labels = np.asarray(classes)
    matrix = confusion(labels, y_test, test_pred)
    precision, recall, f1, support = per_class_scores(matrix)
    wrong = np.flatnonzero(test_pred != y_test)
    return {
        "train_accuracy": float(np.mean(train_pred == y_train)),
        "test_accuracy": float(np.mean(test_pred == y_test)),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "class_counts": {
            "train": [int(np.sum(y_train == c)) for c in labels],
            "test": [int(np.sum(y_test == c)) for c in labels],
        },
        "classes": labels.tolist(),
        "confusion_matrix": matrix.tolist(),
        "per_class": [
            {
                "class": int(c),
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for c, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        ],
        "misclassified": {
            "test_position": wrong.tolist(),
            "dataset_index": np.asarray(test_index)[wrong].tolist(),
            "true": np.asarray(y_test)[wrong].tolist(),
            "predicted": np.asarray(test_pred)[wrong].tolist(),
        },
    }
