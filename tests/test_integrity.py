"""A damaged prepared split is never trained on and never crashes a worker (issue 33, item 1).

One flipped exponent byte in ``X_data.npy`` trained to a test accuracy of 0.0996 without a
word; one in ``X_indices.npy`` or ``X_indptr.npy`` killed the workers with SIGSEGV (the
kernels run without bounds checks). The files carry checksums now (`distrib.parallel.
checksums`), checked where they are read, and the CSR structure is checked before a kernel
sees it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from distrib import TrainConfig, train
from distrib.data.datasets import load_dataset
from distrib.data.split import split_arrays
from distrib.errors import DataError
from distrib.parallel.blocks.runner import ClusterBlocks
from distrib.parallel.checksums import CHUNK_BYTES, check_csr
from distrib.parallel.prepared import open_array_files, prepare_split_arrays
from distrib.parallel.rows import ArrayFiles

KEY = {"dataset": "digits", "split": "notebook", "scale": "unit"}


def _prepared(home: Path, layout: str = "sparse") -> ArrayFiles:
    parts = split_arrays(load_dataset("digits"), "notebook", "unit")
    files, _, _ = prepare_split_arrays(parts, home, KEY, layout)
    assert files is not None and files.layout == layout
    return files


def _flip(path: Path, at: float = 0.5) -> None:
    """Flip every bit of one byte of ``path``'s data, ``at`` of the way in."""
    data = bytearray(path.read_bytes())
    where = 128 + int((len(data) - 129) * at)  # past the .npy header
    data[where] ^= 0xFF
    stat = os.stat(path)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a new file to the caches


@pytest.mark.parametrize("name", ["X_data.npy", "X_indices.npy", "X_indptr.npy", "y.npy"])
def test_a_flipped_byte_is_named_where_the_rows_are_read(tmp_path: Path, name: str) -> None:
    files = _prepared(tmp_path)
    intact = files.rows(0, files.shape[0])
    _flip(Path(files.folder) / name)
    with pytest.raises(DataError, match=rf"damaged: {name} .*rm -r .*run again"):
        files.rows(0, files.shape[0])
    with pytest.raises(DataError, match=rf"damaged: {name} "):
        files.arrays()
    assert intact[0].nnz > 0


def test_a_damaged_folder_is_written_anew_when_the_driver_opens_it(tmp_path: Path) -> None:
    files = _prepared(tmp_path, "dense")
    X, y = (np.array(a) for a in files.arrays())
    _flip(Path(files.folder) / "X.npy", at=0.3)
    assert open_array_files(Path(files.folder), files.shape, "dense") is None
    again = _prepared(tmp_path, "dense")  # prepares it anew
    X2, y2 = (np.array(a) for a in again.arrays())
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)


def test_a_file_cut_short_is_named(tmp_path: Path) -> None:
    files = _prepared(tmp_path)
    path = Path(files.folder) / "X_data.npy"
    path.write_bytes(path.read_bytes()[: max(129, path.stat().st_size - CHUNK_BYTES // 2)])
    with pytest.raises(DataError, match=r"damaged: X_data.npy (has [0-9,]+ bytes|cannot be read)"):
        files.rows(0, 10)


def test_csr_structure_is_checked_before_a_kernel_reads_it(tmp_path: Path) -> None:
    where = tmp_path / "X_indices.npy"
    check_csr(np.array([5, 6, 8]), np.array([0, 3, 1]), 4, where, first=5)  # fine
    with pytest.raises(DataError, match=r"X_indices.npy holds a column index outside 0..3"):
        check_csr(np.array([0, 1, 3]), np.array([0, 4, 1]), 4, where)
    with pytest.raises(DataError, match=r"X_indptr.npy decreases"):
        check_csr(np.array([0, 2, 1, 3]), np.array([0, 1, 2]), 4, where)
    with pytest.raises(DataError, match=r"X_indptr.npy does not delimit"):
        check_csr(np.array([0, 1, 2]), np.array([0, 1, 2]), 4, where)


def test_a_worker_that_reads_a_damaged_block_fails_the_fit_and_lives(
    cluster_client: Client, tmp_path: Path
) -> None:
    files = _prepared(tmp_path)
    workers = sorted(cluster_client.scheduler_info()["workers"])
    _flip(Path(files.folder) / "X_indices.npy", at=0.9)  # the second block's rows
    runner = ClusterBlocks.from_training_data(cluster_client, files, np.arange(10), timeout=60)
    try:
        with pytest.raises(DataError, match=r"damaged: X_indices.npy"):
            runner.wait_loaded()
    finally:
        runner.release()
    assert sorted(cluster_client.scheduler_info()["workers"]) == workers, "no worker died"


def test_a_damaged_prepared_split_is_rebuilt_and_the_model_is_the_same(
    cluster_client: Client, tmp_path: Path
) -> None:
    """The issue's case: a flipped exponent byte in the prepared ``X_data.npy`` of a run's
    data home; the next run trains on the split prepared anew, to the same model."""
    config = TrainConfig(dataset="digits", strategy="multinomial", layout="sparse")
    first = train(config, client=cluster_client, out=tmp_path / "a", home=tmp_path / "home")
    (data,) = (p for p in (tmp_path / "home").rglob("X_data.npy") if p.parent.name == "train")
    _flip(data)
    again = train(config, client=cluster_client, out=tmp_path / "b", home=tmp_path / "home")
    np.testing.assert_array_equal(again.model.coef, first.model.coef)
    assert again.metrics["test_accuracy"] == first.metrics["test_accuracy"] > 0.9
