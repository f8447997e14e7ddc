"""How the training arrays reach the workers, and in which layout.

Layout: MNIST's pixel matrix is 81 % zeros. Stored as CSR (float32 values, int32 indices) it
is 72 MB instead of 188 MB, and a binary fit reads 2.6x fewer bytes per pass: on two cores
the dense fits are limited by memory bandwidth, the sparse ones are not.
``auto`` picks CSR when at most `AUTO_SPARSE_DENSITY` of the training pixels are non-zero.

Transfer, two ways, chosen per run (ARCHITECTURE.md, step 4):

* `ArrayFiles`: the training split is written once as ``.npy`` files; each task memory-maps
  them by path. Nothing crosses the network, workers on one host share the page cache, and
  any task can be recomputed anywhere after a worker dies. Needs workers that see the
  client's files (same host, or a shared volume mounted at the same path).
* `InMemoryArrays`: the arrays travel by value. The caller broadcasts the object to every
  worker once (``parallel_config(backend="dask", scatter=[data])``); each worker process then
  copies it once into aligned memory (arrays deserialized from the network are unaligned,
  which makes BLAS up to 10x slower: dask/distributed issue 8985) and reuses that copy for every
  class.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
import scipy.sparse as sp

from distrib.config import LAYOUTS
from distrib.errors import ConfigError, DataError, OutputError
from distrib.files import atomic_path, write_json
from distrib.linear import softmax

if TYPE_CHECKING:  # dask.array stays out of the workers that only read prepared rows
    import dask.array as da

    from distrib.data.split import SplitArrays

AUTO_SPARSE_DENSITY = 0.25
_SPARSE_PARTS = ("data", "indices", "indptr")

Matrix: TypeAlias = np.ndarray | sp.csr_matrix


class TrainingData(Protocol):
    """What a training task receives: something that yields ``(X, y)`` on the worker."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def arrays(self) -> tuple[Matrix, np.ndarray]: ...

    def rows(self, start: int, stop: int) -> tuple[Matrix, np.ndarray]: ...

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


def _read_npy_range(path: Path, start: int, stop: int, dtype: Any = None) -> np.ndarray:
    """Rows ``start:stop`` (first axis) of a C-ordered ``.npy`` file, read into new memory;
    as ``dtype`` if given, converted a chunk at a time (no full copy in the file's type)."""
    header = _load(path)  # a map: only its shape, dtype and offset are used, no page is read
    row = int(np.prod(header.shape[1:], dtype=np.int64))
    offset = int(getattr(header, "offset", 0)) + start * row * header.dtype.itemsize
    count = (stop - start) * row
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


def _load(path: Path) -> np.ndarray:
    # np.save puts the data at a 64-byte-aligned offset, so the map is aligned.
    return np.load(path, mmap_mode="r", allow_pickle=False)


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
        names = ["X"] if self.layout == "dense" else [f"X_{p}" for p in _SPARSE_PARTS]
        return [os.path.join(self.folder, f"{name}.npy") for name in [*names, "y"]]

    def arrays(self) -> tuple[Matrix, np.ndarray]:
        folder = Path(self.folder)
        y = np.asarray(_load(folder / "y.npy"))
        if self.layout == "dense":
            return _load(folder / "X.npy"), y
        data, indices, indptr = (_load(folder / f"X_{p}.npy") for p in _SPARSE_PARTS)
        return sp.csr_matrix((data, indices, indptr), shape=self.shape, copy=False), y

    def rows(self, start: int, stop: int) -> tuple[Matrix, np.ndarray]:
        """Rows ``start:stop`` read from the files into fresh memory, as a block holds them.

        Read, not memory-mapped: only the copy counts in this process's memory (mapped pages
        of the file would count too while the copy is made).
        """
        folder = Path(self.folder)
        y = _read_npy_range(folder / "y.npy", start, stop)
        if self.layout == "dense":
            return _read_npy_range(folder / "X.npy", start, stop), y
        indptr = np.array(_load(folder / "X_indptr.npy")[start : stop + 1], dtype=np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        data = _read_npy_range(folder / "X_data.npy", lo, hi)
        # column indices straight into the block kernel's type (uint16 for MNIST)
        index = softmax.index_dtype(self.shape[1])
        indices = _read_npy_range(folder / "X_indices.npy", lo, hi, index)
        shape = (stop - start, self.shape[1])
        return softmax.block_csr(shape, data, indices, indptr - lo), y

    def weights(self, start: int, stop: int) -> np.ndarray | None:
        path = Path(self.folder) / "w.npy"
        if not path.exists():  # prepared splits carry none
            return None
        return np.array(_load(path)[start:stop], dtype=np.float64)

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

    def weights(self, start: int, stop: int) -> np.ndarray | None:
        return self.files.weights(start, stop)

    def row_block(self, start: int, stop: int) -> InMemoryArrays:
        """Rows ``start:stop`` read from the files, to be sent by value."""
        X, y = self.files.rows(start, stop)
        return InMemoryArrays(X, y, self.files.weights(start, stop))

    def describe(self) -> dict[str, Any]:
        return {"mode": "scatter", "layout": self.files.layout, "sent": "block by block"}


def write_in_memory(data: InMemoryArrays, folder: Path) -> ArrayFiles:
    """Write in-memory rows as `ArrayFiles` in ``folder`` (for workers that can open them)."""
    X = data.X
    layout = "sparse" if sp.issparse(X) else "dense"
    if layout == "sparse":
        csr = sp.csr_matrix(X)
        for part in _SPARSE_PARTS:
            _store_npy(folder / f"X_{part}.npy", np.ascontiguousarray(getattr(csr, part)))
    else:
        _store_npy(folder / "X.npy", np.ascontiguousarray(X))
    _store_npy(folder / "y.npy", np.asarray(data.y))
    if data.sample_weight is not None:
        _store_npy(folder / "w.npy", np.asarray(data.sample_weight, dtype=np.float64))
    return ArrayFiles(str(folder), data.shape, layout)


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


def prepared_folder(root: Path, key_parts: dict[str, Any]) -> Path:
    """A folder under ``root/prepared`` named by a digest of what the arrays derive from."""
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    return root / "prepared" / digest


def _store_npy(path: Path, array: da.Array | np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
        if isinstance(array, np.ndarray):
            out[...] = array
        else:  # a Dask array, a chunk at a time
            import dask.array as da

            da.store(array, out, lock=False, scheduler="threads")
        out.flush()
        del out


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
        X, y = files.arrays()
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
        write_json(folder / "key.json", {**key_parts, "layout": layout, "shape": list(shape)})
    except OSError as exc:
        raise OutputError(
            f"cannot write the prepared training arrays in {folder}: {exc}; "
            "point --data-home at a writable folder"
        ) from exc
    return ArrayFiles(str(folder), shape, layout)


def training_density(parts: SplitArrays, root: Path, key_parts: dict[str, Any]) -> float:
    """The share of non-zero training pixels, cached beside the prepared split (a grown
    training part: its first variant's, the data set's own rows)."""
    folder = prepared_folder(root, key_parts)
    density_path = folder / "density.json"
    try:
        return float(json.loads(density_path.read_text())["density"])
    except (OSError, ValueError, KeyError, TypeError):
        density = density_of(parts.X_train[: len(parts.split.train_index)])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(density_path, {"density": density})
    except OSError as exc:
        raise OutputError(
            f"cannot write the prepared training arrays in {folder}: {exc}; "
            "point --data-home at a writable folder"
        ) from exc
    return density


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
        name, train_key = "train", key_parts
        if parts.grow != 1:
            name, train_key = f"train-grow-{parts.grow}", {**key_parts, "grow": parts.grow}
        train = write_array_files(
            parts.X_train, parts.y_train, folder / chosen / name, train_key, chosen
        )
    test = write_array_files(
        parts.X_test, parts.y_test, folder / chosen / "test", key_parts, chosen
    )
    return train, test, density


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
