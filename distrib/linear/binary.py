"""Several class-versus-rest fits in lockstep: one pass over the rows for all of them.

A one-vs-rest fit is one independent binary problem per class. Fitted
one after another (as scikit-learn does), each evaluation of each problem reads every row:
~17 ms for MNIST's 60,000 training rows as float32 CSR here. `binary_loss_grad` evaluates
up to `LANES` problems in one pass over the rows for about the price of two (five problems
in ~31 ms), so the problems of one task are fitted together, by either solver:

* `fit_binary_newton` (the default): Newton-CG on a sampled Hessian
  (`distrib.linear.newton`), the problems minimised together, each with its own steps:
  ~10 passes for MNIST's classes;
* `fit_binary_lbfgs`: each problem runs scipy's L-BFGS-B (as scikit-learn's
  ``LogisticRegression`` calls it, same objective and options) in a thread of its own, and
  the threads meet at every evaluation (`_Lockstep`) to share one pass: ~60-75 passes.

Each problem's loss and gradient are the same bits whichever problems share its pass, so a
class's model does not depend on which classes were fitted beside it, nor where.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

from distrib.linear.lbfgs import minimize_lbfgs
from distrib.linear.newton import (
    BinarySampledHessian,
    NewtonResult,
    RowSample,
    minimize_newton,
    sample_stride,
    stride_rows,
)
from distrib.linear.softmax import Matrix, binary_loss_grad, prepare, rows_at


@dataclass(frozen=True)
class BinarySolution:
    """One class-versus-rest problem, solved.

    Attributes
    ----------
    positive : int
        The class that was positive.
    coef : ndarray of shape (n_features,)
    intercept : float
    n_iter : int
        L-BFGS iterations (at most ``max_iter``).
    converged : bool
        False when the solver stopped before its tolerance (scikit-learn's
        ConvergenceWarning).
    seconds : float
        From the start of the lockstep fit until this problem was solved.
    passes : int
        Passes over the rows made by the fit of this problem and those beside it (each
        evaluation of any of them is one pass, shared by all that it evaluates).
    """

    positive: int
    coef: np.ndarray
    intercept: float
    n_iter: int
    converged: bool
    seconds: float
    passes: int


Evaluate = Callable[[list[int], np.ndarray], tuple[np.ndarray, np.ndarray]]


class _Lockstep:
    """The meeting point of several optimizers' evaluations.

    Each optimizer thread asks for its objective at a point (`ask`); once every optimizer
    still running is waiting, the last to arrive evaluates them all in one call of
    ``evaluate(slots, points)`` and wakes the others. An optimizer that finishes `leave` s,
    so the others do not wait for it.
    """

    def __init__(self, evaluate: Evaluate, n_slots: int) -> None:
        self._evaluate = evaluate
        self._running = n_slots
        self._asked: dict[int, np.ndarray] = {}
        self._answers: dict[int, tuple[float, np.ndarray]] = {}
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    def ask(self, slot: int, point: np.ndarray) -> tuple[float, np.ndarray]:
        with self._changed:
            self._asked[slot] = point
            self._evaluate_if_all_asked()
            while slot not in self._answers and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            return self._answers.pop(slot)

    def leave(self) -> None:
        with self._changed:
            self._running -= 1
            self._evaluate_if_all_asked()

    def _evaluate_if_all_asked(self) -> None:
        if not self._asked or len(self._asked) < self._running:
            return
        slots = sorted(self._asked)
        try:
            losses, grads = self._evaluate(slots, np.stack([self._asked[s] for s in slots]))
        except BaseException as exc:  # every optimizer stops with it
            self._error = exc
        else:
            for i, slot in enumerate(slots):
                self._answers[slot] = (float(losses[i]), grads[i])
        self._asked.clear()
        self._changed.notify_all()


def _solution(
    result: optimize.OptimizeResult | BaseException | None,
    positive: int,
    seconds: float,
    n_features: int,
    fit_intercept: bool,
    max_iter: int,
    passes: int,
) -> BinarySolution:
    """One problem's `BinarySolution` from its L-BFGS result (raising what it raised)."""
    if isinstance(result, BaseException):
        raise result
    assert result is not None
    return BinarySolution(
        positive=int(positive),
        coef=np.asarray(result.x[:n_features], dtype=np.float64),
        intercept=float(result.x[n_features]) if fit_intercept else 0.0,
        n_iter=min(int(result.nit), max_iter),
        converged=int(result.status) == 0,
        seconds=seconds,
        passes=passes,
    )


def _run_threads(target: Callable[[int], None], names: list[str]) -> None:
    """Run ``target(slot)`` for every slot, each in a thread of its own (named), and wait
    for them all."""
    threads = [
        threading.Thread(target=target, args=(slot,), name=name) for slot, name in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def fit_binary_lbfgs(
    X: Matrix,
    codes: np.ndarray,
    positives: list[int],
    *,
    C: float,
    tol: float,
    max_iter: int,
    fit_intercept: bool = True,
    sample_weight: np.ndarray | None = None,
) -> list[BinarySolution]:
    """Fit one L2-penalised binary logistic regression per positive class, in lockstep.

    The objective and the solver's options are scikit-learn's for ``solver="lbfgs"``: the
    mean (sample-weighted) half binomial loss plus ``||coef||^2 / (2 C sum(weights))``,
    minimised from zero by SciPy's L-BFGS-B with scikit-learn's options
    (`distrib.linear.lbfgs`).

    Parameters
    ----------
    X : ndarray or csr_matrix of shape (n_rows, n_features)
    codes : ndarray of shape (n_rows,)
        Each row's class.
    positives : list of int
        The problems: row ``i`` is positive in problem ``k`` when ``codes[i] ==
        positives[k]``.
    C, tol, max_iter, fit_intercept
        As in `sklearn.linear_model.LogisticRegression`.
    sample_weight : ndarray of shape (n_rows,), optional
        Each row's weight in every problem.

    Returns
    -------
    list of BinarySolution
        In the order of ``positives``.
    """
    X = prepare(X)
    n_features = X.shape[1]
    n_coef = n_features + int(fit_intercept)
    objective = _Objective(X, codes, positives, C, fit_intercept, sample_weight)

    def evaluate(slots: list[int], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        losses, grads = objective(np.asarray(slots, dtype=np.intp), points)
        return losses, grads[:, :n_coef]

    lockstep = _Lockstep(evaluate, len(positives))
    results: list[optimize.OptimizeResult | BaseException | None] = [None] * len(positives)
    seconds = [0.0] * len(positives)
    started = time.perf_counter()

    def solve(slot: int) -> None:
        try:
            results[slot] = minimize_lbfgs(
                lambda point: lockstep.ask(slot, point), n_coef, tol=tol, max_iter=max_iter
            )
        except BaseException as exc:
            results[slot] = exc
        finally:
            seconds[slot] = time.perf_counter() - started
            lockstep.leave()

    _run_threads(solve, [f"distrib-lbfgs-{positive}" for positive in positives])
    return [
        _solution(
            result, positive, seconds[slot], n_features, fit_intercept, max_iter, objective.passes
        )
        for slot, (result, positive) in enumerate(zip(results, positives, strict=True))
    ]


def fit_binary_newton(
    X: Matrix,
    codes: np.ndarray,
    positives: list[int],
    *,
    C: float,
    tol: float,
    max_iter: int,
    fit_intercept: bool = True,
    sample_weight: np.ndarray | None = None,
) -> list[BinarySolution]:
    """Fit one L2-penalised binary logistic regression per positive class, together, with
    Newton-CG on a sampled Hessian (`distrib.linear.newton`): a fraction of L-BFGS's
    passes.

    The objective is `fit_binary_lbfgs`'s (scikit-learn's). Each iteration's gradients, and
    each line-search trial, are one pass over the rows for every problem still running;
    the Newton systems are solved by conjugate gradients on the Hessians of a fixed sample
    of the rows (every ``stride``-th, `newton.sample_stride`), the problems' products one
    kernel call. A problem's model is the same bits whichever problems are fitted beside it.

    Parameters and returns as `fit_binary_lbfgs`; ``n_iter`` counts Newton iterations.
    """
    started = time.perf_counter()
    X = prepare(X)
    n_rows, n_features = X.shape
    objective = _Objective(X, codes, positives, C, fit_intercept, sample_weight)
    positions = stride_rows(0, n_rows, sample_stride(n_rows))
    sample = RowSample(
        rows_at(X, positions),
        np.asarray(codes)[positions],
        None if objective.weights is None else objective.weights[positions],
    )
    seconds = np.zeros(len(positives))

    def note_the_solved(iteration: int, results: list[NewtonResult]) -> None:
        for slot, result in enumerate(results):
            if not seconds[slot] and (result.done or result.grad_max <= tol):
                seconds[slot] = time.perf_counter() - started

    with threadpool_limits(limits=1, user_api="blas"):  # its thread count changes the bits
        hessian = BinarySampledHessian(sample, len(positives), objective.l2, fit_intercept)
        try:
            shape = (len(positives), n_features + 1)
            results = minimize_newton(
                objective, hessian, shape, tol=tol, max_iter=max_iter, callback=note_the_solved
            )
        finally:
            hessian.close()
    return [
        BinarySolution(
            positive=int(positive),
            coef=result.W[:n_features].copy(),
            intercept=float(result.W[n_features]) if fit_intercept else 0.0,
            n_iter=result.n_iter,
            converged=result.converged,
            seconds=float(seconds[slot]) or time.perf_counter() - started,
            passes=objective.passes,
        )
        for slot, (result, positive) in enumerate(zip(results, positives, strict=True))
    ]


class _Objective:
    """The binary problems' objective (scikit-learn's: the mean weighted half binomial
    loss plus ``||coef||^2 / (2 C sum(weights))``), evaluated for some of them at once:
    ``objective(problems, points)`` gives their values and gradients (features, then the
    intercept: 0 without one) in one pass over the rows, and counts the pass."""

    def __init__(
        self,
        X: Matrix,
        codes: np.ndarray,
        positives: list[int],
        C: float,
        fit_intercept: bool,
        sample_weight: np.ndarray | None,
    ) -> None:
        self.X, self.codes, self.fit_intercept = X, codes, fit_intercept
        self.positives = np.asarray(positives, dtype=np.intp)
        self.weights = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        self.total = float(X.shape[0] if self.weights is None else self.weights.sum())
        self.l2 = 1.0 / (C * self.total)
        self.passes = 0

    def __call__(self, problems: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.passes += 1
        n_features = self.X.shape[1]
        coef = points[:, :n_features]
        intercept = points[:, n_features] if self.fit_intercept else np.zeros(len(problems))
        losses, grads = binary_loss_grad(
            self.X, self.codes, self.positives[problems], coef, intercept, self.weights
        )
        grads /= self.total
        grads[:, :n_features] += self.l2 * coef
        if not self.fit_intercept:
            grads[:, n_features] = 0.0
        # numpy's pairwise sum, not a BLAS dot: the same bits in any process
        return losses / self.total + 0.5 * self.l2 * np.sum(coef * coef, axis=1), grads
