"""The scikit-learn estimator: scikit-learn's own checks, pipelines, Dask arrays, files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from distributed import Client
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from distrib.dispatch import cluster_backend
from distrib.errors import OutputError
from distrib.estimator import DaskOneVsRestClassifier


@pytest.fixture
def on_cluster(cluster_client: Client) -> Iterator[Client]:
    """Every joblib call inside the test runs on the session's LocalCluster."""
    with parallel_config(backend=cluster_backend(cluster_client)):
        yield cluster_client


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    X, y = load_digits(return_X_y=True)
    return tuple(train_test_split(X / 16.0, y, test_size=0.25, random_state=0))


EXPECTED_FAILURES = {
    "check_class_weight_classifiers": (
        "class_weight is None or 'balanced' within each binary problem; a dict keyed by the "
        "original classes has no one-vs-rest meaning and is refused with a ConfigError"
    ),
}


@parametrize_with_checks(
    [DaskOneVsRestClassifier()], expected_failed_checks=lambda _est: EXPECTED_FAILURES
)
def test_scikit_learn_estimator_checks(estimator, check, on_cluster: Client) -> None:
    check(estimator)


def test_matches_sklearn_one_vs_rest(digits, on_cluster: Client) -> None:
    X_train, X_test, y_train, _ = digits
    ours = DaskOneVsRestClassifier(C=1.0).fit(X_train, y_train)
    theirs = OneVsRestClassifier(LogisticRegression(C=1.0, random_state=0)).fit(X_train, y_train)
    np.testing.assert_allclose(ours.coef_, np.vstack([e.coef_ for e in theirs.estimators_]),
                               rtol=1e-6, atol=1e-8)  # fmt: skip
    np.testing.assert_array_equal(ours.predict(X_test), theirs.predict(X_test))
    np.testing.assert_allclose(ours.predict_proba(X_test), theirs.predict_proba(X_test),
                               rtol=1e-6, atol=1e-8)  # fmt: skip
    workers = set(on_cluster.scheduler_info()["workers"])
    assert {r["worker"] for r in ours.fit_records_} <= workers
    assert [r["label"] for r in ours.fit_records_] == list(range(10))


def test_pipeline_and_grid_search_on_the_cluster(digits, on_cluster: Client) -> None:
    X_train, X_test, y_train, y_test = digits
    pipe = make_pipeline(StandardScaler(), DaskOneVsRestClassifier())
    assert pipe.fit(X_train, y_train).score(X_test, y_test) > 0.9
    search = GridSearchCV(DaskOneVsRestClassifier(), {"C": [0.01, 1.0]}, cv=2)
    search.fit(X_train, y_train)
    assert search.best_params_ == {"C": 1.0}
    assert search.score(X_test, y_test) > 0.9


def test_dask_array_prediction_is_lazy_and_equal(digits, on_cluster: Client) -> None:
    X_train, X_test, y_train, _ = digits
    clf = DaskOneVsRestClassifier().fit(X_train, y_train)
    lazy = clf.predict(da.from_array(X_test, chunks=(100, 64)))
    assert isinstance(lazy, da.Array) and lazy.numblocks == (5,)
    np.testing.assert_array_equal(lazy.compute(), clf.predict(X_test))
    proba = clf.predict_proba(da.from_array(X_test, chunks=(100, 64)))
    np.testing.assert_allclose(proba.compute(), clf.predict_proba(X_test))


def test_save_load_round_trip_and_tampering(digits, on_cluster: Client, tmp_path: Path) -> None:
    X_train, X_test, y_train, _ = digits
    clf = DaskOneVsRestClassifier(C=0.5).fit(X_train, y_train)
    clf.save(tmp_path / "model")
    loaded = DaskOneVsRestClassifier.load(tmp_path / "model")
    assert loaded.get_params() == clf.get_params()
    np.testing.assert_array_equal(loaded.predict(X_test), clf.predict(X_test))
    meta_path = tmp_path / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["arrays_sha256"]["coef"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(OutputError, match="array 'coef' does not match the digest"):
        DaskOneVsRestClassifier.load(tmp_path / "model")


def test_string_labels_and_two_classes(on_cluster: Client) -> None:
    X, y = load_digits(n_class=2, return_X_y=True)
    labels = np.where(y == 1, "one", "zero")
    clf = DaskOneVsRestClassifier().fit(X / 16.0, labels)
    assert clf.coef_.shape == (1, 64) and clf.classes_.tolist() == ["one", "zero"]
    assert set(clf.predict(X / 16.0)) <= {"one", "zero"}
    assert clf.score(X / 16.0, labels) > 0.95
