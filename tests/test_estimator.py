"""The scikit-learn estimator: scikit-learn's own checks, pipelines, Dask arrays, files."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from distrib.data.datasets import load_mnist
from distrib.errors import ConfigError, OutputError
from distrib.estimator import DaskLogisticRegression
from distrib.parallel.cluster import worker_infos
from distrib.parallel.joblib_backend import cluster_backend


@pytest.fixture
def on_cluster(cluster_client: Client) -> Iterator[Client]:
    """Every joblib call inside the test runs on the session's LocalCluster."""
    with parallel_config(backend=cluster_backend(cluster_client)):
        yield cluster_client


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    X, y = load_digits(return_X_y=True)
    return tuple(train_test_split(X / 16.0, y, test_size=0.25, random_state=0))


@parametrize_with_checks(
    [DaskLogisticRegression(), DaskLogisticRegression(strategy="multinomial")],
)
def test_scikit_learn_estimator_checks(estimator, check, on_cluster: Client) -> None:
    check(estimator)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        # L-BFGS: scikit-learn's path, at its default tolerance
        ({"solver": "lbfgs"}, {}),
        # Newton-CG (the default): scikit-learn's optimum, both solved to a tight tolerance
        ({"tol": 1e-9}, {"solver": "newton-cholesky", "tol": 1e-12}),
    ],
)
def test_matches_sklearn_one_vs_rest(digits, on_cluster: Client, ours, theirs) -> None:
    X_train, X_test, y_train, _ = digits
    ours = DaskLogisticRegression(C=1.0, **ours).fit(X_train, y_train)
    binary = LogisticRegression(C=1.0, random_state=0, **theirs)
    theirs = OneVsRestClassifier(binary).fit(X_train, y_train)
    np.testing.assert_allclose(ours.coef_, np.vstack([e.coef_ for e in theirs.estimators_]),
                               rtol=1e-6, atol=1e-7)  # fmt: skip
    np.testing.assert_array_equal(ours.predict(X_test), theirs.predict(X_test))
    np.testing.assert_allclose(ours.predict_proba(X_test), theirs.predict_proba(X_test),
                               rtol=1e-6, atol=1e-8)  # fmt: skip
    workers = set(worker_infos(on_cluster))
    assert {r["worker"] for r in ours.fit_records_} <= workers
    assert [r["label"] for r in ours.fit_records_] == list(range(10))


def test_pipeline_and_grid_search_on_the_cluster(digits, on_cluster: Client) -> None:
    X_train, X_test, y_train, y_test = digits
    pipe = make_pipeline(StandardScaler(), DaskLogisticRegression())
    assert pipe.fit(X_train, y_train).score(X_test, y_test) > 0.9
    search = GridSearchCV(DaskLogisticRegression(), {"C": [0.01, 1.0]}, cv=2)
    search.fit(X_train, y_train)
    assert search.best_params_ == {"C": 1.0}
    assert search.score(X_test, y_test) > 0.9


def test_dask_array_prediction_is_lazy_and_equal(digits, on_cluster: Client) -> None:
    X_train, X_test, y_train, _ = digits
    clf = DaskLogisticRegression().fit(X_train, y_train)
    lazy = clf.predict(da.from_array(X_test, chunks=(100, 64)))
    assert isinstance(lazy, da.Array) and lazy.numblocks == (5,)
    np.testing.assert_array_equal(lazy.compute(), clf.predict(X_test))
    proba = clf.predict_proba(da.from_array(X_test, chunks=(100, 64)))
    np.testing.assert_allclose(proba.compute(), clf.predict_proba(X_test))


def test_save_load_round_trip_and_tampering(digits, on_cluster: Client, tmp_path: Path) -> None:
    X_train, X_test, y_train, _ = digits
    clf = DaskLogisticRegression(C=0.5).fit(X_train, y_train)
    clf.save(tmp_path / "model")
    loaded = DaskLogisticRegression.load(tmp_path / "model")
    assert loaded.get_params() == clf.get_params()
    np.testing.assert_array_equal(loaded.predict(X_test), clf.predict(X_test))
    meta_path = tmp_path / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["arrays_sha256"]["coef"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(OutputError, match="array 'coef' does not match the digest"):
        DaskLogisticRegression.load(tmp_path / "model")


def test_string_labels_and_two_classes(on_cluster: Client) -> None:
    X, y = load_digits(n_class=2, return_X_y=True)
    labels = np.where(y == 1, "one", "zero")
    clf = DaskLogisticRegression().fit(X / 16.0, labels)
    assert clf.coef_.shape == (1, 64) and clf.classes_.tolist() == ["one", "zero"]
    assert set(clf.predict(X / 16.0)) <= {"one", "zero"}
    assert clf.score(X / 16.0, labels) > 0.95


def _sklearn_multinomial(X, y, sample_weight=None, **params) -> LogisticRegression:
    return LogisticRegression(tol=1e-10, max_iter=2000, **params).fit(X, y, sample_weight)


def test_sample_weight_and_a_class_weight_dict_give_scikit_learns_models(
    digits, on_cluster: Client
) -> None:
    """Issue 14: ``fit(X, y, sample_weight)`` and dict class weights, both strategies."""
    X_train, _, y_train, _ = digits
    sample_weight = np.random.default_rng(0).uniform(0.2, 3.0, len(y_train))
    class_weight = {3: 4.0, 8: 0.5}
    ours = DaskLogisticRegression(
        strategy="multinomial", C=1.0, tol=1e-10, max_iter=2000, class_weight=class_weight
    ).fit(X_train, y_train, sample_weight=sample_weight)
    theirs = _sklearn_multinomial(X_train, y_train, sample_weight, C=1.0, class_weight=class_weight)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=1e-4)
    # the same rows as a Dask array: each chunk's weights travel with it to its block
    chunked = da.from_array(X_train, chunks=(400, -1))
    from_dask = DaskLogisticRegression(**ours.get_params()).fit(chunked, y_train, sample_weight)
    assert len(from_dask.fit_records_) == chunked.numblocks[0]
    np.testing.assert_allclose(from_dask.coef_, theirs.coef_, atol=1e-5)
    # one-vs-rest: each row weighs its sample weight times its own class's weight in every
    # binary problem
    ovr = DaskLogisticRegression(C=1.0, class_weight=class_weight, solver="lbfgs")
    ovr.fit(X_train, y_train, sample_weight=sample_weight)
    row_weight = sample_weight * np.array([class_weight.get(c, 1.0) for c in y_train])
    for k, label in enumerate(ovr.classes_):
        binary = LogisticRegression(C=1.0, random_state=0)
        binary.fit(X_train, y_train == label, sample_weight=row_weight)
        np.testing.assert_allclose(ovr.coef_[k], binary.coef_[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"class_weight names \[42\].*key the dict by y's"):
        DaskLogisticRegression(class_weight={42: 2.0}).fit(X_train, y_train)
    with pytest.raises(ValueError, match="class_weight values must be positive"):
        DaskLogisticRegression(class_weight={3: -1.0}).fit(X_train, y_train)


@pytest.mark.parametrize(
    ("solver", "class_weight"), [("lbfgs", None), ("newton-cg", None), ("auto", "balanced")]
)
def test_multinomial_matches_sklearn_on_digits(
    digits, on_cluster: Client, solver: str, class_weight
) -> None:
    X_train, X_test, y_train, _ = digits
    ours = DaskLogisticRegression(
        strategy="multinomial",
        C=1.0,
        tol=1e-10,
        max_iter=2000,
        class_weight=class_weight,
        solver=solver,
    ).fit(X_train, y_train)
    theirs = _sklearn_multinomial(X_train, y_train, C=1.0, class_weight=class_weight)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=1e-4)
    np.testing.assert_array_equal(ours.predict(X_test), theirs.predict(X_test))
    np.testing.assert_allclose(ours.predict_proba(X_test), theirs.predict_proba(X_test), atol=1e-5)
    # the rows were split over both workers, one block each
    blocks = ours.fit_records_
    half = len(y_train) // 2
    assert sorted(b["rows"] for b in blocks) == [half, len(y_train) - half]
    assert sum(b["rows"] for b in blocks) == len(y_train)
    assert {b["worker"] for b in blocks} == set(worker_infos(on_cluster))
    assert all(b["copies"] == 1 for b in blocks), "no block may be copied to another worker"
    assert all(b["calls"] == "direct channel" for b in blocks), "tcp:// workers open channels"
    assert ours.solver_["converged"]
    if solver == "lbfgs":  # scikit-learn's L-BFGS, step for step
        assert abs(ours.n_iter_[0] - theirs.n_iter_[0]) <= 0.1 * theirs.n_iter_[0]
    else:  # Newton-CG: its Hessian from all 1,347 rows (fewer than the sample's size)
        assert ours.solver_["solver"] == "newton-cg"
        assert ours.solver_["grad_max"] <= 1e-10
        assert ours.solver_["hessian_rows"] == len(y_train)
        assert ours.solver_["passes"] <= 20 < theirs.n_iter_[0]


def test_multinomial_on_an_mnist_slice_and_a_dask_array(
    mnist_home: Path, on_cluster: Client
) -> None:
    """A sparse float32 slice (as `distrib train` stores MNIST) and the same rows as a Dask
    array of 4 row chunks (4 blocks, never gathered on the client) fit sklearn's model."""
    import scipy.sparse as sp

    from distrib.data.split import split_arrays

    parts = split_arrays(load_mnist(mnist_home, fetch=False), "notebook", "unit")
    X = parts.X_train[:4000].compute(scheduler="threads")
    y = parts.y_train[:4000].compute(scheduler="threads")
    X_test = parts.X_test[:2000].compute(scheduler="threads")
    theirs = _sklearn_multinomial(X.astype(np.float64), y, C=0.1)
    params = {"strategy": "multinomial", "C": 0.1, "tol": 1e-8, "max_iter": 2000}
    for X_fit in (sp.csr_matrix(X), da.from_array(X, chunks=(1000, 392))):
        ours = DaskLogisticRegression(**params).fit(X_fit, y)
        # float32 products on the workers: agreement to float32 precision, not bit for bit
        np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=2e-3)
        agree = np.mean(ours.predict(X_test) == theirs.predict(X_test))
        assert agree > 0.998, agree
    assert len(ours.fit_records_) == 4 and ours.fit_records_[3]["start"] == 3000


def test_multinomial_refuses_other_solvers_and_l1() -> None:
    X, y = load_digits(return_X_y=True)
    with pytest.raises(ConfigError, match="'multinomial' is fitted with newton-cg or lbfgs"):
        DaskLogisticRegression(strategy="multinomial", solver="saga").fit(X, y)
    with pytest.raises(ConfigError, match="unknown strategy 'softmax'"):
        DaskLogisticRegression(strategy="softmax").fit(X, y)


def test_multinomial_without_a_cluster_runs_here(digits) -> None:
    X_train, _, y_train, _ = digits
    ours = DaskLogisticRegression(strategy="multinomial", C=1.0, tol=1e-10, max_iter=2000)
    ours.fit(X_train, y_train)
    theirs = _sklearn_multinomial(X_train, y_train, C=1.0)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)
    assert ours.fit_records_ == [
        {"start": 0, "rows": len(y_train), "worker": "local", "copies": 1, "calls": "in process"}
    ]


def test_multinomial_save_load_keeps_the_softmax(
    digits, on_cluster: Client, tmp_path: Path
) -> None:
    X_train, X_test, y_train, _ = digits
    clf = DaskLogisticRegression(strategy="multinomial").fit(X_train, y_train)
    clf.save(tmp_path / "m")
    loaded = DaskLogisticRegression.load(tmp_path / "m")
    assert loaded.strategy == "multinomial"
    np.testing.assert_array_equal(loaded.predict_proba(X_test), clf.predict_proba(X_test))
    assert json.loads((tmp_path / "m" / "model.json").read_text())["strategy"] == "multinomial"


def test_multinomial_dask_array_with_an_empty_chunk(digits, on_cluster: Client) -> None:
    X_train, _, y_train, _ = digits
    n = len(y_train)
    X = da.from_array(X_train, chunks=((600, 0, n - 600), (64,)))
    params = {"strategy": "multinomial", "C": 1.0, "tol": 1e-10, "max_iter": 2000}
    ours = DaskLogisticRegression(**params).fit(X, y_train)
    assert [b["rows"] for b in ours.fit_records_] == [600, 0, n - 600]
    theirs = _sklearn_multinomial(X_train, y_train, C=1.0)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)


class _TaskKeys(SchedulerPlugin):
    """Records every task key that comes to the scheduler (not those an earlier test's
    client releases meanwhile)."""

    name = "distrib-test-task-keys"

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def transition(self, key, start, finish, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if start == "released" and finish != "forgotten":
            self.keys.add(str(key))


def test_multinomial_in_memory_rows_reach_the_workers_outside_any_task_graph(
    mnist_home: Path, cluster_client: Client
) -> None:
    """numpy and CSR rows travel straight to their worker: the scheduler's only tasks are
    the two host actors (no task carries rows, no "large graph" warning); each worker holds
    only its block, and nothing stays on the cluster after the fit."""
    import scipy.sparse as sp

    from distrib.data.split import split_arrays

    parts = split_arrays(load_mnist(mnist_home, fetch=False), "notebook", "unit")
    X = parts.X_train[:12000].compute(scheduler="threads")  # 38 MB dense
    y = parts.y_train[:12000].compute(scheduler="threads")
    params = {"strategy": "multinomial", "C": 0.1, "max_iter": 20}
    fitted = []
    cluster_client.register_plugin(_TaskKeys())
    try:
        with cluster_client.as_current(), warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*[Ll]arge graph.*")
            for X_fit in (X, sp.csr_matrix(X)):
                fitted.append(DaskLogisticRegression(**params).fit(X_fit, y))
        keys = cluster_client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.plugins[_TaskKeys.name].keys)
        )
    finally:
        cluster_client.unregister_scheduler_plugin(_TaskKeys.name)
    assert len(keys) == 4 and all(k.startswith("distrib-host-") for k in keys), keys
    for clf in fitted:
        assert sorted(b["rows"] for b in clf.fit_records_) == [6000, 6000]
        assert len({b["worker"] for b in clf.fit_records_}) == 2
    np.testing.assert_allclose(fitted[0].coef_, fitted[1].coef_, rtol=0, atol=1e-12)
    held = cluster_client.run(lambda dask_worker: len(dask_worker.state.actors))
    assert set(held.values()) == {0}, held


def test_ovr_in_memory_rows_reach_workers_on_this_machine_by_path(
    digits, cluster_client: Client
) -> None:
    """Issue 14: in-memory rows are written once to a temporary folder the local workers
    open by path (as `distrib train` does), with their sample weights; no task carries
    them, and the folder is gone after the fit."""
    import glob
    import tempfile

    X_train, _, y_train, _ = digits
    sample_weight = np.random.default_rng(1).uniform(0.5, 2.0, len(y_train))
    pattern = f"{tempfile.gettempdir()}/distrib-rows-*"
    before = set(glob.glob(pattern))
    cluster_client.register_plugin(_TaskKeys())
    try:
        with cluster_client.as_current(), warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*[Ll]arge graph.*")
            ours = DaskLogisticRegression(C=1.0, tol=1e-9).fit(X_train, y_train, sample_weight)
        keys = cluster_client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.plugins[_TaskKeys.name].keys)
        )
    finally:
        cluster_client.unregister_scheduler_plugin(_TaskKeys.name)
    assert ours.solver_["transfer"] == "path"
    assert set(glob.glob(pattern)) == before, "the temporary rows are removed"
    assert len({r["worker"] for r in ours.fit_records_}) == 2
    assert not any("scatter" in k or "InMemoryArrays" in k for k in keys), keys
    for k, label in enumerate(ours.classes_):  # Newton-CG (the default) at scikit-learn's optimum
        binary = LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-12)
        binary.fit(X_train, y_train == label, sample_weight=sample_weight)
        np.testing.assert_allclose(ours.coef_[k], binary.coef_[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["ovr", "multinomial"])
@pytest.mark.parametrize("workers", [2, 1])
def test_a_fit_inside_a_search_on_the_dask_backend_does_not_deadlock(
    digits, cluster_client: Client, strategy: str, workers: int
) -> None:
    """GridSearchCV's tasks take every worker thread (with one worker of one thread, the
    only one); each fit inside one runs in that task's thread (before, a multinomial fit
    waited forever for actors no thread could start; ovr for its own tasks on 1 thread)."""
    X_train, _, y_train, _ = digits
    search = GridSearchCV(
        DaskLogisticRegression(strategy=strategy, max_iter=200), {"C": [0.1, 1.0]}, cv=2,
        n_jobs=-1,
    )  # fmt: skip
    done: list[GridSearchCV] = []
    cluster = None
    client = cluster_client
    if workers == 1:
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster, set_as_default=False)

    def run() -> None:
        with parallel_config(backend=cluster_backend(client)):
            done.append(search.fit(X_train, y_train))

    try:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=120)
        assert done, "the nested search did not finish within 120 s"
    finally:
        if cluster is not None:
            client.close(timeout=10)
            cluster.close(timeout=10)
    ours = search.best_estimator_
    reference = LogisticRegression(C=search.best_params_["C"], max_iter=200)
    if strategy == "ovr":
        reference = OneVsRestClassifier(reference)
    theirs = reference.fit(X_train, y_train)
    assert abs(ours.score(X_train, y_train) - theirs.score(X_train, y_train)) < 0.01
