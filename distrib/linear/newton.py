"""Newton-CG with a sampled Hessian: the multinomial fit in a fraction of L-BFGS's passes.

Each iteration takes the objective's gradient from one pass over every row (the blocks, as
L-BFGS does) and solves the Newton system with conjugate gradients on the Hessian of a
fixed sample of the rows (`RowSample`: every ``stride``-th row, held by the driver, ~20,000
rows whatever the data's size), preconditioned by a Kronecker factorisation of that Hessian
(the classes' mean curvature times the features' second moments, K-FAC). The step is
tried whole first, then halved until the objective falls enough (Armijo); each trial is a
pass whose gradient the next iteration uses (the next search starts from the step taken, or
twice it where it needed no halving). The CG work touches only the sample, in this
process; the passes are the only work on the blocks.

The fit stops when the gradient's largest entry is at most ``tol`` (as scikit-learn's
``newton-cg`` and ``lbfgs`` do: the meaning of ``tol`` for every solver here), when the
objective has no precision left to show a Newton step's fall (converged, as L-BFGS-B's
relative-reduction test: `SampledHessian.precision`), after ``max_iter`` iterations, or
when no step along the direction lowers the objective.

Measured (`docs/strategies.md`; scripts/results/solvers-2cores.json): on MNIST, 11 passes
for test accuracy 0.9195 at the defaults and 15 to within 1e-6 of the optimum's objective,
against L-BFGS's 106 and 278; on 8.1 million rows streamed from disk, 30 passes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from distrib.linear import softmax

#: Rows of the Hessian's sample: every ``n_rows // HESSIAN_ROWS``-th row (all rows below
#: twice this). Measured on MNIST's 60,000 training rows (a one-process prototype): 20,000
#: rows reach 1e-6 in 14 passes, 10,000 in 37, 5,000 in 80.
HESSIAN_ROWS = 20_000
#: Rows of the sample that give the preconditioner's feature moments (a 785 x 785 matrix),
#: and how many of them are made dense at a time.
GRAM_ROWS = 5_000
GRAM_CHUNK = 1_000
#: Parts of the sample whose products run in threads, summed in this order: the same bits
#: on any number of cores (the workers wait while the driver solves, so its cores are free).
PRODUCT_PARTS = 4
#: Conjugate-gradient iterations per Newton step, at most (scikit-learn's newton-cg: 200).
MAX_CG = 200
#: The CG's relative residual: ``min(0.5, sqrt(||g||))`` (scikit-learn's newton-cg), but at
#: least this: the sample's Hessian is not the objective's, so a finer solve gains no pass.
#: Measured on MNIST (the same prototype): 0.1 cuts the products from 70 to 50 passes'
#: worth, 14 passes as before.
MIN_FORCING = 0.1
#: Step halvings tried before the line search gives up (each a pass over the rows; a
#: Newton step is taken whole but where the objective has no more precision to show).
MAX_HALVINGS = 10
#: The Armijo condition's fraction of the predicted decrease.
ARMIJO = 1e-4


@dataclass(frozen=True)
class RowSample:
    """Rows of the training matrix held for the Hessian: ``X`` (CSR), each row's class
    index ``codes``, and its sample weight (``weights``; None: 1 each)."""

    X: sp.csr_matrix
    codes: np.ndarray
    weights: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])


def joined(samples: list[RowSample]) -> RowSample:
    """The samples' rows one after another."""
    weights = None
    if any(s.weights is not None for s in samples):
        weights = np.concatenate([np.ones(s.n_rows) if s.weights is None else s.weights
                                  for s in samples])  # fmt: skip
    X = sp.csr_matrix(sp.vstack([s.X for s in samples], format="csr"))
    return RowSample(X, np.concatenate([s.codes for s in samples]), weights)


def _row_range(X: sp.csr_matrix, lo: int, hi: int) -> sp.csr_matrix:
    """Rows ``lo:hi`` of ``X`` as a CSR matrix on its very values and columns (scipy's
    slicing and constructor copy them)."""
    first, last = int(X.indptr[lo]), int(X.indptr[hi])
    indptr = X.indptr[lo : hi + 1] - first
    return softmax.block_csr((hi - lo, X.shape[1]), X.data[first:last], X.indices[first:last],
                             indptr)  # fmt: skip


def sample_stride(n_rows: int, sample_rows: int = HESSIAN_ROWS) -> int:
    """Every how many rows the Hessian's sample takes one: ``sample_rows`` to twice as
    many rows (all of them below twice ``sample_rows``)."""
    return max(1, n_rows // sample_rows)


def stride_rows(start: int, n_rows: int, stride: int) -> np.ndarray:
    """The positions, within rows ``start:start + n_rows`` of the whole matrix, of those
    whose index is a multiple of ``stride`` (the same sample however the rows are cut)."""
    return np.arange((-start) % stride, n_rows, stride)


class SampledHessian:
    """The objective's Hessian on a row sample, and its Kronecker preconditioner.

    Parameters
    ----------
    sample : RowSample
    n_classes : int
    class_weights : ndarray of shape (n_classes,) or None
        Each class's weight (the objective's).
    penalty : float
        The objective's L2 factor on the coefficients (the intercept is not penalised).
    fit_intercept : bool
    """

    def __init__(
        self,
        sample: RowSample,
        n_classes: int,
        class_weights: np.ndarray | None,
        penalty: float,
        fit_intercept: bool,
    ) -> None:
        self.X = sample.X
        # the objective's relative precision: the rows' products are in their dtype
        self.precision = float(np.finfo(self.X.dtype).eps)
        weights = sample.weights
        if class_weights is not None:
            by_class = np.asarray(class_weights, float)[sample.codes]
            weights = by_class if weights is None else weights * by_class
        self.weights = None if weights is None else np.asarray(weights, float)
        self.total = float(sample.n_rows if weights is None else np.sum(weights))
        self.n_classes, self.penalty, self.fit_intercept = n_classes, penalty, fit_intercept
        self.products = 0
        self.P = np.zeros((sample.n_rows, n_classes))
        bounds = [int(b) for b in np.linspace(0, sample.n_rows, PRODUCT_PARTS + 1)]
        self.parts = [(lo, hi, _row_range(self.X, lo, hi)) for lo, hi in itertools.pairwise(bounds)]
        self._threads = ThreadPoolExecutor(min(PRODUCT_PARTS, os.cpu_count() or 1))
        gram = self._feature_moments()
        self.gram_values, self.gram_vectors = np.linalg.eigh(gram)
        self.class_values = np.ones(n_classes)
        self.class_vectors = np.eye(n_classes)

    def _feature_moments(self) -> np.ndarray:
        """``sum_i w_i x~_i x~_i^T / sum_i w_i`` over the sample's first `GRAM_ROWS` rows
        (``x~_i``: the row and a 1 for the intercept), `GRAM_CHUNK` rows made dense at a
        time (the driver holds ~6 MB of them, not the rows whole)."""
        rows = min(self.X.shape[0], GRAM_ROWS)
        weights = np.ones(rows) if self.weights is None else self.weights[:rows]
        moments = np.zeros((self.X.shape[1] + 1, self.X.shape[1] + 1))
        for lo in range(0, rows, GRAM_CHUNK):
            hi = min(rows, lo + GRAM_CHUNK)
            dense = np.ones((hi - lo, self.X.shape[1] + 1))
            dense[:, :-1] = _row_range(self.X, lo, hi).toarray()
            moments += (dense.T * weights[lo:hi]) @ dense
        return moments / max(float(weights.sum()), 1e-300)

    def at(self, W: np.ndarray) -> None:
        """Take the Hessian at coefficients ``W`` (classes x (features + 1), intercept
        last): the sample's probabilities, and the classes' mean curvature."""
        self.P = softmax.probabilities(self.X, W[:, :-1], W[:, -1])
        weighted = self.P if self.weights is None else self.P * self.weights[:, None]
        curvature = (np.diag(weighted.sum(axis=0)) - weighted.T @ self.P) / self.total
        self.class_values, self.class_vectors = np.linalg.eigh(curvature)

    def product(self, V: np.ndarray) -> np.ndarray:
        """The Hessian times the direction ``V`` (classes x (features + 1)): the sample's
        parts in threads, summed in a fixed order."""
        self.products += 1

        def part(rows: tuple[int, int, sp.csr_matrix]) -> np.ndarray:
            lo, hi, X = rows
            weights = None if self.weights is None else self.weights[lo:hi]
            return softmax.hessian_product(X, self.P[lo:hi], weights, V)

        sums = list(self._threads.map(part, self.parts))
        H = sums[0]
        for more in sums[1:]:
            H = H + more
        H /= self.total
        H[:, :-1] += self.penalty * V[:, :-1]
        if not self.fit_intercept:
            H[:, -1] = 0.0
        return H

    def close(self) -> None:
        """End the products' threads."""
        self._threads.shutdown()

    def precondition(self, R: np.ndarray) -> np.ndarray:
        """``R`` divided by the Kronecker approximation of the Hessian (the classes' mean
        curvature times the features' moments, plus the penalty)."""
        Qa, Qg = self.class_vectors, self.gram_vectors
        scale = np.outer(self.class_values, self.gram_values) + self.penalty
        Z = Qa @ ((Qa.T @ R @ Qg) / scale) @ Qg.T
        if not self.fit_intercept:
            Z[:, -1] = 0.0
        return Z


def conjugate_gradient(
    hessian: SampledHessian, g: np.ndarray, tol: float, max_iter: int = MAX_CG
) -> tuple[np.ndarray, int]:
    """An approximate solution of ``H d = -g`` (preconditioned CG from zero, stopped when
    the residual's norm is at most ``tol`` or the curvature of a direction is not
    positive), and the iterations it took."""
    d = np.zeros_like(g)
    r = -g
    z = hessian.precondition(r)
    p = z.copy()
    rz = float(np.sum(r * z))
    for iteration in range(max_iter):
        if float(np.sqrt(np.sum(r * r))) <= tol:
            return d, iteration
        Hp = hessian.product(p)
        curvature = float(np.sum(p * Hp))
        if curvature <= 0.0:
            return (d if iteration else z), iteration
        alpha = rz / curvature
        d = d + alpha * p
        r = r - alpha * Hp
        z = hessian.precondition(r)
        rz, previous = float(np.sum(r * z)), rz
        p = z + (rz / previous) * p
    return d, max_iter


@dataclass
class NewtonResult:
    """Where Newton-CG stopped, and what it did on the way."""

    W: np.ndarray
    fun: float
    grad_max: float
    n_iter: int
    converged: bool
    message: str
    cg_iterations: list[int] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    hessian_seconds: float = 0.0


def minimize_newton(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    hessian: SampledHessian,
    shape: tuple[int, int],
    *,
    tol: float,
    max_iter: int,
    callback: Callable[[int, float], None] | None = None,
) -> NewtonResult:
    """Minimise ``objective`` (its value and gradient at coefficients of ``shape``: classes
    x (features + 1)) from zero with Newton-CG on ``hessian``.

    ``callback(iteration, value)`` is called after each iteration."""
    W = np.zeros(shape)
    f, g = objective(W)
    first_step = 1.0
    result = NewtonResult(W, f, float(np.max(np.abs(g))), 0, False, "")
    for iteration in range(1, max_iter + 1):
        if result.grad_max <= tol:
            break
        started = time.perf_counter()
        hessian.at(W)
        norm = float(np.sqrt(np.sum(g * g)))
        forcing = max(MIN_FORCING, min(0.5, np.sqrt(norm)))
        d, cg = conjugate_gradient(hessian, g, forcing * norm)
        slope = float(np.sum(g * d))
        if slope >= 0.0:  # not a descent direction (rounding): the preconditioned gradient
            d = -hessian.precondition(g)
            slope = float(np.sum(g * d))
        result.hessian_seconds += time.perf_counter() - started
        step = first_step
        for _ in range(MAX_HALVINGS):
            trial, g_trial = objective(W + step * d)
            if trial <= f + ARMIJO * step * slope:
                break
            if -slope <= hessian.precision * max(abs(f), 1.0):  # L-BFGS-B: REL_REDUCTION_OF_F
                result.converged = True
                result.message = (
                    "the objective has no precision left to show a step's fall (the "
                    f"gradient's largest entry is {result.grad_max:.2g})"
                )
                return result
            step /= 2
        else:
            result.message = "the line search found no step that lowers the objective"
            return result
        # A sample's Hessian can under-count the curvature the same way at every iteration
        # (its steps then halved each time): the next search starts where this one ended,
        # or twice as far where that step needed no halving.
        first_step = min(1.0, 2 * step) if step == first_step else step
        W, f, g = W + step * d, trial, g_trial
        result.W, result.fun, result.grad_max = W, f, float(np.max(np.abs(g)))
        result.n_iter = iteration
        result.cg_iterations.append(cg)
        result.steps.append(step)
        if callback is not None:
            callback(iteration, f)
    result.converged = result.grad_max <= tol
    result.message = (
        f"the gradient's largest entry is at most tol ({tol:g})"
        if result.converged
        else f"max_iter ({max_iter}) iterations reached"
    )
    return result


def describe(result: NewtonResult, hessian: SampledHessian) -> dict[str, Any]:
    """What the sampled-Hessian work was: the sample's rows, its products and the rows
    they touched, the CG iterations and the step of each iteration, and its seconds."""
    return {
        "hessian_rows": hessian.X.shape[0],
        "hessian_products": hessian.products,
        "hessian_rows_touched": hessian.products * hessian.X.shape[0],
        "cg_iterations": result.cg_iterations,
        "steps": result.steps,
        "hessian_seconds": result.hessian_seconds,
    }
