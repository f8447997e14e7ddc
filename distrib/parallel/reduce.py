"""The reducer: per-class fits -> one model and its per-class records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distrib.errors import ClusterError
from distrib.parallel.dispatch import BinaryFit


def reduce_fits(
    fits: Sequence[BinaryFit], labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Assemble the binary fits' coefficients, one row per label, in the order of ``labels``.

    ``labels`` are the classes fitted as positive: all classes, or ``classes[1]`` alone for
    two classes (the rows of a `distrib.linear.model.LinearModel`).

    Returns
    -------
    coef : ndarray of shape (n_labels, n_features)
    intercept : ndarray of shape (n_labels,)
    records : list of dict
        One record per label, in label order (iterations, convergence, time, worker).
    """
    by_label = {fit.label: fit for fit in fits}
    missing = [int(c) for c in labels if int(c) not in by_label]
    if missing:
        raise ClusterError(f"no fit arrived for class(es) {missing}")
    ordered = [by_label[int(c)] for c in labels]
    coef = np.vstack([fit.coef for fit in ordered])
    intercept = np.array([fit.intercept for fit in ordered], dtype=np.float64)
    return coef, intercept, [fit.record() for fit in ordered]
