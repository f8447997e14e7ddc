"""The multinomial (softmax) solver: L-BFGS over summed row blocks, knowing nothing of Dask.

The training rows are cut into blocks (`distrib.parallel.blocks`); an evaluator gives, for
given coefficients, every block's softmax loss and gradient (`distrib.linear.softmax`)
summed in a fixed order, wherever the blocks are (this process, or a cluster's workers).
`fit_softmax` adds the L2 term and lets SciPy's L-BFGS take the step, with scikit-learn's
options (`distrib.linear.lbfgs`) and its ``C`` convention::

    mean_i w_i * (logsumexp(z_i) - z_i[y_i]) + ||coef||^2 / (2 * C * sum_i w_i)

(``w_i``: class weights, else 1; the intercept is not penalised). The optimum is scikit-learn's
``LogisticRegression(solver="lbfgs")`` multinomial fit. Two classes are fitted as the
equivalent binomial problem (one row, as scikit-learn does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from distrib.errors import DataError
from distrib.linear.lbfgs import minimize_lbfgs
from distrib.linear.newton import RowSample, SampledHessian, describe, minimize_newton

if TYPE_CHECKING:  # the workers that evaluate blocks do without the optimizer
    import scipy.optimize


class _Timing(Protocol):
    """One block's evaluation: where it ran, when it started, how long it took."""

    @property
    def worker(self) -> str: ...

    @property
    def started(self) -> float: ...

    @property
    def seconds(self) -> float: ...

    @property
    def read_bytes(self) -> int: ...

    @property
    def read_wait(self) -> float: ...


class _Sum(Protocol):
    """The blocks' summed loss and gradient (gradient: classes x (features + 1), the
    intercept's column last), and each block's timing."""

    @property
    def loss(self) -> float: ...

    @property
    def grad(self) -> np.ndarray: ...

    @property
    def timings(self) -> Sequence[_Timing]: ...


@dataclass(frozen=True)
class IterationProgress:
    """Where a fit stands after an iteration (what its progress lines show)."""

    iteration: int
    loss: float
    passes: int  # evaluations so far: each one pass over every row
    seconds: float  # since the solver started
    read_bytes: int = 0  # read from disk by the last evaluation (rows streamed), and
    read_wait: float = 0.0  # the longest a block waited for them


class SummedEvaluation(Protocol):
    """What a runner's evaluation gives the solver: the sum over every block, and what
    coordinating it cost (messages read, and the driver's and relays' CPU seconds)."""

    @property
    def total(self) -> _Sum: ...

    @property
    def messages(self) -> int: ...

    @property
    def message_cpu(self) -> float: ...

    @property
    def relayed(self) -> int: ...

    @property
    def relay_cpu(self) -> float: ...


class Evaluator(Protocol):
    """Evaluates every block of a fit at given coefficients and sums them in a fixed order
    (a `distrib.parallel.blocks.block.BlockRunner`: in this process, or on a cluster's
    workers); the solver knows nothing else of where the blocks are."""

    def evaluate(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> SummedEvaluation: ...


class Journal(Protocol):
    """A log of a fit's evaluations that lets a resumed fit replay them (`fit_softmax`)."""

    @property
    def logged(self) -> Sequence[Any]:
        """The evaluations it holds from an earlier run (replayed first)."""
        ...

    def replay(self, index: int, w: np.ndarray) -> tuple[float, np.ndarray] | None:
        """The logged objective and gradient of evaluation ``index`` (refusing a ``w`` other
        than the logged one), or None past the log's end."""
        ...

    def append(self, w: np.ndarray, loss: float, grad: np.ndarray) -> None:
        """Log one evaluation."""
        ...

    def layout(self) -> dict[str, Any] | None:
        """The row blocks of the fit being resumed (``blocks``: how many; ``tree``: the
        order of their sums), or None: a fit resumed on another number of workers keeps
        them, so its sums are the same bits."""
        ...

    def save_layout(self, blocks: int, tree: Sequence[Sequence[int]]) -> None:
        """Record the fit's blocks and the order of their sums (once, at its start)."""
        ...


@dataclass
class SoftmaxFit:
    """A finished multinomial fit, and how its time was spent."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    n_evaluations: int
    converged: bool
    message: str
    seconds: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    solver: str = "lbfgs"
    objective: float = float("nan")  # the objective and its gradient's largest entry
    grad_max: float = float("nan")  # where the fit stopped
    details: dict[str, Any] = field(default_factory=dict)  # the solver's own (newton-cg)

    def record(self) -> dict[str, Any]:
        """JSON-ready summary: iterations, evaluations, where the time went (evaluations
        replayed from a journal count, but have no times)."""
        live = [e for e in self.evaluations if not e.get("replayed")]
        walls = np.array([e["wall"] for e in live] or [0.0])
        compute = np.array([e["compute_max"] for e in live] or [0.0])
        total = np.array([e["compute_sum"] for e in live] or [0.0])
        per_message = [e["cpu_per_message"] for e in live if e["cpu_per_message"]]
        per_relayed = [e["cpu_per_relayed"] for e in live if e["cpu_per_relayed"]]
        return {
            "strategy": "multinomial",
            "solver": self.solver,
            "n_iter": self.n_iter,
            "n_evaluations": self.n_evaluations,
            # every evaluation reads every row once: the full passes over the rows
            "passes": len(self.evaluations),
            "objective": self.objective,
            "grad_max": self.grad_max,
            **self.details,
            "converged": self.converged,
            "message": self.message,
            "seconds": self.seconds,
            "median_evaluation_seconds": float(np.median(walls)),
            "median_block_compute_seconds": float(np.median(compute)),
            "median_compute_seconds_all_blocks": float(np.median(total)),
            "median_coordination_seconds": float(np.median(walls - compute)),
            "median_driver_cpu_seconds_per_message": _median_or_none(per_message),
            "median_relay_cpu_seconds_per_message": _median_or_none(per_relayed),
            "replayed_evaluations": len(self.evaluations) - len(live),
            "per_evaluation": {
                "loss": [e["loss"] for e in self.evaluations],
                "seconds": walls.tolist() if live else [],
                "slowest_block_seconds": compute.tolist() if live else [],
                # rows streamed from disk: bytes read, and the longest wait of a block
                "read_bytes": [e.get("read_bytes", 0) for e in live],
                "read_wait_seconds": [e.get("read_wait", 0.0) for e in live],
            },
        }


def _median_or_none(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def busiest_worker_seconds(timings: Sequence[_Timing]) -> float:
    """How long the busiest worker computed in one evaluation: from the start of its first
    block to the end of its last (blocks of one worker may run one after another or at once).
    The rest of the evaluation's wall time is coordination."""
    spans: dict[str, tuple[float, float]] = {}
    for t in timings:
        first, last = spans.get(t.worker, (t.started, t.started + t.seconds))
        spans[t.worker] = (min(first, t.started), max(last, t.started + t.seconds))
    return max((last - first for first, last in spans.values()), default=0.0)


def refuse_weightless_classes(
    codes: np.ndarray, n_classes: int, sample_weight: np.ndarray, labels: np.ndarray | None = None
) -> None:
    """Refuse ``class_weight="balanced"`` where a class of the rows has a total sample
    weight of zero: its balanced weight would be infinite (scikit-learn's fit then ends
    after 0 iterations on NaN weights). ``labels`` names the classes (default: indices)."""
    totals = np.bincount(codes, weights=np.asarray(sample_weight, float), minlength=n_classes)
    present = np.bincount(codes, minlength=n_classes) > 0
    weightless = np.flatnonzero(present & (totals <= 0))
    if len(weightless):
        named = (weightless if labels is None else np.asarray(labels)[weightless]).tolist()
        raise DataError(
            f'class_weight="balanced" needs every class to weigh something, but the sample '
            f"weights of class(es) {named} are all zero: give them weight, or drop their rows"
        )


def objective_weights(
    codes: np.ndarray,
    n_classes: int,
    class_weight: str | dict[int, float] | None = None,
    sample_weight: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray | None, float]:
    """Each class's weight and the total weight of the rows, as scikit-learn weighs them.

    Parameters
    ----------
    codes : ndarray of shape (n_rows,)
        Each row's class index.
    n_classes : int
    class_weight : "balanced", dict or None
        As scikit-learn's, a dict keyed by class index (classes it omits weigh 1);
        ``balanced`` counts rows by their sample weights.
    sample_weight : ndarray of shape (n_rows,), optional
    labels : ndarray of shape (n_classes,), optional
        The classes' labels, to name one that ``balanced`` cannot weigh (default: indices).

    Returns
    -------
    per_class : ndarray of shape (n_classes,) or None
    total : float
        ``sum_i sample_weight_i * per_class[codes_i]``: the objective's denominator.
    """
    per_class = None
    if class_weight == "balanced" and sample_weight is not None:
        refuse_weightless_classes(codes, n_classes, sample_weight, labels)
    if class_weight is not None:
        # imported here: the workers that hold blocks unpickle this module's types and
        # need no scikit-learn (~0.9 s of imports per worker)
        from sklearn.utils.class_weight import compute_class_weight

        per_class = compute_class_weight(
            class_weight, classes=np.arange(n_classes), y=codes, sample_weight=sample_weight
        )
    if sample_weight is None and per_class is None:
        return None, float(len(codes))  # each row weighs 1 (no array of ones to sum)
    rows = np.ones(len(codes)) if sample_weight is None else np.asarray(sample_weight, float)
    if per_class is not None:
        rows = rows * per_class[codes]
    return per_class, float(rows.sum())


def fit_softmax(
    runner: Evaluator,
    *,
    n_features: int,
    n_classes: int,
    weight_sum: float,
    C: float,
    tol: float,
    max_iter: int,
    fit_intercept: bool = True,
    class_weights: np.ndarray | None = None,
    on_iteration: Callable[[IterationProgress], None] | None = None,
    journal: Journal | None = None,
    solver: str = "lbfgs",
    sample: RowSample | None = None,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    hessian: SampledHessian | None = None,
) -> SoftmaxFit:
    """Minimise the multinomial objective over the runner's blocks with L-BFGS or
    Newton-CG (`distrib.linear.newton`).

    Parameters
    ----------
    runner : Evaluator
        Gives every block's loss and gradient at given coefficients.
    n_features, n_classes : int
    weight_sum : float
        The rows' total weight (`objective_weights`; the row count when unweighted).
    C, tol, max_iter, fit_intercept
        As in `sklearn.linear_model.LogisticRegression`.
    class_weights : ndarray of shape (n_classes,), optional
        Each class's weight (`objective_weights`), sent with every evaluation; sample
        weights live with the blocks' rows.
    on_iteration : callable, optional
        Called after each iteration with an `IterationProgress`.
    journal : Journal, optional
        Logs every evaluation; where it holds evaluations already (a resumed fit), they are
        replayed from it, with no work on the blocks, until it runs out. L-BFGS is
        deterministic given the answers it gets, so the fit then goes on where it stopped.
        (Newton-CG is too: its products on the sample are made again.)
    solver : {"lbfgs", "newton-cg"}
    sample : RowSample, optional
        The rows whose Hessian Newton-CG takes (needed for ``newton-cg``).
    start : (coef, intercept), optional
        Where the solver starts (a warm start: another C's solution, as this function
        returns it); default zero.
    hessian : SampledHessian, optional
        Newton-CG's Hessian of ``sample`` made for an earlier fit of the same rows and
        weights (a path of Cs; its feature moments do not depend on C): reused, with this
        fit's penalty, and left open. Default: one made for this fit, then closed.

    Returns
    -------
    SoftmaxFit
        ``coef`` of shape (n_classes, n_features), ``intercept`` (n_classes,), or a single
        row for two classes (the binomial model).
    """
    binary = n_classes == 2
    weights = class_weights
    # Two classes: the softmax over two rows with C/2 is the binomial problem with C.
    penalty = (2.0 if binary else 1.0) / (C * weight_sum)
    width = n_features + 1
    evaluations: list[dict[str, Any]] = []

    def unpack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = w.reshape((n_classes, width), order="F")
        intercept = W[:, -1] if fit_intercept else np.zeros(n_classes)
        return np.ascontiguousarray(W[:, :-1]), np.ascontiguousarray(intercept)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        if journal is not None:
            logged = journal.replay(len(evaluations), w)
            if logged is not None:
                evaluations.append({"replayed": True, "loss": logged[0]})
                return logged
        loss, grad = evaluate(w)
        if journal is not None:
            journal.append(w, loss, grad)
        return loss, grad

    def evaluate(w: np.ndarray) -> tuple[float, np.ndarray]:
        coef, intercept = unpack(w)
        t0 = time.perf_counter()
        evaluation = runner.evaluate(coef, intercept, weights)
        timings = evaluation.total.timings
        evaluations.append(
            {
                "wall": time.perf_counter() - t0,
                "compute_max": busiest_worker_seconds(timings),
                "compute_sum": float(np.sum([t.seconds for t in timings])),
                "cpu_per_message": evaluation.message_cpu / max(1, evaluation.messages),
                "cpu_per_relayed": evaluation.relay_cpu / max(1, evaluation.relayed),
                "read_bytes": int(sum(t.read_bytes for t in timings)),
                "read_wait": max((t.read_wait for t in timings), default=0.0),
            }
        )
        loss = evaluation.total.loss / weight_sum
        grad = evaluation.total.grad / weight_sum
        loss += 0.5 * penalty * float(np.sum(coef * coef))
        evaluations[-1]["loss"] = loss
        grad[:, :-1] += penalty * coef
        if not fit_intercept:
            grad[:, -1] = 0.0
        return loss, grad.ravel(order="F")

    def progress(iteration: int, loss: float) -> None:
        if on_iteration is not None:
            last = evaluations[-1] if evaluations else {}
            on_iteration(
                IterationProgress(
                    iteration,
                    loss,
                    len(evaluations),
                    time.perf_counter() - t0,
                    int(last.get("read_bytes", 0)),
                    float(last.get("read_wait", 0.0)),
                )
            )

    w0 = None if start is None else _flat_start(start, n_classes, width, fit_intercept)
    t0 = time.perf_counter()
    # The solver's own linear algebra is small; BLAS threads here would spin between steps
    # and take the CPU from the workers on this host (measured: block time 28 -> 45 ms).
    with threadpool_limits(limits=1, user_api="blas"):
        if solver == "newton-cg":
            if hessian is None:
                if sample is None:
                    raise ValueError("solver 'newton-cg' needs the rows' sample for its Hessian")
                made = SampledHessian(sample, n_classes, weights, penalty, fit_intercept)
                try:
                    fit = _newton(objective, made, n_classes, width, tol, max_iter, progress, w0)
                finally:
                    made.close()
            else:
                hessian.reuse(penalty)
                fit = _newton(objective, hessian, n_classes, width, tol, max_iter, progress, w0)
        else:
            fit = _lbfgs(objective, n_classes * width, tol, max_iter, progress, w0)
    fit.seconds = time.perf_counter() - t0
    fit.evaluations = evaluations
    coef, intercept = unpack(fit.coef)
    if binary:
        coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
    fit.coef, fit.intercept = coef, intercept
    return fit


def _flat_start(
    start: tuple[np.ndarray, np.ndarray], n_classes: int, width: int, fit_intercept: bool
) -> np.ndarray:
    """A fit's (coef, intercept) as the solvers' flat coefficients. Two classes: the
    binomial row split evenly, -1/2 and +1/2 (the penalised two-row optimum is symmetric)."""
    coef, intercept = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in start)
    intercept = intercept.reshape(-1)
    if n_classes == 2 and coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    W = np.zeros((n_classes, width))
    W[:, :-1] = coef
    if fit_intercept:
        W[:, -1] = intercept
    return W.ravel(order="F")


def _lbfgs(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    size: int,
    tol: float,
    max_iter: int,
    progress: Callable[[int, float], None],
    start: np.ndarray | None = None,
) -> SoftmaxFit:
    """scikit-learn's L-BFGS over the flat coefficients; ``coef`` holds them flat."""
    iteration = 0

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        nonlocal iteration
        iteration += 1
        progress(iteration, float(intermediate_result.fun))

    result = minimize_lbfgs(objective, size, tol=tol, max_iter=max_iter, callback=callback,
                            start=start)  # fmt: skip
    message = result.message if isinstance(result.message, str) else str(result.message)
    return SoftmaxFit(
        coef=result.x,
        intercept=np.zeros(0),
        n_iter=int(min(result.nit, max_iter)),
        n_evaluations=int(result.nfev),
        converged=bool(result.status == 0),
        message=message,
        seconds=0.0,
        objective=float(result.fun),
        grad_max=float(np.max(np.abs(result.jac))),
    )


def _newton(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    hessian: SampledHessian,
    n_classes: int,
    width: int,
    tol: float,
    max_iter: int,
    progress: Callable[[int, float], None],
    start: np.ndarray | None = None,
) -> SoftmaxFit:
    """Newton-CG on a sample's Hessian (`distrib.linear.newton`); ``coef`` holds the
    coefficients flat, as L-BFGS's."""
    evaluations = 0

    def on_matrix(problems: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal evaluations
        evaluations += 1
        loss, grad = objective(W[0].ravel(order="F"))
        return np.array([loss]), grad.reshape((1, n_classes, width), order="F")

    (result,) = minimize_newton(
        on_matrix,
        hessian,
        (1, n_classes, width),
        tol=tol,
        max_iter=max_iter,
        callback=lambda iteration, results: progress(iteration, results[0].fun),
        start=None if start is None else start.reshape((1, n_classes, width), order="F"),
        min_iter=0 if start is None else 1,  # a warm start moves towards its own optimum
    )
    return SoftmaxFit(
        coef=result.W.ravel(order="F"),
        intercept=np.zeros(0),
        n_iter=result.n_iter,
        n_evaluations=evaluations,
        converged=result.converged,
        message=result.message,
        seconds=0.0,
        solver="newton-cg",
        objective=result.fun,
        grad_max=result.grad_max,
        details=describe(result, hessian),
    )
