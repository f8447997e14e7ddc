"""Newton-CG with a sampled Hessian: the multinomial fit, and the one-vs-rest lockstep
groups, in a fraction of L-BFGS's passes.

Each iteration takes the objective's gradient from one pass over every row (the blocks, as
L-BFGS does) and solves the Newton system with conjugate gradients on the Hessian of a
fixed sample of the rows (`RowSample`: every ``stride``-th row, held by the driver, ~20,000
rows whatever the data's size), preconditioned by a Kronecker factorisation of that Hessian
(the classes' mean curvature times the features' second moments, K-FAC). The step is
tried whole first, then halved until the objective falls enough (Armijo); each trial is a
pass whose gradient the next iteration uses (the next search starts from the step taken, or
twice it where it needed no halving). The CG work touches only the sample, in this
process; the passes are the only work on the blocks.

Several independent problems (a one-vs-rest task's classes: `BinarySampledHessian`) are
minimised together: each has its own CG, step and stop, and those still running share
each pass and each Hessian call, a problem's arithmetic its own (the same bits whichever
problems share them). The softmax fit is one such problem.

The fit stops when the gradient's largest entry is at most ``tol`` (as scikit-learn's
``newton-cg`` and ``lbfgs`` do: the meaning of ``tol`` for every solver here), when the
objective has no precision left to show a Newton step's fall (converged, as L-BFGS-B's
relative-reduction test: `SampledHessian.precision`), after ``max_iter`` iterations, or
when no step along the direction lowers the objective.

Measured (`docs/strategies.md`; scripts/results/solvers-2cores.json): on MNIST, 11 passes
for test accuracy 0.9195 at the defaults and 15 to within 1e-6 of the optimum's objective,
against L-BFGS's 106 and 278; on 8.1 million rows streamed from disk, 30 passes; MNIST's
one-vs-rest tasks of five classes, 10-11 passes against L-BFGS's 62-75.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from scipy import special

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


class Curvature(Protocol):
    """The Hessians of one or more problems on a row sample, as `minimize_newton` uses
    them: each call names the problems (indices) whose coefficients, directions or
    residuals it gives, a row of the argument each."""

    #: The objective's relative precision (its rows' dtype).
    precision: float

    def at(self, W: np.ndarray, problems: np.ndarray) -> None:
        """Take the Hessians of ``problems`` at their coefficients ``W``."""

    def product(self, V: np.ndarray, problems: np.ndarray) -> np.ndarray:
        """Each problem's Hessian times its direction (a row of ``V`` each)."""

    def precondition(self, R: np.ndarray, problems: np.ndarray) -> np.ndarray:
        """Each problem's residual divided by an approximation of its Hessian."""


class _SampleProducts:
    """A sample's rows in `PRODUCT_PARTS` parts whose Hessian products run in threads and
    are summed in a fixed order (the same bits on any number of cores)."""

    def __init__(self, sample: RowSample, weights: np.ndarray | None) -> None:
        self.X, self.weights = sample.X, weights
        bounds = [int(b) for b in np.linspace(0, sample.n_rows, PRODUCT_PARTS + 1)]
        self.parts = [(lo, hi, _row_range(self.X, lo, hi)) for lo, hi in itertools.pairwise(bounds)]
        self._threads = ThreadPoolExecutor(min(PRODUCT_PARTS, os.cpu_count() or 1))
        self.products = 0

    def product(self, P: np.ndarray, V: np.ndarray, of_softmax: bool) -> np.ndarray:
        """The sample's summed `softmax.hessian_product` at ``P`` (rows x classes)."""
        self.products += 1

        def part(rows: tuple[int, int, sp.csr_matrix]) -> np.ndarray:
            lo, hi, X = rows
            weights = None if self.weights is None else self.weights[lo:hi]
            return softmax.hessian_product(X, P[lo:hi], weights, V, softmax=of_softmax)

        sums = list(self._threads.map(part, self.parts))
        H = sums[0]
        for more in sums[1:]:
            H = H + more
        return H

    def close(self) -> None:
        """End the products' threads."""
        self._threads.shutdown()


def _sample_weights(sample: RowSample, by_class: np.ndarray | None) -> np.ndarray | None:
    """The sample's row weights times each row's class weight (None: 1 each)."""
    weights = sample.weights
    if by_class is not None:
        of_rows = np.asarray(by_class, float)[sample.codes]
        weights = of_rows if weights is None else weights * of_rows
    return None if weights is None else np.asarray(weights, float)


def _feature_moments_eigen(
    X: sp.csr_matrix, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The eigendecomposition of ``sum_i w_i x~_i x~_i^T / sum_i w_i`` over the first
    `GRAM_ROWS` rows of ``X`` (``x~_i``: the row and a 1 for the intercept), `GRAM_CHUNK`
    rows made dense at a time (~6 MB of them, not the rows whole)."""
    rows = min(X.shape[0], GRAM_ROWS)
    weights = np.ones(rows) if weights is None else weights[:rows]
    moments = np.zeros((X.shape[1] + 1, X.shape[1] + 1))
    for lo in range(0, rows, GRAM_CHUNK):
        hi = min(rows, lo + GRAM_CHUNK)
        dense = np.ones((hi - lo, X.shape[1] + 1))
        dense[:, :-1] = _row_range(X, lo, hi).toarray()
        moments += (dense.T * weights[lo:hi]) @ dense
    values, vectors = np.linalg.eigh(moments / max(float(weights.sum()), 1e-300))
    return values, vectors


class SampledHessian:
    """The softmax objective's Hessian on a row sample, and its Kronecker preconditioner:
    one problem (index 0), its coefficients classes x (features + 1).

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
        self.weights = _sample_weights(sample, class_weights)
        self.total = float(sample.n_rows if self.weights is None else np.sum(self.weights))
        self.n_classes, self.penalty, self.fit_intercept = n_classes, penalty, fit_intercept
        self.sample = _SampleProducts(sample, self.weights)
        self.P = np.zeros((sample.n_rows, n_classes))
        self.gram_values, self.gram_vectors = _feature_moments_eigen(self.X, self.weights)
        self.class_values = np.ones(n_classes)
        self.class_vectors = np.eye(n_classes)

    @property
    def products(self) -> int:
        """Hessian products made so far."""
        return self.sample.products

    def reuse(self, penalty: float) -> None:
        """Serve another fit of the same rows with this L2 factor (a path of Cs): the
        sample's rows and feature moments stay, its products are counted anew."""
        self.penalty = penalty
        self.sample.products = 0

    def at(self, W: np.ndarray, problems: np.ndarray) -> None:
        """Take the Hessian at coefficients ``W[0]`` (classes x (features + 1), intercept
        last): the sample's probabilities, and the classes' mean curvature."""
        (coef,) = W
        self.P = softmax.probabilities(self.X, coef[:, :-1], coef[:, -1])
        weighted = self.P if self.weights is None else self.P * self.weights[:, None]
        curvature = (np.diag(weighted.sum(axis=0)) - weighted.T @ self.P) / self.total
        self.class_values, self.class_vectors = np.linalg.eigh(curvature)

    def product(self, V: np.ndarray, problems: np.ndarray) -> np.ndarray:
        """The Hessian times the direction ``V[0]`` (classes x (features + 1))."""
        (direction,) = V
        H = self.sample.product(self.P, direction, of_softmax=True)
        H /= self.total
        H[:, :-1] += self.penalty * direction[:, :-1]
        if not self.fit_intercept:
            H[:, -1] = 0.0
        return H[None]

    def close(self) -> None:
        """End the products' threads."""
        self.sample.close()

    def precondition(self, R: np.ndarray, problems: np.ndarray) -> np.ndarray:
        """``R[0]`` divided by the Kronecker approximation of the Hessian (the classes' mean
        curvature times the features' moments, plus the penalty)."""
        Qa, Qg = self.class_vectors, self.gram_vectors
        scale = np.outer(self.class_values, self.gram_values) + self.penalty
        Z = Qa @ ((Qa.T @ R[0] @ Qg) / scale) @ Qg.T
        if not self.fit_intercept:
            Z[:, -1] = 0.0
        return Z[None]


class BinarySampledHessian:
    """The Hessians of class-versus-rest problems (a row of coefficients each: features,
    then the intercept) on a row sample, each preconditioned by its Kronecker form (the
    problem's mean curvature times the features' second moments, as `SampledHessian`'s).

    A problem's products and preconditioning are computed apart from the others' (scipy's
    sparse products column by column, the kernel's lanes, a matrix-vector product per
    problem): the same bits whichever problems share a call. The caller pins BLAS to one
    thread (its thread count changes them).

    Parameters
    ----------
    sample : RowSample
        Rows, each row's class, and its weight.
    n_problems : int
    penalty : float
        The objective's L2 factor on the coefficients (the intercept is not penalised).
    fit_intercept : bool
    """

    def __init__(
        self, sample: RowSample, n_problems: int, penalty: float, fit_intercept: bool
    ) -> None:
        self.X = sample.X
        self.precision = float(np.finfo(self.X.dtype).eps)
        self.weights = _sample_weights(sample, None)
        self.total = float(sample.n_rows if self.weights is None else np.sum(self.weights))
        self.penalty, self.fit_intercept = penalty, fit_intercept
        self.sample = _SampleProducts(sample, self.weights)
        self._X64 = sp.csr_matrix(self.X, dtype=np.float64)
        self.gram_values, self.gram_vectors = _feature_moments_eigen(self.X, self.weights)
        self.curvature = np.zeros((sample.n_rows, n_problems))
        self.mean_curvature = np.ones(n_problems)

    @property
    def products(self) -> int:
        """Hessian products made so far (each for every problem it was asked for)."""
        return self.sample.products

    def at(self, W: np.ndarray, problems: np.ndarray) -> None:
        """Take the Hessians of ``problems`` at ``W``: each row's curvature ``p (1 - p)``,
        and each problem's mean."""
        p = special.expit(np.asarray(self._X64 @ W[:, :-1].T) + W[:, -1])
        curvature = p * (1.0 - p)
        self.curvature[:, problems] = curvature
        weighted = curvature if self.weights is None else curvature * self.weights[:, None]
        # a problem's rows summed as one contiguous row (numpy's pairwise sum): down the
        # columns of several problems numpy would add them in another order
        by_problem = np.ascontiguousarray(weighted.T)
        self.mean_curvature[problems] = np.sum(by_problem, axis=1) / self.total

    def product(self, V: np.ndarray, problems: np.ndarray) -> np.ndarray:
        """Each problem's Hessian times its direction (a row of ``V`` each)."""
        curvature = np.ascontiguousarray(self.curvature[:, problems])
        H = self.sample.product(curvature, V, of_softmax=False)
        H /= self.total
        H[:, :-1] += self.penalty * V[:, :-1]
        if not self.fit_intercept:
            H[:, -1] = 0.0
        return H

    def precondition(self, R: np.ndarray, problems: np.ndarray) -> np.ndarray:
        """Each residual divided by its problem's Kronecker form."""
        Q = self.gram_vectors
        Z = np.empty_like(R)
        for i, k in enumerate(problems):
            scale = self.mean_curvature[k] * self.gram_values + self.penalty
            Z[i] = Q @ ((R[i] @ Q) / scale)
        if not self.fit_intercept:
            Z[:, -1] = 0.0
        return Z

    def close(self) -> None:
        """End the products' threads."""
        self.sample.close()


def _dots(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Each problem's inner product: ``sum(A[k] * B[k])`` for every ``k`` (numpy's pairwise
    sum, a problem's bits whatever others share the arrays)."""
    return np.sum((A * B).reshape(len(A), -1), axis=1)


def _per_problem(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``values`` (one per problem) shaped to scale each problem's row of ``like``."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def conjugate_gradient(
    hessian: Curvature,
    g: np.ndarray,
    tol: np.ndarray,
    problems: np.ndarray,
    max_iter: int = MAX_CG,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate solutions of ``H_k d_k = -g_k`` for each of ``problems`` (a row of ``g``
    each): preconditioned CG from zero, a problem's stopped when its residual's norm is at
    most its ``tol`` or the curvature of its direction is not positive; and each problem's
    iterations. The problems still iterating share each Hessian call."""
    d = np.zeros_like(g)
    r = -g
    z = hessian.precondition(r, problems)
    p = z.copy()
    rz = _dots(r, z)
    iterations = np.full(len(problems), max_iter)
    running = np.arange(len(problems))
    for iteration in range(max_iter):
        small = np.sqrt(_dots(r[running], r[running])) <= tol[running]
        iterations[running[small]] = iteration
        running = running[~small]
        if not len(running):
            break
        Hp = hessian.product(p[running], problems[running])
        curvature = _dots(p[running], Hp)
        flat = curvature <= 0.0
        for i in running[flat]:
            iterations[i] = iteration
            if iteration == 0:
                d[i] = z[i]
        Hp, curvature, running = Hp[~flat], curvature[~flat], running[~flat]
        alpha = _per_problem(rz[running] / curvature, Hp)
        d[running] += alpha * p[running]
        r[running] -= alpha * Hp
        z[running] = hessian.precondition(r[running], problems[running])
        previous = rz[running]
        rz[running] = _dots(r[running], z[running])
        p[running] = z[running] + _per_problem(rz[running] / previous, Hp) * p[running]
    return d, iterations


@dataclass
class NewtonResult:
    """Where Newton-CG stopped for one problem, and what it did on the way."""

    W: np.ndarray
    fun: float
    grad_max: float
    n_iter: int
    converged: bool
    message: str
    cg_iterations: list[int] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    hessian_seconds: float = 0.0
    gradient: np.ndarray | None = field(default=None, repr=False)
    done: bool = False


Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _line_search(
    objective: Objective,
    results: list[NewtonResult],
    problems: np.ndarray,
    d: np.ndarray,
    slope: np.ndarray,
    cg: np.ndarray,
    first_step: np.ndarray,
    precision: float,
) -> None:
    """Step each of ``problems`` along its direction: tried from its ``first_step``, halved
    until the objective falls enough (Armijo), each trial of every problem still searching
    one shared evaluation; a step taken updates its `NewtonResult` (and ``first_step``), a
    problem whose objective has no precision left to show the fall, or that finds no step,
    is done."""
    step = first_step[problems].copy()
    searching = np.arange(len(problems))
    for _ in range(MAX_HALVINGS):
        if not len(searching):
            return
        points = np.stack([results[k].W for k in problems[searching]])
        points += _per_problem(step[searching], d) * d[searching]
        trial_f, trial_g = objective(problems[searching], points)
        still = []
        for j, i in enumerate(searching):
            k = int(problems[i])
            result = results[k]
            if trial_f[j] <= result.fun + ARMIJO * step[i] * slope[i]:
                # A sample's Hessian can under-count the curvature the same way at every
                # iteration (its steps then halved each time): the next search starts where
                # this one ended, or twice as far where that step needed no halving.
                first_step[k] = min(1.0, 2 * step[i]) if step[i] == first_step[k] else step[i]
                result.W = points[j]
                result.fun, result.grad_max = float(trial_f[j]), float(np.max(np.abs(trial_g[j])))
                result.gradient = trial_g[j]
                result.n_iter += 1
                result.steps.append(float(step[i]))
                result.cg_iterations.append(int(cg[i]))
            elif -slope[i] <= precision * max(abs(result.fun), 1.0):  # L-BFGS-B's REL_REDUCTION
                result.done = result.converged = True
                result.message = (
                    "the objective has no precision left to show a step's fall (the "
                    f"gradient's largest entry is {result.grad_max:.2g})"
                )
            else:
                step[i] /= 2
                still.append(i)
        searching = np.asarray(still, dtype=np.intp)
    for i in searching:
        results[problems[i]].done = True
        results[problems[i]].message = "the line search found no step that lowers the objective"


def minimize_newton(
    objective: Objective,
    hessian: Curvature,
    shape: tuple[int, ...],
    *,
    tol: float,
    max_iter: int,
    callback: Callable[[int, list[NewtonResult]], None] | None = None,
    start: np.ndarray | None = None,
    min_iter: int = 0,
) -> list[NewtonResult]:
    """Minimise one or more problems with Newton-CG on ``hessian``, from ``start`` (of
    ``shape``; default: zero).

    Parameters
    ----------
    objective : callable
        ``objective(problems, W)``: the values and gradients of ``problems`` (indices) at
        their coefficients (a row of ``W`` each); one call is one pass over the rows,
        shared by the problems it names.
    hessian : Curvature
    shape : tuple of int
        The coefficients of all problems: (problems, ...).
    tol, max_iter : float, int
        Each problem stops when its gradient's largest entry is at most ``tol``, or after
        ``max_iter`` iterations.
    callback : callable, optional
        ``callback(iteration, results)`` after each iteration (every problem's result so
        far).
    start, min_iter : ndarray (default zero), int
        Where the problems start; iterations made even where ``tol`` holds (a warm start
        may meet ``tol`` where it is, short of its own optimum), unless the gradient is 0.

    Returns
    -------
    list of NewtonResult
        A result per problem. Each problem's iterates are the same bits whatever problems
        share its calls, when the objective's and the Hessian's are.
    """
    n_problems = shape[0]
    everyone = np.arange(n_problems)
    W0 = np.zeros(shape) if start is None else np.array(start, dtype=np.float64).reshape(shape)
    f, g = objective(everyone, W0)
    results = [
        NewtonResult(W0[k], float(f[k]), float(np.max(np.abs(g[k]))), 0, False, "", gradient=g[k])
        for k in everyone
    ]
    first_step = np.ones(n_problems)
    for iteration in range(1, max_iter + 1):
        floor = tol if iteration > min_iter else 0.0
        running = [k for k in everyone if not results[k].done and results[k].grad_max > floor]
        active = np.asarray(running, dtype=np.intp)
        if not len(active):
            break
        started = time.perf_counter()
        hessian.at(np.stack([results[k].W for k in active]), active)
        g = np.stack([results[k].gradient for k in active])
        norm = np.sqrt(_dots(g, g))
        forcing = np.maximum(MIN_FORCING, np.minimum(0.5, np.sqrt(norm)))
        d, cg = conjugate_gradient(hessian, g, forcing * norm, active)
        slope = _dots(g, d)
        # not a descent direction (rounding): the preconditioned gradient instead
        for i in np.flatnonzero(slope >= 0.0):
            d[i] = -hessian.precondition(g[i : i + 1], active[i : i + 1])[0]
            slope[i] = float(np.sum(g[i] * d[i]))
        elapsed = time.perf_counter() - started
        for k in active:
            results[k].hessian_seconds += elapsed
        _line_search(objective, results, active, d, slope, cg, first_step, hessian.precision)
        if callback is not None:
            callback(iteration, results)
    for result in results:
        if not result.done:
            result.converged = result.grad_max <= tol
            result.message = (
                f"the gradient's largest entry is at most tol ({tol:g})"
                if result.converged
                else f"max_iter ({max_iter}) iterations reached"
            )
    return results


def describe(
    result: NewtonResult, hessian: SampledHessian | BinarySampledHessian
) -> dict[str, Any]:
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
