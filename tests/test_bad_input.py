"""Bad input gets an error that names the problem and the fix (issue 33, item 5), never a
``ZeroDivisionError`` from deep inside the fit, nor a message about something else."""

from __future__ import annotations

import subprocess
import sys
import time

import dask.array as da
import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import load_digits

from distrib.errors import DataError
from distrib.estimator import DaskLogisticRegression


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X / 16, y


def test_a_dask_x_of_unknown_chunk_sizes_names_compute_chunk_sizes(
    digits, cluster_client: Client
) -> None:
    X, y = digits
    masked = da.from_array(X, chunks=(500, 64))
    masked = masked[masked[:, 0] >= 0]  # every row, but Dask no longer knows how many
    with cluster_client.as_current(), pytest.raises(DataError, match=r"compute_chunk_sizes"):
        DaskLogisticRegression(strategy="multinomial").fit(masked, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinity_in_a_dask_x_is_named_with_its_rows(
    digits, cluster_client: Client, bad: float
) -> None:
    X, y = digits
    X = X.copy()
    X[700, 3] = bad
    dask_X = da.from_array(X, chunks=(500, 64))
    with (
        cluster_client.as_current(),
        pytest.raises(
            DataError, match=r"rows 500:1000 of X hold NaN or infinity: remove or impute"
        ),
    ):
        DaskLogisticRegression(strategy="multinomial", max_iter=5).fit(dask_X, y)


@pytest.mark.parametrize("strategy", ["ovr", "multinomial"])
@pytest.mark.parametrize("dask_input", [False, True], ids=["numpy", "dask"])
def test_balanced_weights_with_a_weightless_class_are_refused_by_name(
    digits, cluster_client: Client, strategy: str, dask_input: bool
) -> None:
    """scikit-learn 'fits' this after 0 iterations on NaN weights (test accuracy 0.099);
    the multinomial fit raised ZeroDivisionError."""
    if dask_input and strategy == "ovr":
        pytest.skip("one-vs-rest computes a Dask X first: the numpy case covers it")
    X, y = digits
    weights = np.where(y == 3, 0.0, 1.0)
    X_in = da.from_array(X, chunks=(500, 64)) if dask_input else X
    estimator = DaskLogisticRegression(strategy=strategy, class_weight="balanced", max_iter=5)
    with (
        cluster_client.as_current(),
        pytest.raises(DataError, match=r"sample weights of class\(es\) \[3\] are all zero"),
    ):
        estimator.fit(X_in, y, sample_weight=weights)


def test_an_address_that_is_no_scheduler_is_named_at_once(tmp_path) -> None:
    """``--scheduler banana`` printed its error, then hung 20 s in the half-made client's
    finalizer and ended with its traceback."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "distrib", "train", "--dataset", "digits", "--scheduler",
         "banana", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "'banana' is not a Dask scheduler address" in proc.stderr
    assert "host:port" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("limit", ["1KB", "0", "-5MB"])
def test_a_memory_limit_no_worker_can_start_under_is_refused(limit: str) -> None:
    """``--memory-limit 1KB`` started workers that died loading their libraries, then
    closing the cluster raised a raw CommClosedError over the message."""
    from distrib.config import ClusterConfig
    from distrib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"below what a worker needs .* e.g. 2GiB"):
        ClusterConfig(memory_limit=limit)


def test_a_run_stopped_between_its_model_and_its_metrics_resumes(
    cluster_client: Client, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after ``model.npz`` but before ``metrics.json`` left a folder that
    ``--resume`` refused as finished (and a new run refused as taken)."""
    import distrib.run.train as run_train
    from distrib import TrainConfig, train

    config = TrainConfig(dataset="digits", max_iter=30)
    whole = train(config, client=cluster_client, out=tmp_path / "whole", home=tmp_path / "home")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C would, right after model.npz and model.json

    with monkeypatch.context() as patched:
        patched.setattr(run_train, "_report", stop)
        with pytest.raises(KeyboardInterrupt):
            train(config, client=cluster_client, out=tmp_path / "run", home=tmp_path / "home")
    assert (tmp_path / "run" / "model.npz").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = train(
        config, client=cluster_client, out=tmp_path / "run", home=tmp_path / "home", resume=True
    )
    np.testing.assert_array_equal(resumed.model.coef, whole.model.coef)
    assert (tmp_path / "run" / "metrics.json").exists()
