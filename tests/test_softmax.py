"""The block kernel without a cluster: finite differences and scikit-learn's own loss."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn._loss.loss import HalfMultinomialLoss
from sklearn.linear_model._linear_loss import LinearModelLoss

from distrib.errors import DataError
from distrib.linear.softmax import LANES, PART_ROWS, CodedCSR, PassSums, loss_grad, prepare

from .conftest import REPO


def _problem(
    n_rows: int, n_features: int, n_classes: int, density: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features)) * (rng.random((n_rows, n_features)) < density)
    codes = rng.integers(0, n_classes, n_rows)
    coef = rng.normal(size=(n_classes, n_features)) * 0.3
    intercept = rng.normal(size=n_classes) * 0.3
    weights = rng.uniform(0.2, 3.0, n_rows)
    return X, codes, coef, intercept, weights


def _reference(X, codes, coef, intercept, weights):  # float64, the textbook formulas
    scores = X @ coef.T + intercept
    top = scores.max(axis=1, keepdims=True)
    total = np.exp(scores - top).sum(axis=1)
    rows = np.arange(len(codes))
    w = np.ones(len(codes)) if weights is None else weights
    loss = float(np.sum(w * (np.log(total) + top[:, 0] - scores[rows, codes])))
    residual = np.exp(scores - top) / total[:, None]
    residual[rows, codes] -= 1.0
    residual *= w[:, None]
    return loss, np.hstack([(X.T @ residual).T, residual.sum(axis=0)[:, None]])


LAYOUTS = {
    "csr": sp.csr_matrix,
    "dense": np.asarray,  # dense data (70 % non-zero) stays dense: the BLAS path
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("n_classes", [2, 3, LANES + 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_finite_differences(layout: str, n_classes: int, weighted: bool) -> None:
    X, codes, coef, intercept, weights = _problem(60, 7, n_classes, 0.7)
    w = weights if weighted else None
    data = LAYOUTS[layout](X)
    _, grad = loss_grad(data, codes, coef, intercept, w)
    assert grad.shape == (n_classes, 8)
    step = 1e-6
    rng = np.random.default_rng(1)
    for _ in range(12):
        k, j = int(rng.integers(n_classes)), int(rng.integers(8))
        up, down = coef.copy(), coef.copy()
        b_up, b_down = intercept.copy(), intercept.copy()
        if j < 7:
            up[k, j] += step
            down[k, j] -= step
        else:
            b_up[k] += step
            b_down[k] -= step
        numeric = (
            loss_grad(data, codes, up, b_up, w)[0] - loss_grad(data, codes, down, b_down, w)[0]
        ) / (2 * step)
        assert numeric == pytest.approx(grad[k, j], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_scikit_learns_multinomial_loss(layout: str, dtype: type, weighted: bool) -> None:
    """More rows than `PART_ROWS` (the float32 gradient is flushed into float64 in parts)."""
    n_classes = 10
    X, codes, coef, intercept, weights = _problem(2 * PART_ROWS + 300, 40, n_classes, 0.3)
    X = X.astype(dtype)
    if layout == "dense":
        X[X == 0] = 0.01  # dense data
    w = weights if weighted else None
    data = LAYOUTS[layout](X)
    loss, grad = loss_grad(data, codes, coef, intercept, w)

    theirs = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=n_classes), fit_intercept=True)
    packed = np.hstack([coef, intercept[:, None]])
    X64 = X.astype(np.float64)
    their_loss, their_grad = theirs.loss_gradient(packed, X64, codes.astype(np.float64), w)
    total = len(codes) if w is None else w.sum()  # scikit-learn averages; we sum
    rtol = 1e-10 if dtype == np.float64 else 2e-6
    assert loss / total == pytest.approx(their_loss, rel=rtol)
    np.testing.assert_allclose(grad / total, their_grad, rtol=rtol * 10, atol=rtol * 1e-1)
    ref_loss, ref_grad = _reference(X64, codes, coef, intercept, w)
    assert loss == pytest.approx(ref_loss, rel=rtol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol * 10, atol=rtol * total * 1e-1)


def test_sparse_like_dense_rows_go_through_the_sparse_kernel() -> None:
    X, codes, coef, intercept, _ = _problem(500, 30, 4, 0.1)
    assert sp.issparse(prepare(X))  # 10 % non-zero: CSR, same numbers
    assert isinstance(prepare(X + 1.0), np.ndarray)
    dense_result = loss_grad(X, codes, coef, intercept)
    sparse_result = loss_grad(sp.csr_matrix(X), codes, coef, intercept)
    assert dense_result[0] == pytest.approx(sparse_result[0], rel=1e-12)
    np.testing.assert_allclose(dense_result[1], sparse_result[1], rtol=1e-12, atol=1e-12)


def test_integer_rows_and_csr_with_int64_indices() -> None:
    X, codes, coef, intercept, _ = _problem(100, 12, 3, 0.4)
    ref_loss, ref_grad = _reference(np.round(X * 10), codes, coef, intercept, None)
    as_int = sp.csr_matrix(np.round(X * 10).astype(np.int16))
    as_int.indices = as_int.indices.astype(np.int64)
    as_int.indptr = as_int.indptr.astype(np.int64)
    loss, grad = loss_grad(as_int, codes, coef, intercept)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-10)


def test_empty_rows_and_mismatched_shapes() -> None:
    X, codes, coef, intercept, _ = _problem(10, 5, 3, 0.5)
    loss, grad = loss_grad(sp.csr_matrix((0, 5)), codes[:0], coef, intercept)
    assert loss == 0.0 and not grad.any()
    with pytest.raises(ValueError, match=r"X has shape \(10, 5\), codes \(9,\).*must agree"):
        loss_grad(X, codes[:9], coef, intercept)
    with pytest.raises(ValueError, match=r"coef \(3, 4\).*must agree"):
        loss_grad(X, codes, coef[:, :4], intercept)


def test_class_indices_outside_coef_are_refused() -> None:
    X, codes, coef, intercept, _ = _problem(10, 5, 3, 0.5)
    with pytest.raises(ValueError, match=r"class indices must lie in 0\.\.2"):
        loss_grad(sp.csr_matrix(X), codes + 3, coef, intercept)


def _thread_test_blocks() -> list[tuple[str, object, np.ndarray, np.ndarray, np.ndarray]]:
    """Dense and CSR blocks, float32 and float64, large enough that a BLAS would split them
    between threads (digits, where a multi-threaded OpenBLAS once gave other bits, and a
    4,000 x 300 block)."""
    from sklearn.datasets import load_digits

    X_digits, y_digits = load_digits(return_X_y=True)
    big, big_codes, *_ = _problem(4000, 300, 10, 0.6, seed=3)
    rng = np.random.default_rng(1)
    blocks = []
    for name, X, codes in (("digits", X_digits / 16, y_digits), ("big", big, big_codes)):
        coef = rng.normal(size=(10, X.shape[1])) * 0.05
        intercept = rng.normal(size=10)
        for dtype in (np.float32, np.float64):
            for layout in ("dense", "csr"):
                rows = X.astype(dtype)
                rows = sp.csr_matrix(rows) if layout == "csr" else rows
                blocks.append((f"{name} {layout} {np.dtype(dtype).name}", rows, codes, coef,
                               intercept))  # fmt: skip
    return blocks


def _evaluate_blocks() -> dict[str, tuple[float, bytes]]:
    """Each block's loss and gradient bits in this process (also runs on workers)."""
    out = {}
    for name, X, codes, coef, intercept in _thread_test_blocks():
        loss, grad = loss_grad(X, codes, coef, intercept)
        out[name] = (loss, grad.tobytes())
    return out


def test_a_block_gives_the_same_bits_whatever_the_processes_threads(
    cluster_client, tmp_path
) -> None:
    """Issue 23: the same blocks evaluated here with a multi-threaded BLAS (4 threads asked
    for, and under threadpoolctl's limits of 1 and 2), in a fresh process started with
    OMP_NUM_THREADS=4, and on the cluster's single-threaded workers: the same bits."""
    import pickle
    import subprocess
    import sys

    from threadpoolctl import threadpool_limits

    with threadpool_limits(4):
        here = _evaluate_blocks()
    assert len(here) == 8
    for limit in (1, 2):
        with threadpool_limits(limit):
            assert _evaluate_blocks() == here, f"BLAS limited to {limit} thread(s)"
    result = tmp_path / "bits.pkl"
    code = (
        "import pickle, sys; from tests.test_softmax import _evaluate_blocks; "
        f"pickle.dump(_evaluate_blocks(), open({str(result)!r}, 'wb'))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4",
           "MKL_NUM_THREADS": "4"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with result.open("rb") as fh:
        assert pickle.load(fh) == here, "a fresh process with 4 BLAS threads"
    on_workers = cluster_client.run(_evaluate_blocks)
    assert len(on_workers) == 2
    for worker, bits in on_workers.items():
        assert bits == here, worker


def test_vector_exp_is_within_one_ulp_of_numpys() -> None:
    """The kernels' exp (a vector of `EXP_LANES` at a time) over the range a softmax row
    uses, [-708, 0], against numpy's; -inf and anything below -708 give 0."""
    import numba

    from distrib.linear.softmax import EXP_LANES, _exp_lanes

    @numba.njit
    def exp_all(values):  # type: ignore[no-untyped-def]
        for start in range(0, values.shape[0], EXP_LANES):
            _exp_lanes(values, start, EXP_LANES)

    rng = np.random.default_rng(3)
    x = np.concatenate([-rng.random(40_000) * 30, -rng.random(8_000) * 708, [0.0, -708.0]])
    x = np.concatenate([x, np.zeros(-len(x) % EXP_LANES)])
    got = x.copy()
    exp_all(got)
    relative = np.abs(got - np.exp(x)) / np.exp(x)
    assert relative.max() <= np.finfo(np.float64).eps
    tiny = np.array([-np.inf, -708.5, -750.0, -1e300, -np.inf, -709.0, -800.0, -708.01])
    exp_all(tiny)
    assert np.all(tiny == 0.0)


def test_vector_log1p_is_within_three_ulp_of_numpys() -> None:
    """The binary loss's log1p (a vector of `EXP_LANES` at a time) over [0, 1], where the
    kernels take it (``log1p(exp(-|z|))``), tiny values and both ends included."""
    import numba

    from distrib.linear.softmax import EXP_LANES, _log1p_lanes

    @numba.njit
    def log1p_all(values):  # type: ignore[no-untyped-def]
        for start in range(0, values.shape[0], EXP_LANES):
            _log1p_lanes(values, start, EXP_LANES)

    rng = np.random.default_rng(4)
    x = np.concatenate(
        [rng.random(40_000), np.exp(-rng.random(8_000) * 700), [0.0, 1.0, 5e-324, 1e-300],
         np.sqrt(2) - 1 + np.array([-1e-16, 0.0, 1e-16, 2e-16])]
    )  # fmt: skip
    x = np.concatenate([x, np.zeros(-len(x) % EXP_LANES)])
    got = x.copy()
    log1p_all(got)
    want = np.log1p(x)
    assert np.all(got[x == 0] == 0.0)
    assert np.all(np.abs(got - want) <= 3 * np.spacing(want))


def test_the_passes_load_from_numbas_cache_in_a_new_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker that starts loads the compiled passes instead of compiling them (~3-6 s):
    the second process finds every pass it runs in the cache the first one wrote."""
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from distrib.linear import softmax\n"
        "softmax.warm_up(('softmax', 'binary'), dtypes=(np.float32,))\n"
        "for passes in (softmax._SOFTMAX, softmax._BINARY):\n"
        "    for kernel in passes:\n"
        "        stats = kernel.stats\n"
        "        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split("\n")[:4]
        for _ in range(2)
    ]
    first, second = ([tuple(int(n) for n in line.split()) for line in run] for run in runs)
    assert all(misses > 0 for _, misses in first)  # compiled, and written to the cache
    assert all(hits > 0 and misses == 0 for hits, misses in second), second


def _pixel_rows(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One-byte pixels (~19 % non-zero, as MNIST's) and their float32 table (pixel / 255)."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((n_rows, 40)) < 0.19) * rng.integers(1, 256, (n_rows, 40))
    table = np.arange(256, dtype=np.float32) / np.float32(255)
    return pixels.astype(np.uint8), table


def _coded(pixels: np.ndarray, table: np.ndarray) -> CodedCSR:
    csr = sp.csr_matrix(pixels)
    indices, indptr = csr.indices.astype(np.uint16), csr.indptr.astype(np.int64)
    return CodedCSR(csr.shape, csr.data, indices, indptr, table)


@pytest.mark.parametrize("weighted", [False, True])
def test_coded_rows_give_the_bits_of_their_decoded_floats(weighted: bool) -> None:
    pixels, table = _pixel_rows(3000)
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 10, len(pixels))
    coef, intercept = rng.normal(size=(10, 40)), rng.normal(size=10)
    weights = rng.random(len(pixels)) if weighted else None
    coded = _coded(pixels, table)
    loss, grad = loss_grad(coded, codes, coef, intercept, weights)
    floats = prepare(sp.csr_matrix(table[pixels]))
    assert floats.dtype == np.float32
    expected_loss, expected_grad = loss_grad(floats, codes, coef, intercept, weights)
    assert loss == expected_loss
    assert np.array_equal(grad, expected_grad)
    assert np.array_equal(coded.decoded().toarray(), table[pixels])


def test_a_pass_in_pieces_of_whole_parts_gives_the_bits_of_one_pass() -> None:
    n_rows = 2 * PART_ROWS + 700
    pixels, table = _pixel_rows(n_rows, seed=2)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 10, n_rows)
    coef, intercept = rng.normal(size=(10, 40)), rng.normal(size=10)
    loss, grad = loss_grad(_coded(pixels, table), codes, coef, intercept)
    sums = PassSums(coef, intercept, np.float32)
    for start in range(0, n_rows, PART_ROWS):
        stop = min(n_rows, start + PART_ROWS)
        sums.add(_coded(pixels[start:stop], table), codes[start:stop])
    losses, pieces_grad = sums.result()
    assert losses[0] == loss
    assert np.array_equal(pieces_grad, grad)
    # a piece that ends inside a part is only allowed last: the bits would differ
    ragged = PassSums(coef, intercept, np.float32)
    ragged.add(_coded(pixels[:100], table), codes[:100])
    with pytest.raises(ValueError, match=f"multiple of {PART_ROWS} rows"):
        ragged.add(_coded(pixels[100:200], table), codes[100:200])
    with pytest.raises(DataError, match="rows of float64 in a pass of float32 rows"):
        PassSums(coef, intercept, np.float32).add(np.ones((2, 40)), codes[:2])
