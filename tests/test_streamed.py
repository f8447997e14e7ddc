"""Rows streamed from disk: the row store's format, streamed blocks, and a streamed fit on a
real cluster that gives the model of the same rows held in memory, bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client

from distrib import train
from distrib.config import TrainConfig
from distrib.errors import ConfigError, DataError
from distrib.linear.softmax import PART_ROWS, CodedCSR
from distrib.parallel.blocks.block import load_block
from distrib.parallel.blocks.streamed import open_streamed_block
from distrib.parallel.prepared import write_in_memory
from distrib.parallel.row_store import RowStore, open_row_store, write_row_store
from distrib.parallel.rows import InMemoryArrays
from distrib.parallel.strategies import fit_training_data
from distrib.run.make_data import make_training_rows

from .conftest import two_workers

N_FEATURES = 40


def _pixels(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One-byte pixels (~19 % non-zero, as MNIST's) and labels 0..9 that depend on them."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((n_rows, N_FEATURES)) < 0.19) * rng.integers(1, 256, (n_rows, 40))
    y = (pixels[:, :10].argmax(axis=1) + (pixels.sum(axis=1) % 3 == 0)) % 10
    return pixels.astype(np.uint8), y


def _floats(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / np.float32(255)


def _store(folder: Path, X: Any, y: np.ndarray, chunk: int = 1000) -> RowStore:
    def chunks():  # type: ignore[no-untyped-def]
        return ((X[a : a + chunk], y[a : a + chunk]) for a in range(0, X.shape[0], chunk))

    return write_row_store(chunks, folder, X.shape[1], {"made_by": "a test"})


def test_a_store_keeps_its_rows_coded_where_they_take_256_values(tmp_path: Path) -> None:
    pixels, y = _pixels(3000)
    X = _floats(pixels)
    store = _store(tmp_path / "store", sp.csr_matrix(X), y)
    assert store.coded and store.dtype == np.float32
    assert open_row_store(tmp_path / "store") == store
    rows, labels = store.rows(0, 3000)
    assert np.array_equal(rows.toarray(), X) and np.array_equal(labels, y)
    nnz = int(np.count_nonzero(X))
    on_disk = os.path.getsize(tmp_path / "store" / "values.bin")
    assert on_disk == nnz  # one byte an entry
    assert os.path.getsize(tmp_path / "store" / "indices.bin") == 2 * nnz  # uint16 columns
    # values past 256 distinct ones: the floats themselves
    noisy = X + np.float32(1e-3) * (X != 0) * np.arange(3000, dtype=np.float32)[:, None]
    floats = _store(tmp_path / "floats", noisy, y)
    assert not floats.coded and floats.dtype == np.float32
    assert np.array_equal(floats.rows(0, 3000)[0].toarray(), noisy)
    assert open_row_store(tmp_path / "nothing") is None


def test_a_store_refuses_nan_and_names_the_rows(tmp_path: Path) -> None:
    pixels, y = _pixels(3000)
    X = _floats(pixels)
    X[2500, 3] = np.nan
    with pytest.raises(DataError, match=r"rows 2000:3000 of X hold NaN or infinity"):
        _store(tmp_path / "store", X, y)
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.iterdir())  # no half-written folder left behind


def test_a_damaged_store_fails_naming_the_file(tmp_path: Path) -> None:
    pixels, y = _pixels(3000)
    store = _store(tmp_path / "store", _floats(pixels), y)
    path = tmp_path / "store" / "values.bin"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    block = open_streamed_block(store, 0, 3000, np.arange(10))
    with pytest.raises(DataError, match=r"values\.bin bytes 0\.\.4,194,304 fail their checksum"):
        block.loss_grad(np.zeros((10, N_FEATURES)), np.zeros(10), None)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_streamed_block_gives_the_bits_of_the_block_in_memory(
    tmp_path: Path, weighted: bool
) -> None:
    n_rows = 3 * PART_ROWS + 500
    pixels, y = _pixels(n_rows, seed=1)
    X = _floats(pixels)
    store = _store(tmp_path / "store", X, y, chunk=777)
    classes = np.arange(10)
    start, stop = 300, n_rows - 100  # a block inside the store
    streamed = open_streamed_block(store, start, stop, classes, offset=12)
    streamed = type(streamed)(store, start, streamed.codes, 12, piece_rows=PART_ROWS)
    in_memory = load_block(InMemoryArrays(sp.csr_matrix(X), y), start, stop, classes)
    rng = np.random.default_rng(2)
    coef, intercept = rng.normal(size=(10, N_FEATURES)), rng.normal(size=10)
    class_weight = rng.random(10) if weighted else None
    loss, grad, reads = streamed.loss_grad(coef, intercept, class_weight)
    expected_loss, expected_grad, _ = in_memory.loss_grad(coef, intercept, class_weight)
    assert loss == expected_loss and np.array_equal(grad, expected_grad)
    assert reads.bytes == 3 * int(np.count_nonzero(X[start:stop])) + 8 * (stop - start + 1)
    assert streamed.checked == store.signature()  # the CSR checked once, while unchanged
    again, _, _ = streamed.loss_grad(coef, intercept, class_weight)
    assert again == loss
    assert np.array_equal(streamed.predict(coef, intercept), in_memory.predict(coef, intercept))
    assert streamed.codes.dtype == np.uint8 and streamed.start == 12


def test_streamed_fit_on_a_cluster_is_the_in_memory_fit(
    cluster_client: Client, tmp_path: Path
) -> None:
    """The same rows as a row store (streamed: the workers read them a piece at a time)
    and as prepared files (loaded into the workers' memory): the same model, bit for bit."""
    pixels, y = _pixels(20_000, seed=3)
    X = sp.csr_matrix(_floats(pixels))
    store = _store(tmp_path / "store", X, y, chunk=4096)
    (tmp_path / "files").mkdir()
    files = write_in_memory(InMemoryArrays(X, y), tmp_path / "files")
    config = TrainConfig(dataset="digits", strategy="multinomial", max_iter=40)
    labels = np.arange(10)
    streamed = fit_training_data(store, labels, config, client=cluster_client)
    in_memory = fit_training_data(files, labels, config, client=cluster_client)
    assert np.array_equal(streamed.coef, in_memory.coef)
    assert np.array_equal(streamed.intercept, in_memory.intercept)
    assert streamed.solver["n_evaluations"] == in_memory.solver["n_evaluations"]
    reads = streamed.solver["per_evaluation"]["read_bytes"]
    assert reads and all(r == 3 * X.nnz + 8 * (20_000 + 2) for r in reads)
    assert not any(in_memory.solver["per_evaluation"]["read_bytes"])
    assert len(streamed.records) == 2


def test_coded_pieces_are_coded_csr(tmp_path: Path) -> None:
    pixels, y = _pixels(100)
    store = _store(tmp_path / "store", _floats(pixels), y)
    ((first, piece),) = list(store.pieces(0, 100))
    assert first == 0 and isinstance(piece, CodedCSR)
    assert np.array_equal(piece.decoded().toarray(), _floats(pixels))


def _streamed_and_in_memory(
    settings: dict[str, Any], client: Client, tmp_path: Path, home: Path, lines: list[str]
) -> tuple[Any, Any]:
    """`train` with ``settings`` twice in one data home, ``--rows disk`` (its progress into
    ``lines``) and ``--rows memory``: both runs, whose models are the same bits."""
    disk = train(TrainConfig(**settings, rows="disk"), client=client, out=tmp_path / "disk",
                 home=home, log=lines.append)  # fmt: skip
    memory = train(TrainConfig(**settings, rows="memory"), client=client,
                   out=tmp_path / "memory", home=home)  # fmt: skip
    assert np.array_equal(disk.model.coef, memory.model.coef)
    assert np.array_equal(disk.model.intercept, memory.model.intercept)
    return disk, memory


def test_train_streams_its_rows_and_gives_the_in_memory_model(
    cluster_client: Client, tmp_path: Path
) -> None:
    """`distrib train --rows disk`: the split's training rows become a row store under the
    data home, the workers stream them, and the model is the in-memory fit's, bit for bit
    (both CSR: --layout sparse); the training accuracy comes from the blocks."""
    settings = {"dataset": "digits", "strategy": "multinomial", "layout": "sparse", "max_iter": 50}
    home, lines = tmp_path / "home", []
    disk, memory = _streamed_and_in_memory(settings, cluster_client, tmp_path, home, lines)
    assert disk.metrics["train_accuracy"] == memory.metrics["train_accuracy"]
    assert disk.metrics["test_accuracy"] == memory.metrics["test_accuracy"]
    assert any(line == "transfer: streamed" or line.startswith("transfer: streamed (")
               for line in lines), lines  # fmt: skip
    stores = list(home.glob("prepared/*/stream/train/key.json"))
    assert len(stores) == 1
    store = open_row_store(stores[0].parent)
    assert store is not None and store.coded and store.shape == (1347, 64)
    reads = disk.metrics["solver"]["per_evaluation"]["read_bytes"]
    assert len(reads) == disk.metrics["solver"]["n_evaluations"] and min(reads) > 0
    saved = json.loads((tmp_path / "disk" / "model.json").read_text())
    assert saved["settings"]["rows"] == "disk"


def test_a_zarr_store_split_in_its_own_order_streams_to_the_in_memory_model(
    cluster_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's Zarr store past `SHUFFLE_BYTES` (lowered here to its size): the notebook's
    rows in the store's order, streamed, give the in-memory fit of them bit for bit, and
    scikit-learn's model of those rows; the shuffled split of the same store, prepared in
    the same data home, gets a row store of its own."""
    import zarr
    from sklearn.linear_model import LogisticRegression

    from distrib.data import split as split_module
    from distrib.data.split import shuffle_split

    pixels, y = _pixels(4000)
    group = zarr.open_group(str(tmp_path / "mine.zarr"), mode="w")
    group.create_array("X", shape=pixels.shape, chunks=(700, N_FEATURES), dtype="uint8")[:] = pixels
    group.create_array("y", shape=y.shape, chunks=(700,), dtype="int64")[:] = y
    home, lines = tmp_path / "home", []
    settings = {"data": str(tmp_path / "mine.zarr"), "strategy": "multinomial", "tol": 1e-8}
    monkeypatch.setattr(split_module, "SHUFFLE_BYTES", pixels.nbytes - 1)
    disk, memory = _streamed_and_in_memory(settings, cluster_client, tmp_path, home, lines)
    assert disk.metrics["transfer"] == "streamed" and memory.metrics["transfer"] != "streamed"
    saved = json.loads((tmp_path / "disk" / "model.json").read_text())
    assert saved["data"]["row_order"] == "data"
    assert any("test rows, in the data set's row order," in line for line in lines), lines

    train_index, test_index = (np.sort(i) for i in shuffle_split(4000, 0.25, 0))
    reference = LogisticRegression(C=0.1, tol=1e-10, max_iter=5000)  # distrib's default C
    X = _floats(pixels).astype(np.float64)
    reference.fit(X[train_index], y[train_index])
    np.testing.assert_allclose(disk.model.coef, reference.coef_, atol=2e-4)
    expected = float(np.mean(reference.predict(X[test_index]) == y[test_index]))
    assert disk.metrics["test_accuracy"] == pytest.approx(expected, abs=1 / len(test_index))

    monkeypatch.setattr(split_module, "SHUFFLE_BYTES", 2**30)
    shuffled = train(TrainConfig(**settings, rows="disk"), client=cluster_client,
                     out=tmp_path / "shuffled", home=home)  # fmt: skip
    assert json.loads((tmp_path / "shuffled" / "model.json").read_text())["data"][
        "row_order"] == "shuffled"  # fmt: skip
    assert len(list(home.glob("prepared/*/stream/train/key.json"))) == 2
    np.testing.assert_allclose(shuffled.model.coef, disk.model.coef, atol=2e-4)


def test_ovr_refuses_rows_on_disk_naming_the_strategy() -> None:
    with pytest.raises(ConfigError, match="use --strategy multinomial, or --rows memory"):
        TrainConfig(dataset="digits", rows="disk")


def test_data_make_writes_the_store_that_a_streamed_train_finds(
    cluster_client: Client, mnist_home: Path, tmp_path: Path
) -> None:
    """`distrib data make` (its API) makes elastic MNIST variants on the workers as a row
    store; `distrib train --rows disk` with the same settings streams that store (found,
    not written again) and learns digits from it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mnist").symlink_to(mnist_home / "mnist")
    settings = {"split": "canonical", "grow": 2, "deform": "elastic", "strategy": "multinomial"}
    made = make_training_rows(TrainConfig(**settings), cluster_client, home)
    assert made["made"] and made["rows"] == 120_000 and made["columns"] == 784
    store = open_row_store(made["folder"])
    assert store is not None and store.coded and store.digest() == made["digest"]
    assert made["bytes"] == store.nbytes() < 3.2 * made["nnz"] + 9 * 120_000 + 10_000
    X, y = store.rows(0, 1000)  # variant 0: MNIST's first training rows, scaled
    mnist = np.load(mnist_home / "mnist" / "X.npy", mmap_mode="r")
    assert np.array_equal(X.toarray(), np.asarray(mnist[:1000]) / np.float32(255))
    labels = np.load(mnist_home / "mnist" / "y.npy", mmap_mode="r")
    assert y.dtype == np.uint8 and np.array_equal(y, labels[:1000])  # kept in one byte
    again = make_training_rows(TrainConfig(**settings), cluster_client, home)
    assert not again["made"] and again["digest"] == made["digest"]

    lines: list[str] = []
    result = train(TrainConfig(**settings, rows="disk", max_iter=30), client=cluster_client,
                   out=tmp_path / "run", home=home, log=lines.append)  # fmt: skip
    assert not any(line.startswith("row store:") for line in lines), "written again"
    assert result.metrics["n_train"] == 120_000 and result.metrics["n_test"] == 10_000
    assert result.metrics["test_accuracy"] > 0.88


def _peak_rss() -> int:
    """This process's peak resident size in bytes (Linux: VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _streamed_past_the_limit(
    mnist_home: Path, tmp_path: Path, grow: int, max_iter: int, free: Client | None = None
) -> int:
    """`distrib train --rows auto` on ``grow`` elastic variants of MNIST's training images
    with two workers limited to 700 MB each: the rows do not fit, so the run makes them on
    the workers as a row store and streams them; no worker passes its limit or dies, and
    the model is the one two unlimited workers (``free``, else a new cluster) fit with the
    same rows in memory, bit for bit. Returns the rows' bytes as float32 CSR."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mnist").symlink_to(mnist_home / "mnist")
    config = TrainConfig(split="canonical", grow=grow, deform="elastic", strategy="multinomial",
                         max_iter=max_iter)  # fmt: skip
    limit = 700e6
    lines: list[str] = []
    with two_workers(memory_limit="700MB") as limited:
        pids = limited.run(os.getpid)
        result = train(config, client=limited, out=tmp_path / "run", home=home, log=lines.append)
        peaks = limited.run(_peak_rss)
        assert limited.run(os.getpid) == pids, "a worker was restarted"
    assert any(line.startswith("rows: streamed from disk: the multinomial fit puts ~")
               for line in lines), lines  # fmt: skip
    assert result.metrics["transfer"] == "streamed"
    assert result.metrics["n_train"] == grow * 60_000
    (folder,) = home.glob(f"prepared/*/stream/train-elastic-{grow}")
    store = open_row_store(folder)
    assert store is not None
    as_float32_csr = store.key()["nnz"] * 8 + 8 * (store.shape[0] + 1)
    assert as_float32_csr > limit  # more rows than a worker may hold
    assert max(peaks.values()) < 0.95 * limit, peaks
    assert {b["worker"] for b in result.metrics["fits"]} == set(pids)

    X, y = store.arrays()  # the same rows, in memory on two workers without limits
    (tmp_path / "files").mkdir()
    files = write_in_memory(InMemoryArrays(X, y), tmp_path / "files")
    del X
    if free is None:
        with two_workers() as unlimited:
            in_memory = fit_training_data(files, np.arange(10), config, client=unlimited)
    else:
        in_memory = fit_training_data(files, np.arange(10), config, client=free)
    assert np.array_equal(result.model.coef, in_memory.coef)
    assert np.array_equal(result.model.intercept, in_memory.intercept)
    return int(as_float32_csr)


def test_rows_past_a_small_memory_limit_are_streamed_to_the_in_memory_model(
    cluster_client: Client, mnist_home: Path, tmp_path: Path
) -> None:
    """480,000 rows (0.7 GB as float32 CSR), 10 iterations: `_streamed_past_the_limit`."""
    _streamed_past_the_limit(mnist_home, tmp_path, grow=8, max_iter=10, free=cluster_client)


@pytest.mark.slow
def test_rows_past_the_workers_memory_are_streamed_to_the_in_memory_model(
    mnist_home: Path, tmp_path: Path
) -> None:
    """960,000 rows (1.5 GB as float32 CSR: past both workers' limits together), 30
    iterations: `_streamed_past_the_limit`."""
    assert _streamed_past_the_limit(mnist_home, tmp_path, grow=16, max_iter=30) > 2 * 700e6


@pytest.mark.slow
def test_a_zarr_store_past_the_workers_memory_is_split_in_order_and_streamed(
    mnist_home: Path, mnist_arrays: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """A user's Zarr store of 1.68 M one-byte rows (1.3 GB: past `SHUFFLE_BYTES`, so its
    notebook split keeps the store's order) trained by two workers limited to 700 MB: its
    1.26 M training rows (1.5 GB as float32 CSR) are streamed, no worker passes its limit or
    is restarted, and the model is the one two unlimited workers fit with the same rows in
    memory, bit for bit. (The driver's own peak is measured as a process of its own, by
    scripts/streamed_bench.py: this test process's peak is the whole session's.)"""
    import zarr

    from distrib.data.split import SHUFFLE_BYTES

    X, y = mnist_arrays
    copies = 24
    group = zarr.open_group(str(tmp_path / "mine.zarr"), mode="w")
    pixels = group.create_array("X", shape=(copies * len(X), 784), chunks=(10_000, 784),
                                dtype="uint8")  # fmt: skip
    labels = group.create_array("y", shape=(copies * len(y),), chunks=(10_000,), dtype="uint8")
    for k in range(copies):  # each copy shifted by a pixel or two, so no two are the same
        images = np.roll(X.reshape(-1, 28, 28), (k % 5 - 2, k // 5 - 2), axis=(1, 2))
        pixels[k * len(X) : (k + 1) * len(X)] = images.reshape(-1, 784)
        labels[k * len(y) : (k + 1) * len(y)] = y
    assert pixels.nbytes > SHUFFLE_BYTES
    config = TrainConfig(data=str(tmp_path / "mine.zarr"), strategy="multinomial", max_iter=10)
    home, lines, limit = tmp_path / "home", [], 700e6
    with two_workers(memory_limit="700MB") as limited:
        pids = limited.run(os.getpid)
        result = train(config, client=limited, out=tmp_path / "run", home=home, log=lines.append)
        peaks = limited.run(_peak_rss)
        assert limited.run(os.getpid) == pids, "a worker was restarted"
    assert any("in the data set's row order" in line for line in lines), lines
    assert result.metrics["transfer"] == "streamed"
    assert result.metrics["n_train"] == copies * len(X) * 3 // 4
    assert max(peaks.values()) < 0.95 * limit, peaks
    (folder,) = home.glob("prepared/*/stream/train")
    store = open_row_store(folder)
    assert store is not None
    as_float32_csr = store.key()["nnz"] * 8 + 8 * (store.shape[0] + 1)
    assert as_float32_csr > 2 * limit

    rows, codes = store.arrays()  # the same rows, in memory on two workers without limits
    (tmp_path / "files").mkdir()
    files = write_in_memory(InMemoryArrays(rows, codes), tmp_path / "files")
    del rows
    with two_workers() as unlimited:
        in_memory = fit_training_data(files, np.arange(10), config, client=unlimited)
    assert np.array_equal(result.model.coef, in_memory.coef)
    assert np.array_equal(result.model.intercept, in_memory.intercept)
