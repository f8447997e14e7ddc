"""distrib's errors are also the built-in exceptions they mean (issue 13)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from distrib import ClusterConfig, DaskLogisticRegression, LinearModel
from distrib.errors import ClusterError, DataError, DistribError, OutputError
from distrib.parallel.cluster import connect


def test_bad_data_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="at least 2 classes") as caught:
        DaskLogisticRegression().fit(np.zeros((4, 3)), np.ones(4))
    assert isinstance(caught.value, DataError)


def test_a_missing_model_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="is not a saved model") as caught:
        LinearModel.load(tmp_path)
    assert isinstance(caught.value, OutputError)


def test_an_unreachable_scheduler_is_a_connection_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClusterConfig(scheduler=f"tcp://127.0.0.1:{port}", connect_timeout=1)
    refused = pytest.raises(ConnectionError, match="could not reach the Dask scheduler")
    with refused as caught, connect(config):
        pass
    assert isinstance(caught.value, ClusterError)
    assert isinstance(caught.value, DistribError)
