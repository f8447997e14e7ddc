"""The training rows as the fits read them, on the workers or here: `TrainingData`.

* `ArrayFiles`: prepared ``.npy`` files (`distrib.parallel.prepared`), opened by path and
  memory-mapped. Nothing crosses the network, workers on one host share the page cache, and
  any task can be recomputed anywhere after a worker dies. Needs workers that see the
  client's files (same host, or a shared volume mounted at the same path).
* `InMemoryArrays`: the arrays travel by value. The caller broadcasts the object to every
  worker once (``parallel_config(backend="dask", scatter=[data])``); each worker process then
  copies it once into aligned memory (arrays deserialized from the network are unaligned,
  which makes BLAS up to 10x slower: dask/distributed issue 8985) and reuses that copy for
  every class (a per-process cache, `release_aligned` empties it).
* `RowsFromHere`: prepared files read here, each block's rows sent to its worker alone.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import numpy as np
import scipy.sparse as sp

from distrib.errors import DataError
from distrib.linear import softmax
from distrib.parallel.checksums import check_csr, damaged, verify_range

SPARSE_PARTS = ("data", "indices", "indptr")

Matrix: TypeAlias = np.ndarray | sp.csr_matrix


class TrainingData(Protocol):
    """What a training task receives: something that yields ``(X, y)`` on the worker."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def arrays(self) -> tuple[Matrix, np.ndarray]: ...

    def rows(self, start: int, stop: int) -> tuple[Matrix, np.ndarray]: ...

    def labels(self) -> np.ndarray:
        """Every row's label (without reading the rows)."""
        ...

    def weights(self, start: int, stop: int) -> np.ndarray | None:
        """The sample weights of rows ``start:stop`` (None: every row weighs 1)."""
        ...

    def describe(self) -> dict[str, Any]: ...


def _row_slice(X: Matrix, y: np.ndarray, start: int, stop: int) -> tuple[Matrix, np.ndarray]:
    """Rows ``start:stop`` as a fresh copy (of a memory-mapped CSR matrix, only those rows
    are read); CSR keeps its index types (a block's uint16 stays uint16)."""
    if not sp.issparse(X):
        return np.array(X[start:stop]), np.array(y[start:stop])
    given: Any = X
    csr = given if given.format == "csr" else sp.csr_matrix(X)
    lo, hi = int(csr.indptr[start]), int(csr.indptr[stop])
    rows = softmax.block_csr(
        (stop - start, csr.shape[1]),
        np.array(csr.data[lo:hi]),
        np.array(csr.indices[lo:hi]),
        np.array(csr.indptr[start : stop + 1]) - lo,
    )
    return rows, np.array(y[start:stop])


def file_signature(path: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a file, or None where this process cannot see it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def file_signatures(paths: list[str]) -> list[tuple[int, int] | None]:
    """`file_signature` of several files (runs on each worker)."""
    return [file_signature(p) for p in paths]


def _read_npy_range(
    path: Path, start: int, stop: int, dtype: Any = None, checksums: list[int] | None = None
) -> np.ndarray:
    """Rows ``start:stop`` (first axis) of a C-ordered ``.npy`` file, read into new memory;
    as ``dtype`` if given, converted a chunk at a time (no full copy in the file's type).
    With the file's ``checksums``, those bytes are checked first (`verify_range`)."""
    header = load_npy(path)  # a map: only its shape, dtype and offset are used, no page is read
    row = int(np.prod(header.shape[1:], dtype=np.int64))
    offset = int(getattr(header, "offset", 0)) + start * row * header.dtype.itemsize
    count = (stop - start) * row
    if checksums is not None:
        verify_range(path, checksums, offset, offset + count * header.dtype.itemsize)
    if dtype is None or np.dtype(dtype) == header.dtype:
        out = np.fromfile(path, dtype=header.dtype, count=count, offset=offset)
    else:  # through one small buffer, reused (no allocation per chunk)
        out = np.empty(count, dtype=dtype)
        buffer = np.empty(min(count, _CHUNK), dtype=header.dtype)
        with open(path, "rb", buffering=0) as handle:
            handle.seek(offset)
            for a in range(0, count, _CHUNK):
                chunk = buffer[: min(count, a + _CHUNK) - a]
                _read_into(handle, chunk, path)
                out[a : a + len(chunk)] = chunk
    return out.reshape((stop - start, *header.shape[1:]))


def _read_into(handle: Any, array: np.ndarray, path: Path) -> None:
    """Fill ``array`` from ``handle``'s next bytes."""
    view = memoryview(array).cast("B")  # type: ignore[arg-type]
    got = 0
    while got < len(view):
        n = handle.readinto(view[got:])
        if not n:
            raise DataError(
                f"{path} ends early (damaged): delete {path.parents[2]} and run again; "
                "distrib prepares the split anew"
            )
        got += n


_CHUNK = 1 << 20  # entries converted at a time by `_read_npy_range`


def load_npy(path: Path) -> np.ndarray:
    """``path`` memory-mapped (np.save puts the data at a 64-byte-aligned offset, so the
    map is aligned); a file that is no whole ``.npy`` raises `DataError`."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as exc:  # cut short, or not an .npy file
        raise damaged(path, f"cannot be read as an array ({exc})") from exc


# Per process: folder -> (key.json's mtime, its checksums); folders whose CSR was checked.
_MANIFESTS: dict[str, tuple[int, dict[str, list[int]] | None]] = {}
_CSR_CHECKED: set[tuple[str, int]] = set()


def _manifest_checksums(folder: Path) -> dict[str, list[int]] | None:
    """The checksums a prepared folder's ``key.json`` holds (None without one)."""
    key = folder / "key.json"
    try:
        mtime = os.stat(key).st_mtime_ns
    except FileNotFoundError:
        return None
    known = _MANIFESTS.get(str(folder))
    if known is None or known[0] != mtime:
        try:
            sums = json.loads(key.read_text()).get("checksums")
        except (OSError, ValueError) as exc:
            raise damaged(key, f"cannot be read ({exc})") from exc
        known = _MANIFESTS[str(folder)] = (mtime, sums)
    return known[1]


def _check_csr_once(folder: Path, indptr: Any, indices: Any, n_features: int) -> None:
    """`check_csr` on a folder's whole arrays, once per process."""
    key = (str(folder), os.stat(folder / "X_indices.npy").st_mtime_ns)
    if key not in _CSR_CHECKED:
        check_csr(np.asarray(indptr), np.asarray(indices), n_features, folder / "X_indices.npy")
        _CSR_CHECKED.add(key)


@dataclass(frozen=True)
class ArrayFiles:
    """Training arrays stored as ``.npy`` files that tasks open by path (memory-mapped).

    ``dense``: ``X.npy``. ``sparse``: ``X_data.npy``, ``X_indices.npy``,
    ``X_indptr.npy`` (CSR). Labels: ``y.npy``; sample weights, if any: ``w.npy``.
    """

    folder: str
    shape: tuple[int, int]
    layout: str

    def paths(self) -> list[str]:
        names = ["X"] if self.layout == "dense" else [f"X_{p}" for p in SPARSE_PARTS]
        return [os.path.join(self.folder, f"{name}.npy") for name in [*names, "y"]]

    def checksums(self) -> dict[str, list[int]] | None:
        """The files' checksums, from ``key.json`` (a prepared split's; None for rows
        written for one fit only, which are not checked)."""
        return _manifest_checksums(Path(self.folder))

    def arrays(self) -> tuple[Matrix, np.ndarray]:
        """The whole arrays, memory-mapped (checked once per process: every file's
        checksums, and the CSR structure)."""
        folder = Path(self.folder)
        sums = self.checksums()
        if sums is not None:
            for path in map(Path, self.paths()):
                verify_range(path, sums.get(path.name, []), 0, os.stat(path).st_size)
        y = np.asarray(load_npy(folder / "y.npy"))
        if self.layout == "dense":
            return load_npy(folder / "X.npy"), y
        data, indices, indptr = (load_npy(folder / f"X_{p}.npy") for p in SPARSE_PARTS)
        _check_csr_once(folder, indptr, indices, self.shape[1])
        return sp.csr_matrix((data, indices, indptr), shape=self.shape, copy=False), y

    def rows(self, start: int, stop: int) -> tuple[Matrix, np.ndarray]:
        """Rows ``start:stop`` read from the files into fresh memory, as a block holds them
        (the bytes read checked against the files' checksums, the CSR structure checked).

        Read, not memory-mapped: only the copy counts in this process's memory (mapped pages
        of the file would count too while the copy is made).
        """
        folder = Path(self.folder)
        sums = self.checksums()

        def of(name: str) -> list[int] | None:
            return None if sums is None else sums.get(name, [])

        y = _read_npy_range(folder / "y.npy", start, stop, checksums=of("y.npy"))
        if self.layout == "dense":
            return _read_npy_range(folder / "X.npy", start, stop, checksums=of("X.npy")), y
        indptr = _read_npy_range(
            folder / "X_indptr.npy", start, stop + 1, np.int64, of("X_indptr.npy")
        )
        lo, hi = int(indptr[0]), int(indptr[-1])
        if hi < lo:
            raise damaged(folder / "X_indptr.npy", "decreases")
        data = _read_npy_range(folder / "X_data.npy", lo, hi, checksums=of("X_data.npy"))
        # column indices straight into the block kernel's type (uint16 for MNIST)
        index = softmax.index_dtype(self.shape[1])
        path = folder / "X_indices.npy"
        indices = _read_npy_range(path, lo, hi, index, of("X_indices.npy"))
        check_csr(indptr, indices, self.shape[1], path, first=lo)
        shape = (stop - start, self.shape[1])
        return softmax.block_csr(shape, data, indices, indptr - lo), y

    def labels(self) -> np.ndarray:
        sums = self.checksums()
        path = Path(self.folder) / "y.npy"
        if sums is not None:
            verify_range(path, sums.get(path.name, []), 0, os.stat(path).st_size)
        return np.array(load_npy(path))

    def weights(self, start: int, stop: int) -> np.ndarray | None:
        path = Path(self.folder) / "w.npy"
        if not path.exists():  # prepared splits carry none
            return None
        return np.array(load_npy(path)[start:stop], dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {"mode": "path", "folder": self.folder, "layout": self.layout}


# Per worker process: token -> aligned (X, y). One entry per job; released at the job's end.
_ALIGNED: dict[str, tuple[Matrix, np.ndarray]] = {}
_ALIGNED_LOCK = threading.Lock()


def _aligned(array: np.ndarray) -> np.ndarray:
    return np.require(array, requirements=("A", "C"))


def aligned_copy(X: Matrix) -> Matrix:
    """``X`` in aligned, C-ordered memory (a copy only where needed)."""
    if sp.issparse(X):
        given: Any = X
        csr = given if given.format == "csr" else sp.csr_matrix(X)
        parts = (csr.data, csr.indices, csr.indptr)
        aligned = tuple(_aligned(part) for part in parts)
        if all(new is old for new, old in zip(aligned, parts, strict=True)):
            return csr
        return softmax.block_csr(csr.shape, *aligned)  # keeps the index types
    return _aligned(np.asarray(X))


@dataclass(frozen=True, eq=False)
class InMemoryArrays:
    """Training arrays sent by value; aligned once per worker process and job.

    ``sample_weight`` (one float per row, or None) travels with the rows. ``try_paths``: a
    fit may first offer the rows to the workers as files in a temporary folder (workers on
    this machine open them instead of receiving them); False where the workers are known
    not to see this machine's files (`load_in_memory`)."""

    X: Matrix
    y: np.ndarray
    sample_weight: np.ndarray | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    try_paths: bool = True

    def arrays(self) -> tuple[Matrix, np.ndarray]:
        with _ALIGNED_LOCK:
            cached = _ALIGNED.get(self.token)
            if cached is None:
                cached = (aligned_copy(self.X), _aligned(np.asarray(self.y)))
                _ALIGNED.clear()  # a new job: drop any earlier job's copy
                _ALIGNED[self.token] = cached
        return cached

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.X.shape[0]), int(self.X.shape[1]))

    def rows(self, start: int, stop: int) -> tuple[Matrix, np.ndarray]:
        """Rows ``start:stop`` as an aligned copy."""
        return _row_slice(self.X, self.y, start, stop)

    def labels(self) -> np.ndarray:
        return np.asarray(self.y)

    def weights(self, start: int, stop: int) -> np.ndarray | None:
        if self.sample_weight is None:
            return None
        return np.array(self.sample_weight[start:stop], dtype=np.float64)

    def row_block(self, start: int, stop: int) -> InMemoryArrays:
        """Rows ``start:stop`` as their own object, to be sent by value without the rest."""
        X, y = self.rows(start, stop)
        return InMemoryArrays(X, y, self.weights(start, stop))

    def describe(self) -> dict[str, Any]:
        layout = "sparse" if sp.issparse(self.X) else "dense"
        return {"mode": "scatter", "layout": layout, "nbytes": matrix_nbytes(self.X)}


@dataclass(frozen=True)
class RowsFromHere:
    """Prepared files that the workers cannot open, for a multinomial fit: each block's rows
    are read here when it is loaded and sent to its worker alone (`row_block`), so neither
    this process nor any worker holds the whole matrix. Any other use reads the files here.
    """

    files: ArrayFiles

    @property
    def shape(self) -> tuple[int, int]:
        return self.files.shape

    def arrays(self) -> tuple[Matrix, np.ndarray]:
        return self.files.arrays()

    def rows(self, start: int, stop: int) -> tuple[Matrix, np.ndarray]:
        return self.files.rows(start, stop)

    def labels(self) -> np.ndarray:
        return self.files.labels()

    def weights(self, start: int, stop: int) -> np.ndarray | None:
        return self.files.weights(start, stop)

    def row_block(self, start: int, stop: int) -> InMemoryArrays:
        """Rows ``start:stop`` read from the files, to be sent by value."""
        X, y = self.files.rows(start, stop)
        return InMemoryArrays(X, y, self.files.weights(start, stop))

    def describe(self) -> dict[str, Any]:
        return {"mode": "scatter", "layout": self.files.layout, "sent": "block by block"}


def matrix_nbytes(X: Matrix) -> int:
    """Bytes held by a dense or CSR matrix."""
    if sp.issparse(X):
        csr = sp.csr_matrix(X)
        return int(csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes)
    return int(np.asarray(X).nbytes)


def release_aligned(token: str) -> bool:
    """Drop this process's aligned copy of job ``token`` (run on every worker at job end)."""
    with _ALIGNED_LOCK:
        return _ALIGNED.pop(token, None) is not None


def load_in_memory(files: ArrayFiles) -> InMemoryArrays:
    """Read prepared files fully into memory, to be sent by value to workers that cannot
    open them (so no fit offers them as files again)."""
    try:
        X, y = files.arrays()
        X = sp.csr_matrix(X, copy=True) if sp.issparse(X) else np.array(X)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read the prepared training arrays in {files.folder}: {exc}"
        ) from exc
    return InMemoryArrays(X, np.array(y), try_paths=False)
