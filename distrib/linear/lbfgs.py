"""L-BFGS as scikit-learn's `LogisticRegression` runs it, written once for both solvers
(`distrib.linear.binary`'s lockstep problems and `distrib.linear.multinomial`'s softmax).

scikit-learn 1.9 minimises from zero with ``scipy.optimize.minimize(method="L-BFGS-B")``
and these options: ``maxiter=max_iter``, ``maxls=50``, ``gtol=tol``, ``ftol=64 * eps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the workers that evaluate blocks do without the optimizer
    import scipy.optimize


def lbfgs_options(tol: float, max_iter: int) -> dict[str, Any]:
    """scikit-learn's options for ``scipy.optimize.minimize(method="L-BFGS-B")``."""
    return {"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps}


def minimize_lbfgs(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    size: int,
    *,
    tol: float,
    max_iter: int,
    callback: Callable[[scipy.optimize.OptimizeResult], None] | None = None,
    start: np.ndarray | None = None,
) -> scipy.optimize.OptimizeResult:
    """Minimise ``objective`` (returning the value and its gradient) from ``start``
    (default: zero), over ``size`` coefficients, as scikit-learn does."""
    import scipy.optimize

    return scipy.optimize.minimize(
        objective,
        np.zeros(size) if start is None else np.array(start, dtype=np.float64),
        method="L-BFGS-B",
        jac=True,
        options=lbfgs_options(tol, max_iter),
        callback=callback,
    )
