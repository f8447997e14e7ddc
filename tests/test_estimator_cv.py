"""`DaskLogisticRegressionCV` against scikit-learn's `LogisticRegressionCV`, on the cluster."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from distributed import Client
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import KFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from distrib import DaskLogisticRegression, DaskLogisticRegressionCV
from distrib.errors import ConfigError, DataError
from distrib.estimator_cv import c_grid
from distrib.parallel.joblib_backend import cluster_backend

CS = [0.01, 0.1, 1.0, 10.0]


@pytest.fixture
def on_cluster(cluster_client: Client) -> Iterator[Client]:
    with parallel_config(backend=cluster_backend(cluster_client)):
        yield cluster_client


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _sklearn_cv(X, y, **params) -> LogisticRegressionCV:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its default scoring is changing
        return LogisticRegressionCV(
            Cs=CS, tol=1e-7, max_iter=10_000, scoring="accuracy", l1_ratios=(0,),
            use_legacy_attributes=False, **params,
        ).fit(X, y)  # fmt: skip


@parametrize_with_checks([DaskLogisticRegressionCV(Cs=2, cv=2)])
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    """In this process (no client): the fits on the cluster are the tests below."""
    check(estimator)


@pytest.mark.parametrize("strategy", ["multinomial", "ovr"])
def test_every_fold_score_and_the_chosen_c_are_scikit_learns(
    digits, on_cluster: Client, strategy: str
) -> None:
    """The same folds and Cs: every (fold, C) held-out accuracy and the chosen C as
    scikit-learn's ``LogisticRegressionCV`` (multinomial: its model; one-vs-rest: its
    ``OneVsRestClassifier`` of it), the refitted model close to its."""
    X, y = digits
    ours = DaskLogisticRegressionCV(Cs=CS, cv=3, strategy=strategy, tol=1e-8).fit(X, y)
    if strategy == "multinomial":
        theirs = _sklearn_cv(X, y, cv=3)
        their_scores, their_c, their_coef = theirs.scores_[:, 0, :], theirs.C_, theirs.coef_
    else:  # scikit-learn's search has no one-vs-rest: its OneVsRestClassifier per (fold, C)
        their_scores = np.array([[
            OneVsRestClassifier(LogisticRegression(C=C, tol=1e-7, max_iter=10_000))
            .fit(X[train], y[train]).score(X[test], y[test])
            for C in CS] for train, test in _stratified(y, 3)
        ])  # fmt: skip
        their_c, their_coef = CS[int(np.argmax(their_scores.mean(axis=0)))], None
    np.testing.assert_allclose(ours.scores_, their_scores, atol=0.002)
    assert their_c == ours.C_
    np.testing.assert_array_equal(ours.Cs_, CS)
    assert ours.coefs_paths_.shape == (3, len(CS), 10, 64)
    assert ours.intercepts_paths_.shape == (*ours.n_iter_.shape, 10)
    if their_coef is not None:
        np.testing.assert_allclose(ours.coef_, their_coef, atol=1e-3)
    reference = DaskLogisticRegression(C=ours.C_, strategy=strategy, tol=1e-8).fit(X, y)
    np.testing.assert_array_equal(ours.coef_, reference.coef_)  # the refit: a plain fit


def _stratified(y: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    return [(np.sort(a), np.sort(b)) for a, b in StratifiedKFold(n_splits).split(y, y)]


def test_without_refit_each_fold_s_best_model_is_averaged(digits, on_cluster: Client) -> None:
    X, y = digits
    ours = DaskLogisticRegressionCV(Cs=CS, cv=KFold(3), refit=False, strategy="multinomial",
                                    tol=1e-8).fit(X, y)  # fmt: skip
    theirs = _sklearn_cv(X, y, cv=KFold(3), refit=False)
    best = np.argmax(ours.scores_, axis=1)
    assert pytest.approx(float(np.mean(np.asarray(CS)[best]))) == ours.C_
    assert pytest.approx(float(theirs.C_)) == ours.C_
    np.testing.assert_allclose(ours.coef_, ours.coefs_paths_[np.arange(3), best].mean(axis=0))
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-3)


def test_a_dask_array_multinomial_search_keeps_the_rows_on_the_workers(
    digits, on_cluster: Client
) -> None:
    """Dask rows, multinomial: every fold's rows are blocks on the workers; the scores
    are those of the same search on the numpy rows."""
    X, y = digits
    lazy = DaskLogisticRegressionCV(Cs=CS[:2], cv=2, strategy="multinomial", tol=1e-8)
    lazy.fit(da.from_array(X, chunks=(400, 64)), y)
    eager = DaskLogisticRegressionCV(Cs=CS[:2], cv=2, strategy="multinomial", tol=1e-8)
    np.testing.assert_allclose(lazy.scores_, eager.fit(X, y).scores_, atol=1e-9)
    assert lazy.C_ == eager.C_
    assert {r["worker"] for r in lazy.fit_records_} <= set(on_cluster.scheduler_info()["workers"])


def test_the_chosen_model_is_saved_with_its_search(
    digits, on_cluster: Client, tmp_path: Path
) -> None:
    X, y = digits
    ours = DaskLogisticRegressionCV(Cs=CS[:3], cv=2, strategy="multinomial").fit(X, y)
    ours.save(tmp_path / "model")
    loaded = DaskLogisticRegression.load(tmp_path / "model")
    assert loaded.C == ours.C_ and loaded.strategy == "multinomial"
    np.testing.assert_array_equal(loaded.predict(X), ours.predict(X))
    search = json.loads((tmp_path / "model" / "model.json").read_text())["cross_validation"]
    assert search["Cs"] == CS[:3] and search["C"] == ours.C_ and search["n_folds"] == 2
    np.testing.assert_allclose(search["mean_scores"], ours.scores_.mean(axis=0))


def test_bad_settings_are_named() -> None:
    np.testing.assert_allclose(c_grid(3), [1e-4, 1.0, 1e4])
    for Cs, message in ((0, "give a count of at least 1"), ([0.1, -1], "every C must be"),
                        ("many", "give a count, or a list"), ([], "every C must be")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            c_grid(Cs)
    X, y = np.random.default_rng(0).random((12, 3)), np.repeat([0, 1, 2], 4)
    with pytest.raises(DataError, match="fold 0's training rows hold no sample of class"):
        DaskLogisticRegressionCV(Cs=2, cv=KFold(3)).fit(X, y)
    with pytest.raises(ConfigError, match="strategy"):
        DaskLogisticRegressionCV(strategy="nope").fit(X, y)
    lazy = da.from_array(X, chunks=(4, 3))
    with pytest.raises(DataError, match="compute_chunk_sizes"):
        DaskLogisticRegressionCV(Cs=2, cv=2).fit(lazy[lazy[:, 0] > 0.5], y[:6])


@pytest.mark.slow
def test_a_worker_killed_mid_search_gives_the_same_search_bit_for_bit(
    mnist_arrays: tuple[np.ndarray, np.ndarray],
) -> None:
    """SIGKILL a worker part way through a multinomial search (30,000 MNIST rows, 3 Cs x 3
    folds): its blocks are made again on a live worker, later folds are cut into as many
    blocks as the first, and every (fold, C) model, score, the chosen C and the refitted
    model are the undisturbed search's, bit for bit."""
    import os
    import signal
    import threading
    import time

    from distrib.parallel.cluster import start_local_cluster

    X, y = mnist_arrays
    X, y = X[:30_000].astype(np.float32) / np.float32(255), y[:30_000]
    cluster = start_local_cluster(2)
    client = Client(cluster, set_as_default=False)
    try:
        with client.as_current():

            def search() -> DaskLogisticRegressionCV:
                return DaskLogisticRegressionCV(Cs=[0.01, 0.1, 1.0], cv=3,
                                                strategy="multinomial").fit(X, y)  # fmt: skip

            started = time.perf_counter()
            reference = search()
            took = time.perf_counter() - started
            pids = client.run(os.getpid)
            victim = pids[sorted(pids)[0]]
            killed_at: list[float] = []

            def kill() -> None:
                os.kill(victim, signal.SIGKILL)
                killed_at.append(time.perf_counter())

            killer = threading.Timer(0.4 * took, kill)
            killer.start()
            disturbed = search()
            ended = time.perf_counter()
            killer.join(timeout=30)
            assert killed_at and killed_at[0] < ended, "the worker was killed after the search"
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)
    assert disturbed.C_ == reference.C_
    np.testing.assert_array_equal(disturbed.scores_, reference.scores_)
    np.testing.assert_array_equal(disturbed.coefs_paths_, reference.coefs_paths_)
    np.testing.assert_array_equal(disturbed.coef_, reference.coef_)
