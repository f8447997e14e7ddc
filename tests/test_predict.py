from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from distrib import TrainConfig, train
from distrib.data.datasets import load_dataset
from distrib.data.split import split_arrays
from distrib.errors import DataError
from distrib.run.predict import predict_saved

from .conftest import run_cli


@pytest.fixture(scope="module")
def digits_run(cluster_client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    train(TrainConfig(dataset="digits"), client=cluster_client, out=root / "run", home=root)
    return root / "run"


@pytest.fixture(scope="module")
def raw_test_images() -> tuple[np.ndarray, np.ndarray]:
    parts = split_arrays(load_dataset("digits"), "notebook", "raw")
    return parts.X_test.compute().astype(np.uint8), parts.y_test.compute()


def test_predict_user_images_matches_the_runs_accuracy(
    digits_run: Path, raw_test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    X, y = raw_test_images
    np.save(tmp_path / "X.npy", X.reshape(-1, 8, 8))  # images as (n, 8, 8) are accepted
    np.save(tmp_path / "y.npy", y)
    proc = run_cli(
        "predict",
        "--model",
        str(digits_run),
        "--input",
        str(tmp_path / "X.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "--output",
        str(tmp_path / "p.npy"),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert summary["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert summary["n_samples"] == len(y)
    pred = np.load(tmp_path / "p.npy")
    assert pred.shape == y.shape and np.mean(pred == y) == pytest.approx(summary["accuracy"])


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda X: X[:, :60], r"has shape \(450, 60\), expected \(n, 64\) or \(n, 8x8\)"),
        (lambda X: X.astype(np.float32) * np.nan, r"holds NaN or infinite values"),
        (lambda X: X.astype(np.float64) * 100, r"values in \[0, 1600\], expected raw pixels"),
        (lambda X: X.astype(str), r"holds dtype <U\d+, expected numbers"),
    ],
)
def test_bad_user_arrays_are_named(
    digits_run: Path,
    raw_test_images: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    make,
    pattern: str,
) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, make(raw_test_images[0]))
    with pytest.raises(DataError, match=rf"{path}.*{pattern}|{pattern}"):
        predict_saved(digits_run, input_path=path, output=tmp_path / "p.npy")
    assert not (tmp_path / "p.npy").exists()


def test_labels_and_input_files_are_checked(
    digits_run: Path, raw_test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    X, y = raw_test_images
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y[:10])
    with pytest.raises(
        DataError, match=r"labels file .*y\.npy has shape \(10,\), expected \(450,\)"
    ):
        predict_saved(digits_run, input_path=tmp_path / "X.npy", labels_path=tmp_path / "y.npy")
    with pytest.raises(DataError, match=r"input file .*missing\.npy does not exist"):
        predict_saved(digits_run, input_path=tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"input file .*junk\.npy is not a readable \.npy"):
        predict_saved(digits_run, input_path=tmp_path / "junk.npy")
