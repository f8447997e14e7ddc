from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from distrib.errors import DataError, OutputError
from distrib.linear.model import LinearModel


@pytest.fixture
def model() -> LinearModel:
    rng = np.random.default_rng(1)
    return LinearModel(
        coef=rng.normal(size=(4, 6)), intercept=rng.normal(size=4), classes=np.array([1, 3, 5, 7])
    )


def test_predict_is_the_argmax_of_the_decision_function(model: LinearModel) -> None:
    X = np.random.default_rng(2).normal(size=(50, 6))
    scores = model.decision_function(X)
    np.testing.assert_allclose(scores, X @ model.coef.T + model.intercept)
    np.testing.assert_array_equal(model.predict(X), model.classes[np.argmax(scores, axis=1)])


def test_dask_prediction_is_lazy_chunked_and_equal(model: LinearModel) -> None:
    X = np.random.default_rng(3).normal(size=(1000, 6))
    lazy = model.predict(da.from_array(X, chunks=(128, 3)))
    assert isinstance(lazy, da.Array) and lazy.numblocks == (8,)
    np.testing.assert_array_equal(lazy.compute(), model.predict(X))
    scores = model.decision_function(da.from_array(X, chunks=(300, 6)))
    np.testing.assert_allclose(scores.compute(), model.decision_function(X))


def test_sparse_input_predicts_like_dense(model: LinearModel) -> None:
    X = np.random.default_rng(4).normal(size=(40, 6)) * (np.arange(6) % 2)
    np.testing.assert_allclose(
        model.decision_function(sp.csr_matrix(X)), model.decision_function(X)
    )
    np.testing.assert_array_equal(model.predict(sp.csc_matrix(X)), model.predict(X))


def test_many_rows_are_scored_a_slice_at_a_time_with_the_same_scores(
    model: LinearModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `SCORE_ROWS` rows, the scores of slices (their float64 copies a slice's): the
    scores of the whole, dense and CSR (narrow indices too)."""
    from distrib.linear import model as model_module
    from distrib.linear.softmax import block_csr

    rng = np.random.default_rng(1)
    X = (rng.random((50, model.n_features)) < 0.3) * rng.random((50, model.n_features))
    whole_dense = model.decision_function(X)
    whole_sparse = model.decision_function(sp.csr_matrix(X))
    monkeypatch.setattr(model_module, "SCORE_ROWS", 7)
    csr = sp.csr_matrix(X.astype(np.float32))
    narrow = block_csr(csr.shape, csr.data, csr.indices.astype(np.uint16), csr.indptr)
    assert np.array_equal(model.decision_function(X), whole_dense)
    assert np.array_equal(model.decision_function(sp.csr_matrix(X)), whole_sparse)
    assert np.array_equal(model.predict(narrow), model.predict(csr))
    assert np.array_equal(model.predict(X), model.classes[np.argmax(whole_dense, axis=1)])


def test_wrong_inputs_are_named(model: LinearModel) -> None:
    with pytest.raises(DataError, match="X has 5 features per row, the model expects 6"):
        model.predict(np.zeros((2, 5)))
    with pytest.raises(DataError, match=r"X must be 2-D .*got shape \(6,\)"):
        model.predict(np.zeros(6))
    with pytest.raises(DataError, match="X must hold numbers"):
        model.predict(np.array([["a"] * 6]))


def test_save_load_round_trip(model: LinearModel, tmp_path: Path) -> None:
    model.save(tmp_path, {"settings": {"C": 1.0}})
    loaded, meta = LinearModel.load(tmp_path)
    for name in ("coef", "intercept", "classes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert meta["settings"] == {"C": 1.0} and meta["n_features"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.npz"]


def test_tampered_or_foreign_files_are_refused(model: LinearModel, tmp_path: Path) -> None:
    model.save(tmp_path)
    other = LinearModel(model.coef * 2, model.intercept, model.classes)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other.save(other_dir)
    (tmp_path / "model.npz").write_bytes((other_dir / "model.npz").read_bytes())
    with pytest.raises(OutputError, match=r"array 'coef' does not match the digest"):
        LinearModel.load(tmp_path)

    meta = json.loads((other_dir / "model.json").read_text())
    (other_dir / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(OutputError, match="model format version 99"):
        LinearModel.load(other_dir)
    old = {**meta, "format": "distrib-ovr-model", "format_version": 1}  # distrib's first format
    (other_dir / "model.json").write_text(json.dumps(old))
    with pytest.raises(OutputError, match=r"model format version 1, .*reads version 2: retrain"):
        LinearModel.load(other_dir)

    (other_dir / "model.json").write_text("{not json")
    with pytest.raises(OutputError, match="is not valid JSON"):
        LinearModel.load(other_dir)

    with pytest.raises(OutputError, match=r"model\.json is missing: .* is not a saved model"):
        LinearModel.load(tmp_path / "nowhere")

    model.save(other_dir)
    (other_dir / "model.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(OutputError, match=r"model\.npz is corrupt or incomplete"):
        LinearModel.load(other_dir)


def test_ovr_probabilities_are_normalised_sigmoids_and_finite_far_from_every_class(
    model: LinearModel,
) -> None:
    X = np.random.default_rng(5).normal(size=(30, 6))
    sigmoids = 1.0 / (1.0 + np.exp(-model.decision_function(X)))
    np.testing.assert_allclose(
        model.predict_proba(X), sigmoids / sigmoids.sum(axis=1, keepdims=True), rtol=1e-12
    )
    positive = LinearModel(
        coef=np.abs(model.coef) + 0.1, intercept=model.intercept, classes=model.classes
    )
    far = np.full((2, 6), -1e4)
    assert (positive.decision_function(far) < -1000).all()  # every sigmoid underflows to 0
    proba = positive.predict_proba(far)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(positive.classes[proba.argmax(axis=1)], positive.predict(far))


def test_class_weights_and_the_total_weight_are_scikit_learns() -> None:
    from distrib.linear.multinomial import objective_weights

    codes = np.repeat([0, 1, 2], [5, 1, 4])
    per_class, total = objective_weights(codes, 3, "balanced")
    np.testing.assert_allclose(per_class, [10 / 15, 10 / 3, 10 / 12])
    assert total == pytest.approx(3 * 10 / 3)  # each class's rows weigh n / n_classes
    assert objective_weights(codes, 3) == (None, 10.0)
    sample_weight = np.arange(1.0, 11.0)
    per_class, total = objective_weights(codes, 3, {1: 3.0}, sample_weight)
    np.testing.assert_allclose(per_class, [1.0, 3.0, 1.0])
    assert total == pytest.approx(sample_weight.sum() + 2 * sample_weight[5])
    # balanced counts rows by their sample weights, as scikit-learn's LogisticRegression
    per_class, _ = objective_weights(codes, 3, "balanced", sample_weight)
    weighted = np.array([15.0, 6.0, 34.0])
    np.testing.assert_allclose(per_class, sample_weight.sum() / (3 * weighted))
