"""Class-versus-rest fits in lockstep (L-BFGS and Newton-CG) equal scikit-learn's, whatever
shares a pass."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from distrib.linear import binary
from distrib.linear.binary import fit_binary_lbfgs, fit_binary_newton
from distrib.linear.softmax import BINARY_LANES, binary_loss_grad

FITS = {"lbfgs": fit_binary_lbfgs, "newton-cg": fit_binary_newton}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def _theirs(X, y, label, **params) -> LogisticRegression:
    return LogisticRegression(**params).fit(X, (y == label).astype(int), sample_weight=None)


@pytest.mark.parametrize("solver", FITS)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_optimum_is_scikit_learns(digits, sparse: bool, dtype: type, solver: str) -> None:
    X, y = digits
    X = X.astype(dtype)
    rows = sp.csr_matrix(X) if sparse else X
    labels = [0, 3, 8]
    mine = FITS[solver](rows, y, labels, C=0.5, tol=1e-10, max_iter=5000)
    assert [m.positive for m in mine] == labels
    # float32 rows: products in float32, so the optimum to float32's precision
    close = 3e-3 if dtype == np.float32 else 1e-6
    # L-BFGS takes scikit-learn's lbfgs path (whose ftol stops it ~1e-6 short of the
    # optimum); Newton-CG reaches the optimum, as scikit-learn's exact Newton does
    reference = "lbfgs" if solver == "lbfgs" else "newton-cholesky"
    for solution in mine:
        theirs = _theirs(X.astype(np.float64), y, solution.positive, C=0.5, tol=1e-10,
                         max_iter=5000, solver=reference)  # fmt: skip
        assert 0 < solution.n_iter < 5000
        np.testing.assert_allclose(solution.coef, theirs.coef_[0], rtol=0, atol=close)
        assert solution.intercept == pytest.approx(theirs.intercept_[0], abs=close)


@pytest.mark.parametrize("solver", FITS)
def test_weights_and_no_intercept_as_scikit_learn(digits, solver: str) -> None:
    X, y = digits
    weights = np.random.default_rng(0).uniform(0.2, 3.0, len(y))
    (mine,) = FITS[solver](X.astype(np.float64), y, [7], C=2.0, tol=1e-10, max_iter=5000,
                           fit_intercept=False, sample_weight=weights)  # fmt: skip
    reference = "lbfgs" if solver == "lbfgs" else "newton-cholesky"
    theirs = LogisticRegression(
        C=2.0, tol=1e-10, max_iter=5000, fit_intercept=False, solver=reference
    ).fit(X.astype(np.float64), (y == 7).astype(int), sample_weight=weights)
    assert mine.intercept == 0.0
    np.testing.assert_allclose(mine.coef, theirs.coef_[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("solver", FITS)
def test_a_class_gets_the_same_bits_whatever_is_fitted_beside_it(digits, solver: str) -> None:
    X, y = digits
    rows = sp.csr_matrix(X)
    alone = FITS[solver](rows, y, [4], C=1.0, tol=1e-4, max_iter=100)[0]
    # nine problems: two lane groups; the class in the second one
    crowd = FITS[solver](rows, y, [0, 1, 2, 3, 5, 6, 7, 8, 4], C=1.0, tol=1e-4, max_iter=100)
    assert len(crowd) > BINARY_LANES
    beside = crowd[-1]
    assert beside.positive == 4
    np.testing.assert_array_equal(beside.coef, alone.coef)
    assert beside.intercept == alone.intercept and beside.n_iter == alone.n_iter


@pytest.mark.parametrize("solver", FITS)
def test_the_iteration_cap_is_reported_as_not_converged(digits, solver: str) -> None:
    X, y = digits
    (capped,) = FITS[solver](X, y, [9], C=10.0, tol=1e-12, max_iter=3)
    assert capped.n_iter == 3 and not capped.converged


def test_newton_cg_takes_a_third_of_the_passes_of_l_bfgs(mnist_arrays, monkeypatch) -> None:
    """On 30,000 MNIST rows (a 20,000-row Hessian sample), five classes in lockstep: the
    passes counted by the rows' evaluations themselves, Newton-CG's at most a third of
    L-BFGS's, and the same classifiers (scikit-learn's optimum to its tolerance)."""
    X, y = mnist_arrays
    rows = sp.csr_matrix(X[:30_000] / np.float32(255))
    codes, labels = y[:30_000].astype(np.int64), [1, 3, 5, 7, 9]
    passes = {"count": 0}

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        passes["count"] += 1
        return binary_loss_grad(*args, **kwargs)

    monkeypatch.setattr(binary, "binary_loss_grad", counted)
    fits = {}
    for solver, fit in FITS.items():
        passes["count"] = 0
        fits[solver] = fit(rows, codes, labels, C=0.1, tol=1e-4, max_iter=100)
        assert all(s.converged and s.passes == passes["count"] for s in fits[solver])
    assert fits["newton-cg"][0].passes <= fits["lbfgs"][0].passes / 3
    for newton, lbfgs in zip(fits["newton-cg"], fits["lbfgs"], strict=True):
        agree = np.mean(np.sign(rows @ newton.coef + newton.intercept)
                        == np.sign(rows @ lbfgs.coef + lbfgs.intercept))  # fmt: skip
        assert agree > 0.999


def test_binary_losses_are_scikit_learns(digits) -> None:
    from sklearn._loss.loss import HalfBinomialLoss

    X, y = digits
    rng = np.random.default_rng(1)
    coef, intercept = rng.normal(size=(2, X.shape[1])), rng.normal(size=2)
    losses, grad = binary_loss_grad(sp.csr_matrix(X), y, np.array([2, 5]), coef, intercept)
    for k, label in enumerate([2, 5]):
        raw = X.astype(np.float64) @ coef[k] + intercept[k]
        target = (y == label).astype(np.float64)
        loss, gradient = HalfBinomialLoss().loss_gradient(target, raw)
        assert losses[k] == pytest.approx(loss.sum(), rel=1e-6)
        np.testing.assert_allclose(grad[k, :-1], X.T.astype(np.float64) @ gradient, rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
        assert grad[k, -1] == pytest.approx(gradient.sum(), rel=1e-6, abs=1e-9)


def test_positives_must_match_the_coefficients(digits) -> None:
    from distrib.errors import DataError

    X, y = digits
    with pytest.raises(DataError, match="3 positive classes for 2 rows of coef"):
        binary_loss_grad(X, y, np.array([1, 2, 3]), np.zeros((2, X.shape[1])), np.zeros(2))
