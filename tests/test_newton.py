"""Newton-CG on a sampled Hessian: its products, its sample, and its optimum against
scikit-learn's (digits and an MNIST slice), with its passes counted apart from the solver."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from distrib.config import TrainConfig
from distrib.errors import ConfigError
from distrib.linear import softmax
from distrib.linear.multinomial import fit_softmax, objective_weights
from distrib.linear.newton import RowSample, SampledHessian, joined, sample_stride, stride_rows
from distrib.parallel.blocks.block import Evaluation, LocalBlocks, load_block
from distrib.parallel.blocks.runner import ClusterBlocks
from distrib.parallel.rows import InMemoryArrays


def _hessian_times(X: np.ndarray, P: np.ndarray, w: np.ndarray, V: np.ndarray) -> np.ndarray:
    """The softmax Hessian's product written out: sum_i w_i (diag p_i - p_i p_i^T) V x~_i x~_i^T."""
    Xt = np.column_stack([X, np.ones(len(X))])
    U = Xt @ V.T
    R = w[:, None] * P * (U - np.sum(P * U, axis=1, keepdims=True))
    return R.T @ Xt


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_hessian_product_is_the_formula_and_the_same_bits_again(dtype, rtol: float) -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((300, 37)) < 0.3) * rng.random((300, 37))
    X = sp.csr_matrix(dense.astype(dtype))
    coef, intercept = rng.normal(size=(11, 37)), rng.normal(size=11)
    P = softmax.probabilities(X, coef, intercept)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    w, V = rng.random(300), rng.normal(size=(11, 38))
    got, expected = softmax.hessian_product(X, P, w, V), _hessian_times(X.toarray(), P, w, V)
    scale = np.abs(expected).max()  # float32: the products' precision, of the largest entry
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)
    np.testing.assert_array_equal(got, softmax.hessian_product(X, P, w, V))
    ones = softmax.hessian_product(X, P, None, V)
    expected = _hessian_times(X.toarray(), P, np.ones(300), V)
    np.testing.assert_allclose(ones, expected, rtol=rtol, atol=rtol * scale)


def test_rows_at_takes_rows_of_dense_csr_and_coded_rows() -> None:
    rng = np.random.default_rng(1)
    pixels = ((rng.random((50, 30)) < 0.2) * rng.integers(0, 256, (50, 30))).astype(np.uint8)
    values = pixels.astype(np.float32) / 255
    at = np.array([0, 3, 7, 49])
    coded = softmax.prepare(pixels.astype(np.float32))
    table = np.arange(256, dtype=np.float32) / 255
    codes = coded.data.astype(np.uint8)
    as_codes = softmax.CodedCSR(coded.shape, codes, coded.indices, coded.indptr, table)
    for rows in (values, softmax.prepare(values), as_codes):  # dense, CSR, coded CSR
        got = softmax.rows_at(rows, at)
        assert got.indices.dtype == np.int32
        np.testing.assert_array_equal(got.toarray(), values[at])
    assert softmax.rows_at(values, np.arange(0)).shape == (0, 30)


def test_the_sample_is_every_strideth_row_however_the_blocks_are_cut() -> None:
    X, y = load_digits(return_X_y=True)
    data = InMemoryArrays(X.astype(np.float32), y, np.linspace(0.5, 2.0, len(y)))
    stride = 7
    for cuts in ((0, len(y)), (0, 40, 41, 900, len(y))):
        blocks = [load_block(data, a, b, np.arange(10)) for a, b in itertools.pairwise(cuts)]
        sample = joined([block.sample(stride) for block in blocks])
        np.testing.assert_array_equal(sample.X.toarray(), X[::stride].astype(np.float32))
        np.testing.assert_array_equal(sample.codes, y[::stride])
        np.testing.assert_array_equal(sample.weights, data.weights(0, len(y))[::stride])
    np.testing.assert_array_equal(stride_rows(40, 10, 7), [2, 9])
    assert sample_stride(60_000) == 3 and sample_stride(39_999) == 1 and sample_stride(10) == 1


def test_cluster_blocks_gather_the_sample_from_their_workers(cluster_client: Client) -> None:
    X, y = load_digits(return_X_y=True)
    data = InMemoryArrays(X.astype(np.float32), y)
    runner = ClusterBlocks.from_training_data(cluster_client, data, np.arange(10), groups=1)
    try:
        sample = runner.sample(5)
        assert len({b["worker"] for b in runner.describe()}) == 2
    finally:
        runner.release()
    np.testing.assert_array_equal(sample.X.toarray(), X[::5].astype(np.float32))
    np.testing.assert_array_equal(sample.codes, y[::5])
    assert sample.weights is None


class CountingBlocks(LocalBlocks):
    """`LocalBlocks` that count the evaluations asked of them (each a pass over the rows)."""

    calls = 0

    def evaluate(self, coef, intercept, class_weight) -> Evaluation:  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().evaluate(coef, intercept, class_weight)


def _objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, b: np.ndarray, C: float) -> float:
    Z = X @ coef.T + b
    top = Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(Z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(lse - Z[np.arange(len(y)), y]) + np.sum(coef**2) / (2 * C * len(y)))


def _gradient(
    X: np.ndarray, y: np.ndarray, coef: np.ndarray, b: np.ndarray, C: float
) -> np.ndarray:
    """The objective's gradient written out in float64 (coefficients, then intercepts)."""
    Z = X @ coef.T + b
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    P[np.arange(len(y)), y] -= 1
    return np.column_stack([P.T @ X / len(y) + coef / (C * len(y)), P.mean(axis=0)])


def test_newton_on_60000_mnist_rows_reaches_the_optimum_from_a_sample(
    mnist_arrays: tuple[np.ndarray, np.ndarray],
) -> None:
    """60,000 MNIST rows, the Hessian from every 3rd (`sample_stride`): the optimum (its
    gradient, written out in float64, vanishes to the float32 rows' precision) in a few
    passes, counted by the blocks themselves."""
    X_all, y_all = mnist_arrays
    X = (X_all[:60_000] / 255).astype(np.float32)
    y = y_all[:60_000].astype(np.int64)
    C = 0.1
    blocks = CountingBlocks(InMemoryArrays(X, y), np.arange(10))
    sample = blocks.sample(sample_stride(len(y)))
    assert sample.n_rows == 20_000
    fit = fit_softmax(blocks, n_features=784, n_classes=10, weight_sum=float(len(y)), C=C,
                      tol=1e-5, max_iter=100, solver="newton-cg", sample=sample)  # fmt: skip
    record = fit.record()
    assert fit.converged and record["grad_max"] <= 1e-5
    assert record["passes"] == blocks.calls <= 25
    assert record["hessian_rows"] == 20_000 and record["hessian_products"] >= fit.n_iter
    assert record["objective"] == pytest.approx(
        _objective(X.astype(np.float64), y, fit.coef, fit.intercept, C), rel=1e-6
    )
    exact = _gradient(X.astype(np.float64), y, fit.coef, fit.intercept, C)
    assert np.abs(exact).max() <= 2e-5


def test_newton_with_weights_and_no_intercept_matches_sklearn() -> None:
    X, y = load_digits(return_X_y=True)
    X = X / 16
    weights = np.linspace(0.2, 3.0, len(y))
    codes = y.astype(np.int64)
    per_class, total = objective_weights(codes, 10, "balanced", weights)
    blocks = LocalBlocks(InMemoryArrays(X, y, weights), np.arange(10))
    fit = fit_softmax(
        blocks,
        n_features=64,
        n_classes=10,
        weight_sum=total,
        C=0.5,
        tol=1e-9,
        max_iter=100,
        fit_intercept=False,
        class_weights=per_class,
        solver="newton-cg",
        sample=blocks.sample(3),
    )
    theirs = LogisticRegression(
        C=0.5, tol=1e-12, max_iter=10_000, fit_intercept=False, class_weight="balanced"
    ).fit(X, y, sample_weight=weights)
    assert fit.converged
    np.testing.assert_allclose(fit.coef, theirs.coef_, atol=1e-5)
    np.testing.assert_array_equal(fit.intercept, 0.0)


def test_two_classes_fit_the_binomial_model() -> None:
    X, y = load_digits(n_class=2, return_X_y=True)
    blocks = LocalBlocks(InMemoryArrays(X / 16, y), np.arange(2))
    fit = fit_softmax(
        blocks, n_features=64, n_classes=2, weight_sum=float(len(y)), C=1.0, tol=1e-10,
        max_iter=100, solver="newton-cg", sample=blocks.sample(1),
    )  # fmt: skip
    theirs = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X / 16, y)
    np.testing.assert_allclose(fit.coef, theirs.coef_, atol=1e-6)
    np.testing.assert_allclose(fit.intercept, theirs.intercept_, atol=1e-6)


def test_the_preconditioner_inverts_its_kronecker_approximation() -> None:
    """With the Hessian taken at zero on rows whose features are whitened, the preconditioner
    undoes the curvature of the softmax exactly where the Kronecker form is the Hessian."""
    rng = np.random.default_rng(3)
    X = sp.csr_matrix(rng.normal(size=(400, 6)))
    hessian = SampledHessian(RowSample(X, rng.integers(0, 3, 400)), 3, None, 0.01, True)
    only = np.array([0])
    hessian.at(np.zeros((1, 3, 7)), only)
    V = rng.normal(size=(1, 3, 7))
    V -= V.mean(axis=1)  # the directions the loss sees (a shift of all classes it does not)
    again = hessian.precondition(hessian.product(V, only), only)
    np.testing.assert_allclose(again, V, rtol=0.05, atol=0.05)
    hessian.close()


def test_auto_is_newton_but_lbfgs_for_balanced_one_vs_rest() -> None:
    assert TrainConfig(strategy="multinomial").fit_solver == "newton-cg"
    assert TrainConfig(strategy="multinomial", solver="lbfgs").fit_solver == "lbfgs"
    assert TrainConfig(strategy="ovr").fit_solver == "newton-cg"
    assert TrainConfig(strategy="ovr").estimator_params()["solver"] == "newton-cg"
    # balanced weights fit each class apart, with scikit-learn: its lbfgs
    assert TrainConfig(strategy="ovr", class_weight="balanced").fit_solver == "lbfgs"
    with pytest.raises(ConfigError, match=r"newton-cg or lbfgs.*got solver 'saga'.*--solver auto"):
        TrainConfig(strategy="multinomial", solver="saga")
