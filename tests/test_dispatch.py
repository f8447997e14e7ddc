"""The distributed binary fits equal in-process scikit-learn fits on the same data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client
from joblib import parallel_config
from sklearn.linear_model import LogisticRegression

from distrib.config import TrainConfig
from distrib.data.datasets import load_dataset, load_mnist
from distrib.data.split import split_arrays
from distrib.linear.model import LinearModel
from distrib.parallel.cluster import worker_infos
from distrib.parallel.dispatch import BinaryFit, fit_binary_classifiers
from distrib.parallel.prepared import (
    choose_layout,
    density_of,
    prepare_split_arrays,
    write_array_files,
)
from distrib.parallel.reduce import reduce_fits
from distrib.parallel.rows import InMemoryArrays, load_in_memory

from .conftest import REPO


def _reference(X: np.ndarray, y: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """One in-process LogisticRegression per class."""
    coefs, intercepts = [], []
    for label in np.unique(y):
        model = LogisticRegression(**params).fit(X, (y == label).astype(int))
        coefs.append(model.coef_[0])
        intercepts.append(model.intercept_[0])
    return np.array(coefs), np.array(intercepts)


def _wait_until_idle(client: Client, timeout: float = 30.0) -> None:
    """Until no task runs on the shared cluster: a worker still busy with an earlier test's
    work weighs more to the scheduler, which may then put both groups on the other (seen
    once in CI: "both workers should get classes")."""
    deadline = time.monotonic() + timeout
    while any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.05)


def _fit_on_cluster(client: Client, data, classes, params) -> tuple:
    _wait_until_idle(client)
    scatter = [data] if isinstance(data, InMemoryArrays) else None
    seen: list[BinaryFit] = []
    with parallel_config(backend="dask", client=client, scatter=scatter):
        fits = fit_binary_classifiers(data, classes, params, on_fit=seen.append)
    assert seen == fits, "on_fit must see every fit as it arrives"
    coef, intercept, records = reduce_fits(fits, classes)
    return LinearModel(coef, intercept, classes), records


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("transfer", ["path", "scatter"])
def test_digits_coefficients_match_in_process_fits(
    cluster_client: Client, tmp_path: Path, transfer: str, layout: str, solver: str
) -> None:
    parts = split_arrays(load_dataset("digits"), "notebook", "unit")
    X_train, y_train = parts.X_train.compute(), parts.y_train.compute()
    # L-BFGS takes scikit-learn's path at its default tolerance; Newton-CG's optimum is
    # compared with scikit-learn's, both solved to a tight tolerance
    tol = 1e-4 if solver == "lbfgs" else 1e-9
    params = TrainConfig(dataset="digits", C=1.0, solver=solver, tol=tol).estimator_params()
    files = write_array_files(parts.X_train, parts.y_train, tmp_path, {"test": 1}, layout)
    stored, _ = files.arrays()
    assert sp.issparse(stored) == (layout == "sparse")
    np.testing.assert_array_equal(stored.toarray() if sp.issparse(stored) else stored, X_train)
    data = files if transfer == "path" else load_in_memory(files)
    classes = np.unique(y_train)

    model, records = _fit_on_cluster(cluster_client, data, classes, params)

    # the classes fitted in lockstep, two groups on two workers, give the bits of all ten
    # fitted together in this process (whose BLAS may run several threads)
    here = fit_binary_classifiers(InMemoryArrays(stored, y_train), classes, params)
    assert len({fit.worker for fit in here}) == 1
    mine, my_intercept, _ = reduce_fits(here, classes)
    np.testing.assert_array_equal(model.coef, mine)
    np.testing.assert_array_equal(model.intercept, my_intercept)
    # and scikit-learn's model, to the solvers' tolerance
    reference = params if solver == "lbfgs" else {**params, "solver": "newton-cholesky"}
    coef, intercept = _reference(stored, y_train, reference)
    np.testing.assert_allclose(model.coef, coef, rtol=0, atol=2e-3)
    np.testing.assert_allclose(model.intercept, intercept, rtol=0, atol=2e-3)
    X_test = parts.X_test.compute()
    expected = classes[np.argmax(X_test @ coef.T + intercept, axis=1)]
    np.testing.assert_array_equal(model.predict(X_test), expected)
    workers = set(worker_infos(cluster_client))
    assert [r["label"] for r in records] == classes.tolist()
    assert {r["worker"] for r in records} <= workers
    assert len({r["worker"] for r in records}) == 2, "both workers should get classes"
    assert all(r["converged"] and r["n_iter"] > 0 and r["seconds"] >= 0 for r in records)


@pytest.mark.parametrize("layout", [pytest.param("dense", marks=pytest.mark.slow), "sparse"])
def test_mnist_slice_saga_l1_matches_in_process(
    cluster_client: Client, mnist_home: Path, layout: str
) -> None:
    parts = split_arrays(load_mnist(mnist_home, fetch=False), "notebook", "unit")
    X_train = parts.X_train[:3000].compute(scheduler="threads")
    y_train = parts.y_train[:3000].compute(scheduler="threads")
    if layout == "sparse":
        X_train = sp.csr_matrix(X_train)
    params = TrainConfig(C=0.5, l1_ratio=1.0, solver="saga", tol=1e-2).estimator_params()
    classes = np.unique(y_train)

    model, _records = _fit_on_cluster(
        cluster_client, InMemoryArrays(X_train, y_train), classes, params
    )

    coef, intercept = _reference(X_train, y_train, params)
    np.testing.assert_allclose(model.coef, coef, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(model.intercept, intercept, rtol=1e-6, atol=1e-8)
    X_test = parts.X_test.compute(scheduler="threads")
    expected = classes[np.argmax(X_test @ coef.T + intercept, axis=1)]
    np.testing.assert_array_equal(model.predict(X_test), expected)
    assert np.mean(model.coef == 0) > 0.3, "an L1 fit should zero many pixels"


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_row_ranges_read_from_files_equal_slices(tmp_path: Path, layout: str) -> None:
    """What a multinomial block reads by path: exactly its rows, in fresh aligned memory."""
    parts = split_arrays(load_dataset("digits"), "notebook", "unit")
    files = write_array_files(parts.X_train, parts.y_train, tmp_path, {"test": 2}, layout)
    X_all, y_all = parts.X_train.compute(), parts.y_train.compute()
    for start, stop in [(0, 1), (17, 400), (1000, len(y_all))]:
        X, y = files.rows(start, stop)
        assert not isinstance(X, np.memmap) and not isinstance(y, np.memmap)
        dense = X.toarray() if sp.issparse(X) else X
        np.testing.assert_array_equal(dense, X_all[start:stop])
        np.testing.assert_array_equal(y, y_all[start:stop])
        assert sp.issparse(X) == (layout == "sparse")


def test_auto_layout_follows_density() -> None:
    assert density_of(da.from_array(np.eye(8, dtype=np.float32))) == 0.125
    assert choose_layout("auto", 0.125) == "sparse"
    assert choose_layout("auto", 0.9) == "dense"
    assert choose_layout("dense", 0.125) == "dense"
    assert choose_layout("sparse", 0.9) == "sparse"
    digits = split_arrays(load_dataset("digits"), "notebook", "unit").X_train
    assert choose_layout("auto", density_of(digits)) == "dense"  # about half are ink


def test_prepared_arrays_are_reused_and_cache_their_density(tmp_path: Path) -> None:
    parts = split_arrays(load_dataset("digits"), "notebook", "unit")
    key = {"dataset": "digits", "test": 2}
    train, test, density = prepare_split_arrays(parts, tmp_path, key)
    assert train.layout == test.layout == "dense" and 0.3 < density < 0.7
    np.testing.assert_array_equal(test.arrays()[0], parts.X_test.compute())
    np.testing.assert_array_equal(test.arrays()[1], parts.y_test.compute())
    stamp = {p: os.stat(p).st_mtime_ns for p in train.paths() + test.paths()}
    again, again_test, same = prepare_split_arrays(parts, tmp_path, key)
    assert (again, again_test, same) == (train, test, density)
    assert {p: os.stat(p).st_mtime_ns for p in again.paths() + again_test.paths()} == stamp
    sparse, _, _ = prepare_split_arrays(parts, tmp_path, key, "sparse")
    assert Path(sparse.folder).parent.parent == Path(train.folder).parent.parent
    X, y = sparse.arrays()
    np.testing.assert_array_equal(X.toarray(), parts.X_train.compute())
    np.testing.assert_array_equal(y, parts.y_train.compute())


def test_the_backend_fix_reads_state_this_joblib_has(cluster_client) -> None:
    """ClusterBackend relies on joblib's private backend state; if a joblib release renames
    it, this fails (and the backend refuses to run: `check_joblib`)."""
    import inspect

    from joblib._dask import DaskDistributedBackend

    from distrib.parallel.joblib_backend import cluster_backend, missing_joblib_internals

    backend = cluster_backend(cluster_client)
    assert missing_joblib_internals(backend) == []
    assert "self._continue = True" in inspect.getsource(DaskDistributedBackend.start_call)


def test_a_joblib_without_that_state_is_refused_by_name(cluster_client) -> None:
    """Never a silent fallback to joblib's own loop (no backup attempts): a backend that
    lacks what ClusterBackend reads is refused with the fix."""
    from joblib._dask import DaskDistributedBackend

    from distrib.errors import ClusterError
    from distrib.parallel.joblib_backend import TESTED_JOBLIB, check_joblib

    backend = DaskDistributedBackend(client=cluster_client)
    del backend._callbacks  # as a joblib that renamed it would make it
    with pytest.raises(ClusterError, match=r"lacks _callbacks.*pip install 'joblib>=1\.4"):
        check_joblib(backend)
    assert TESTED_JOBLIB == ">=1.4,<1.7"


def test_pyproject_pins_the_joblib_releases_the_backend_was_tested_with() -> None:
    import re

    import joblib
    from packaging.specifiers import SpecifierSet

    from distrib.parallel.joblib_backend import TESTED_JOBLIB

    pins = re.findall(r'^\s*"(joblib[^"]*)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert pins == [f"joblib{TESTED_JOBLIB}"]
    assert joblib.__version__ in SpecifierSet(TESTED_JOBLIB)
