"""The reducer: per-class fits -> one model and its per-class records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distrib.dispatch import BinaryFit
from distrib.errors import DistribError
from distrib.model import OneVsRestModel


def reduce_fits(
    fits: Sequence[BinaryFit], classes: np.ndarray
) -> tuple[OneVsRestModel, list[dict[str, Any]]]:
    """Assemble the ``(n_classes, n_features)`` coefficients, in the order of ``classes``.

    Returns
    -------
    model : OneVsRestModel
    records : list of dict
        One record per class, in class order (iterations, convergence, time, worker).
    """
    by_label = {fit.label: fit for fit in fits}
    missing = [int(c) for c in classes if int(c) not in by_label]
    if missing:
        raise DistribError(f"no fit arrived for class(es) {missing}")
    ordered = [by_label[int(c)] for c in classes]
    model = OneVsRestModel(
        coef=np.vstack([fit.coef for fit in ordered]),
        intercept=np.array([fit.intercept for fit in ordered], dtype=np.float64),
        classes=np.asarray(classes),
    )
    return model, [fit.record() for fit in ordered]
