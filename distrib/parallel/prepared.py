"""The prepared training rows, written once on the driver: the layout choice, the cache of
``.npy`` files under the data home, and whether the workers see them.

Layout: MNIST's pixel matrix is 81 % zeros. Stored as CSR (float32 values, int32 indices) it
is 72 MB instead of 188 MB, and a binary fit reads 2.6x fewer bytes per pass: on two cores
the dense fits are limited by memory bandwidth, the sparse ones are not.
``auto`` picks CSR when at most `AUTO_SPARSE_DENSITY` of the training pixels are non-zero.

The files are read as `distrib.parallel.rows.ArrayFiles`; workers that cannot see them
(`workers_blind_to`) get the rows by value (`distrib.parallel.rows`).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import scipy.sparse as sp

from distrib.config import LAYOUTS
from distrib.data.split import keeps_row_order
from distrib.errors import ClusterError, ConfigError
from distrib.files import atomic_path, storage_error, write_json, write_npy_chunks

if TYPE_CHECKING:  # dask.array stays out of the workers that only read prepared rows
    import dask.array as da

    from distrib.data.datasets import Dataset
    from distrib.data.split import SplitArrays

from distrib.linear import softmax
from distrib.parallel.checksums import file_checksums
from distrib.parallel.row_store import RowStore, code_pixels, open_row_store, write_row_store
from distrib.parallel.rows import (
    SPARSE_PARTS,
    ArrayFiles,
    InMemoryArrays,
    file_signatures,
)

AUTO_SPARSE_DENSITY = 0.25
#: Seconds a chunk of a row store may take to make on the workers (10,000 elastic rows: ~0.1
#: s of compute) before writing it gives up.
CHUNK_SECONDS = 600.0


def workers_blind_to(client: Any, files: ArrayFiles) -> list[str]:
    """The workers of ``client`` that do not see ``files`` as this process does (another
    machine, another mount): they cannot open them by path."""
    return workers_blind_to_paths(client, files.paths())


def workers_blind_to_paths(client: Any, paths: list[str]) -> list[str]:
    """The workers of ``client`` that do not see the files ``paths`` as this process does."""
    if not paths:
        return []
    here = file_signatures(paths)
    # a worker that cannot answer (gone, or cut off) cannot be shown to see them either
    seen = client.run(file_signatures, paths, on_error="return")
    return sorted(
        worker
        for worker, sigs in seen.items()
        if isinstance(sigs, BaseException) or list(sigs) != here
    )


def density_of(X: da.Array) -> float:
    """The share of non-zero entries of ``X``."""
    import dask.array as da

    return float(da.count_nonzero(X).compute(scheduler="threads")) / max(X.size, 1)


def choose_layout(layout: str, density: float) -> str:
    """``dense`` or ``sparse``: ``auto`` picks CSR at or below `AUTO_SPARSE_DENSITY`."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}: expected one of {LAYOUTS}")
    if layout == "auto":
        return "sparse" if density <= AUTO_SPARSE_DENSITY else "dense"
    return layout


def write_in_memory(data: InMemoryArrays, folder: Path) -> ArrayFiles:
    """Write in-memory rows as `ArrayFiles` in ``folder`` (for workers that can open them;
    a temporary folder: not synced to the disk)."""
    X = data.X
    layout = "sparse" if sp.issparse(X) else "dense"
    if layout == "sparse":
        given: Any = X  # a block's CSR (uint16 indices) as it is: scipy would warn
        csr = given if given.format == "csr" else sp.csr_matrix(X)
        for part in SPARSE_PARTS:
            array = np.ascontiguousarray(getattr(csr, part))
            if part == "indices" and array.dtype == np.uint16:
                array = array.astype(np.int32)  # as prepared files hold them
            _store_npy(folder / f"X_{part}.npy", array, False)
    else:
        _store_npy(folder / "X.npy", np.ascontiguousarray(X), False)
    _store_npy(folder / "y.npy", np.asarray(data.y), False)
    if data.sample_weight is not None:
        _store_npy(folder / "w.npy", np.asarray(data.sample_weight, dtype=np.float64), False)
    return ArrayFiles(str(folder), data.shape, layout)


def split_key(dataset: Dataset, split: str, scale: str) -> dict[str, Any]:
    """What a split's prepared arrays derive from: the data set's bytes, the split and its
    rows' order, the scaling (their folder is named by its digest: `prepared_folder`)."""
    key = {
        "dataset": dataset.name,
        "X_sha256": dataset.X_sha256,
        "y_sha256": dataset.y_sha256,
        "split": split,
        "scale": scale,
    }
    if keeps_row_order(dataset, split):  # other rows in this place: another folder
        key["order"] = "data"
    return key


def prepared_folder(root: Path, key_parts: dict[str, Any]) -> Path:
    """A folder under ``root/prepared`` named by a digest of what the arrays derive from."""
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    return root / "prepared" / digest


def _store_npy(path: Path, array: da.Array | np.ndarray, durable: bool = True) -> None:
    """``array`` as a ``.npy`` file, a row chunk at a time for a Dask array, with ordinary
    writes (`distrib.files.write_npy_chunks`); ``durable``: synced before it is renamed."""
    if isinstance(array, np.ndarray):
        chunks: Iterator[np.ndarray] = iter([array])
    else:
        rows = array.rechunk({i: -1 for i in range(1, array.ndim)})
        chunks = (np.asarray(c.compute(scheduler="threads")) for c in rows.to_delayed().ravel())
    write_npy_chunks(path, chunks, array.dtype, tuple(int(n) for n in array.shape), durable)


def _store_csr(X: da.Array, folder: Path) -> None:
    """``X`` (row-chunked) as the CSR parts ``X_data.npy``, ``X_indices.npy`` (int32) and
    ``X_indptr.npy`` (int64), computed and written a chunk at a time: only one chunk of
    rows is ever in memory here, whatever the size of ``X``."""
    X = X.rechunk({1: -1})
    indptr = [np.zeros(1, dtype=np.int64)]
    total = 0
    raw = {part: folder / f".X_{part}.{uuid.uuid4().hex}.raw" for part in ("data", "indices")}
    try:
        with open(raw["data"], "wb") as data, open(raw["indices"], "wb") as indices:
            for chunk in X.to_delayed().ravel():
                block = sp.csr_matrix(np.asarray(chunk.compute(scheduler="threads")))
                data.write(np.ascontiguousarray(block.data, dtype=X.dtype).tobytes())
                indices.write(np.ascontiguousarray(block.indices, dtype=np.int32).tobytes())
                indptr.append(block.indptr[1:].astype(np.int64) + total)
                total += block.nnz
        _npy_from_raw(raw["data"], folder / "X_data.npy", X.dtype, total)
        _npy_from_raw(raw["indices"], folder / "X_indices.npy", np.dtype(np.int32), total)
        _store_npy(folder / "X_indptr.npy", np.concatenate(indptr))
    finally:
        for path in raw.values():
            path.unlink(missing_ok=True)


def _npy_from_raw(raw: Path, path: Path, dtype: Any, length: int) -> None:
    """A 1-D ``.npy`` file of ``length`` values of ``dtype`` whose bytes are in ``raw``."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (length,),
    }
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_2_0(out, header)
        shutil.copyfileobj(src, out, 16 << 20)


def open_array_files(folder: Path, shape: tuple[int, int], layout: str) -> ArrayFiles | None:
    """The prepared files in ``folder`` if complete and readable, else None."""
    files = ArrayFiles(str(folder), shape, layout)
    if not (folder / "key.json").exists():  # written last: marks a complete folder
        return None
    try:
        if files.checksums() is None:  # written before files carried checksums: anew
            return None
        X, y = files.arrays()  # checked: a damaged folder is written anew
    except (OSError, ValueError, EOFError):
        return None
    return files if X.shape == shape and y.shape == shape[:1] else None


def write_array_files(
    X: da.Array, y: da.Array, folder: Path, key_parts: dict[str, Any], layout: str = "dense"
) -> ArrayFiles:
    """Compute the training split once into ``folder`` (reused while complete).

    Parameters
    ----------
    X, y : dask.array.Array
        The training pixels (float32) and labels.
    folder : Path
        Where to write; its name should derive from ``key_parts``.
    key_parts : dict
        What the arrays derive from, written last as ``key.json``.
    layout : {"dense", "sparse"}
        Store ``X`` as one dense array or as CSR parts.
    """
    shape = (int(X.shape[0]), int(X.shape[1]))
    existing = open_array_files(folder, shape, layout)
    if existing is not None:
        return existing
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").unlink(missing_ok=True)
        if layout == "dense":
            _store_npy(folder / "X.npy", X)
        else:
            _store_csr(X, folder)
        _store_npy(folder / "y.npy", y)
        names = [Path(p).name for p in ArrayFiles(str(folder), shape, layout).paths()]
        checksums = {name: file_checksums(folder / name) for name in names}
        key = {**key_parts, "layout": layout, "shape": list(shape), "checksums": checksums}
        write_json(folder / "key.json", key)
    except OSError as exc:
        dense = shape[0] * shape[1] * np.dtype(X.dtype).itemsize
        raise storage_error(
            "the prepared training arrays in",
            folder,
            exc,
            "free space there, or point --data-home at another folder",
            needed=dense + int(y.nbytes),  # at most: CSR where it is smaller
        ) from exc
    return ArrayFiles(str(folder), shape, layout)


def training_density(parts: SplitArrays, root: Path, key_parts: dict[str, Any]) -> float:
    """The share of non-zero training pixels, cached beside the prepared split (a grown
    training part: its first variant's, the data set's own rows; elastic variants blur
    strokes, 25 % non-zero against MNIST's 19 %, so for them the larger of that and the
    first 10,000 rows of the first deformed variant: what the memory check holds against
    the workers' limits)."""
    folder = prepared_folder(root, key_parts)
    elastic = parts.grow > 1 and parts.deform == "elastic"
    density_path = folder / ("density-elastic.json" if elastic else "density.json")
    try:
        return float(json.loads(density_path.read_text())["density"])
    except (OSError, ValueError, KeyError, TypeError):
        n = len(parts.split.train_index)
        density = density_of(parts.X_train[:n])
        if elastic:
            density = max(density, density_of(parts.X_train[n : n + min(n, 10_000)]))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(density_path, {"density": density})
    except OSError as exc:
        n_rows, n_features = (int(n) for n in parts.X_train.shape)
        raise storage_error(
            "the prepared training arrays in",
            folder,
            exc,
            "free space there, or point --data-home at another folder",
            needed=n_rows * n_features * 4,  # at most: float32, dense
        ) from exc
    return density


def _grown(parts: SplitArrays, key_parts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The folder name and key of a split's training part: the data set's rows, or grown."""
    if parts.grow == 1:
        return "train", key_parts
    if parts.deform == "shift":  # the name and key such folders always had
        return f"train-grow-{parts.grow}", {**key_parts, "grow": parts.grow}
    grown = {**key_parts, "grow": parts.grow, "deform": parts.deform}
    return f"train-{parts.deform}-{parts.grow}", grown


def prepare_split_arrays(
    parts: SplitArrays,
    root: Path,
    key_parts: dict[str, Any],
    layout: str = "auto",
    *,
    write_train: bool = True,
) -> tuple[ArrayFiles | None, ArrayFiles, float]:
    """Write (or reuse) both parts of a split under ``root/prepared`` in the chosen layout.

    The folder is named by a digest of ``key_parts`` (what the arrays derive from); the
    density of the training pixels is cached beside the layouts, so later runs pay for
    neither. The training part is what the workers read; the test part makes evaluation
    and ``distrib predict`` a memory-mapped read. A grown training part (``parts.grow`` >
    1) has a folder of its own beside the data set's; its density is the data set's
    training rows' (its first variant), so choosing the layout makes no variant.

    Parameters
    ----------
    write_train : bool
        False: write only the test part (the training rows reach the workers another
        way); the returned train files are then None.

    Returns
    -------
    train, test : ArrayFiles (train None without ``write_train``)
    density : float
        The share of non-zero training pixels.
    """
    folder = prepared_folder(root, key_parts)
    density = training_density(parts, root, key_parts)
    chosen = choose_layout(layout, density)
    train = None
    if write_train:
        name, train_key = _grown(parts, key_parts)
        train = write_array_files(
            parts.X_train, parts.y_train, folder / chosen / name, train_key, chosen
        )
    test = write_array_files(
        parts.X_test, parts.y_test, folder / chosen / "test", key_parts, chosen
    )
    return train, test, density


def row_store_folder(parts: SplitArrays, root: Path, key_parts: dict[str, Any]) -> Path:
    """Where `prepare_row_store` keeps a split's training part as a row store."""
    return prepared_folder(root, key_parts) / "stream" / _grown(parts, key_parts)[0]


def prepare_row_store(
    parts: SplitArrays,
    y_train: np.ndarray,
    root: Path,
    key_parts: dict[str, Any],
    *,
    client: Any = None,
    log: Callable[[str], None] | None = None,
) -> RowStore:
    """The training part of a split as a row store (`distrib.parallel.row_store`), for a
    fit that streams its rows: written once under ``root/prepared``, then reused while
    complete.

    The chunks are made on ``client``'s workers (a few at a time: grown rows are made
    there, and one-byte pixels become CSR codes there), or on this process's threads
    without a client, and written here in order: never the whole matrix in memory.
    ``y_train`` are the training labels; ``log`` receives a progress line about every
    10 seconds.
    """
    _, train_key = _grown(parts, key_parts)
    folder = row_store_folder(parts, root, key_parts)
    n_rows, n_features = (int(n) for n in parts.X_train.shape)
    existing = open_row_store(folder)
    if existing is not None and existing.shape == (n_rows, n_features):
        return existing
    table = parts.pixel_values
    if parts.pixels_train is not None and table is not None:  # codes: the pixels themselves
        rows = parts.pixels_train.rechunk({1: -1})
        tasks = [dask.delayed(code_pixels)(c, table) for c in rows.to_delayed().ravel()]
    else:
        rows, table = parts.X_train.rechunk({1: -1}), None
        tasks = [dask.delayed(softmax.prepare)(c) for c in rows.to_delayed().ravel()]
    edges = np.cumsum((0, *rows.chunks[0]))

    def chunks() -> Iterator[tuple[Any, np.ndarray]]:
        made = _in_order(client, tasks)
        for (a, b), chunk in zip(itertools.pairwise(edges), made, strict=True):
            yield chunk, y_train[a:b]

    dtype = rows.dtype if table is None else table.dtype
    progress = _progress(log, n_rows, "row store")
    return write_row_store(chunks, folder, n_features, train_key, dtype, progress, table)


def _in_order(client: Any, tasks: list[Any], ahead: int = 0) -> Iterator[Any]:
    """The results of ``tasks`` (Delayed), in order, computed on ``client``'s workers (or
    on threads here without one), ``ahead`` of them at a time (default: two per worker
    thread): the rest wait, so at most that many results are ever held."""
    if client is None:
        for start in range(0, len(tasks), 4):
            yield from dask.compute(*tasks[start : start + 4], scheduler="threads")
        return
    ahead = ahead or 2 * max(1, sum(client.nthreads().values()))
    pending: collections.deque[Any] = collections.deque()
    todo = iter(tasks)
    for task in itertools.islice(todo, ahead):
        pending.append(client.compute(task))
    while pending:
        future = pending.popleft()
        try:
            result = future.result(timeout=CHUNK_SECONDS)
        except TimeoutError as exc:
            raise ClusterError(
                f"a chunk of rows took longer than {CHUNK_SECONDS:g} s to make on the "
                "workers: are they all paused, or gone?"
            ) from exc
        future.release()
        for task in itertools.islice(todo, 1):
            pending.append(client.compute(task))
        yield result


def _progress(log: Callable[[str], None] | None, total: int, what: str) -> Callable[[int], None]:
    """A progress callback: a line to ``log`` about every 10 seconds, and at the end."""
    started = time.perf_counter()
    said = [started]

    def progress(done: int) -> None:
        now = time.perf_counter()
        if log is not None and (now - said[0] >= 10 or done == total):
            said[0] = now
            rate = done / max(now - started, 1e-9)
            left = (total - done) / max(rate, 1e-9)
            log(f"{what}: {done:,}/{total:,} rows written ({rate:,.0f} rows/s, {left:.0f} s left)")

    return progress
