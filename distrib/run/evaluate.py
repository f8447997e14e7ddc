"""Scores of a fitted model: accuracies, confusion matrix, per-class report, mistakes."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


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
    matrix = confusion_matrix(y_test, test_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_test, test_pred, labels=labels, zero_division=0
    )
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
