"""The run's scores, computed with numpy: the same numbers as scikit-learn's metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from distrib.run.evaluate import confusion, evaluate, per_class_scores


@pytest.mark.parametrize("seed", range(4))
def test_confusion_and_per_class_scores_are_scikit_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.array([0, 3, 5, 7, 9])
    true = rng.choice(labels, 500)
    predicted = np.where(rng.random(500) < 0.7, true, rng.choice(labels[:-1], 500))
    if seed == 3:  # a class nobody predicts and one absent from the truth: zero divisions
        predicted[predicted == 5] = 0
        true[true == 7] = 3
    matrix = confusion(labels, true, predicted)
    np.testing.assert_array_equal(matrix, confusion_matrix(true, predicted, labels=labels))
    ours = per_class_scores(matrix)
    theirs = precision_recall_fscore_support(true, predicted, labels=labels, zero_division=0)
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, reference)


def test_confusion_keeps_the_given_label_order_and_drops_unknown_labels() -> None:
    labels = np.array([2, 1])
    matrix = confusion(labels, np.array([1, 2, 2, 4]), np.array([2, 2, 1, 1]))
    np.testing.assert_array_equal(matrix, confusion_matrix([1, 2, 2, 4], [2, 2, 1, 1],
                                                           labels=labels))  # fmt: skip


def test_evaluate_reports_what_the_notebook_did() -> None:
    classes = np.array([0, 1, 2])
    y_test, test_pred = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1])
    metrics = evaluate(classes, y_test, y_test, y_test, test_pred, np.array([10, 11, 12, 13, 14]))
    assert metrics["test_accuracy"] == pytest.approx(0.8) and metrics["train_accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    assert metrics["misclassified"] == {"test_position": [1], "dataset_index": [11],
                                        "true": [1], "predicted": [2]}  # fmt: skip
    assert [c["support"] for c in metrics["per_class"]] == [1, 2, 2]
    assert metrics["per_class"][2]["precision"] == pytest.approx(2 / 3)
