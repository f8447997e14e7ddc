"""Training rows kept on disk and read a piece at a time: the row store.

A fit whose rows do not fit in its workers' memory streams them: every pass over a block
reads the block's rows from these files a piece at a time, into two reused buffers (one
read ahead while the kernel runs on the other), so a worker holds a few pieces, never its
rows. Read, not memory-mapped: dask's memory limits count the mapped pages a process has
touched (its RSS), and would pause or kill a worker for what is only page cache.

The format is compact CSR, as little to read per pass as the rows allow:

===============  ==========================================================================
``values.bin``   uint8 codes into ``table.npy`` where the values take at most 256 distinct
                 floats (MNIST's pixels: 1 byte an entry instead of 4), else the floats
``table.npy``    the 256 floats the codes stand for (coded stores only)
``indices.bin``  column indices: uint16 up to 65,536 columns (2 bytes), else int32
``indptr.bin``   int64 row ends (``n_rows + 1``)
``y.bin``        the labels, in their own type (MNIST's: one byte)
``key.json``     shape, dtypes, what the rows derive from, and a CRC-32 per 4 MiB of each
                 file; written last: a store without it is incomplete
===============  ==========================================================================

The files are raw arrays in the machine's byte order (little-endian on x86-64; their dtypes
are in ``key.json``), written once a chunk of rows at a time. An entry costs 3 bytes on disk
and in the page cache for MNIST's pixels (float32 CSR with int32 indices: 8). Whoever reads
a range checks its bytes once per process (`distrib.parallel.checksums.verify_range`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distrib.errors import DataError
from distrib.files import storage_error, write_json
from distrib.linear import softmax
from distrib.parallel.checksums import check_csr, damaged, file_checksums, verify_range

#: The files of a store, besides ``table.npy`` and ``key.json``.
STORE_FILES = ("values", "indices", "indptr", "y")
#: Rows in a piece: a whole number of the kernel's parts (`softmax.PART_ROWS`), so a pass
#: read a piece at a time gives the bits of one pass over the rows held in memory. 32,768
#: MNIST rows are ~15 MB coded.
PIECE_ROWS = 16 * softmax.PART_ROWS
#: Most distinct values a coded store holds (its codes are one byte).
CODES = 256


class _NotCodable(Exception):
    """The rows take more than `CODES` distinct values."""


class _Coder:
    """Each value's one-byte code, the table growing as new values appear (codes never
    change once given, so the chunks written before stay right)."""

    def __init__(self, dtype: Any) -> None:
        self.table = np.zeros(CODES, dtype=dtype)
        self.count = 0
        self._keys = np.zeros(0, dtype=dtype)  # the known values, sorted
        self._codes = np.zeros(0, dtype=np.uint8)  # their codes

    def encode(self, values: np.ndarray) -> np.ndarray:
        if self.count:  # most chunks hold only known values: no sort of the chunk
            at = np.minimum(np.searchsorted(self._keys, values), self.count - 1)
            known = self._keys[at] == values
            if known.all():
                return self._codes[at]
            values_new = np.unique(values[~known])
        else:
            values_new = np.unique(values)
        new = np.setdiff1d(values_new, self._keys, assume_unique=True)
        if len(new):
            if self.count + len(new) > CODES:
                raise _NotCodable
            self.table[self.count : self.count + len(new)] = new
            self.count += len(new)
            order = np.argsort(self.table[: self.count], kind="stable")
            self._keys = self.table[: self.count][order]
            self._codes = order.astype(np.uint8)
        return self._codes[np.searchsorted(self._keys, values)]


def _csr(X: Any) -> Any:
    """Rows as CSR: dense rows in two compiled passes (`softmax.dense_to_csr`)."""
    if sp.issparse(X):
        return sp.csr_matrix(X)
    return softmax.dense_to_csr(np.ascontiguousarray(X))


def code_pixels(pixels: np.ndarray, table: np.ndarray) -> softmax.CodedCSR:
    """One-byte pixels (n_rows, n_features) as CSR rows whose codes are the pixels: the
    value of pixel ``p`` is ``table[p]`` (a chunk of a row store, made where the pixels
    are: a worker)."""
    csr = softmax.dense_to_csr(np.ascontiguousarray(pixels, dtype=np.uint8))
    return softmax.CodedCSR(csr.shape, csr.data, csr.indices, csr.indptr, table)


def _finite(values: np.ndarray, start: int, n_rows: int) -> None:
    if not np.all(np.isfinite(values)):
        raise DataError(
            f"rows {start}:{start + n_rows} of X hold NaN or infinity: remove or impute "
            "them before fit"
        )


@dataclass
class _Writer:
    """The raw files of a store being written, in a temporary folder."""

    folder: Path
    coder: _Coder | None
    dtype: Any
    index: Any
    handles: dict[str, Any] = field(default_factory=dict)
    nnz: int = 0
    n_rows: int = 0
    label: np.dtype[Any] | None = None  # the labels' type: the first chunk's

    def open(self) -> None:
        for name in STORE_FILES:
            self.handles[name] = open(self.folder / f"{name}.bin", "wb")  # noqa: SIM115
        self.handles["indptr"].write(np.zeros(1, dtype=np.int64).tobytes())

    def add(self, X: Any, y: np.ndarray) -> None:
        if isinstance(X, softmax.CodedCSR):  # codes into the store's table already
            csr: Any = X
            values = X.data
        else:
            csr = X if sp.issparse(X) and X.format == "csr" else _csr(X)
            values = np.asarray(csr.data)
            _finite(values, self.n_rows, csr.shape[0])
            if self.coder is not None:
                values = self.coder.encode(values.astype(self.dtype, copy=False))
            else:
                values = values.astype(self.dtype, copy=False)
        self.handles["values"].write(np.ascontiguousarray(values).tobytes())
        self.handles["indices"].write(np.ascontiguousarray(csr.indices, self.index).tobytes())
        ends = csr.indptr[1:].astype(np.int64) + self.nnz
        self.handles["indptr"].write(ends.tobytes())
        y = np.asarray(y)
        if self.label is None:
            self.label = y.dtype if y.dtype.kind in "iuf" else np.dtype(np.int64)
        if y.size and not np.array_equal(y.astype(self.label), y):
            raise DataError(f"labels of rows {self.n_rows}:{self.n_rows + len(y)} do not fit "
                            f"the {self.label} of the rows before them")  # fmt: skip
        self.handles["y"].write(np.ascontiguousarray(y, dtype=self.label).tobytes())
        self.nnz += len(values)
        self.n_rows += int(csr.shape[0])

    def close(self) -> None:
        for handle in self.handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self.handles.clear()


def write_row_store(
    chunks: Callable[[], Iterable[tuple[Any, np.ndarray]]],
    folder: str | os.PathLike[str],
    n_features: int,
    key_parts: dict[str, Any],
    dtype: Any = np.float32,
    progress: Callable[[int], None] | None = None,
    table: np.ndarray | None = None,
) -> RowStore:
    """Write rows, a chunk at a time, as a row store in ``folder`` (replaced whole).

    Parameters
    ----------
    chunks : callable
        Gives the consecutive chunks of rows (dense or sparse) and their integer labels,
        as an iterable of (X, y); called again if the values prove not codable.
    folder : path
        The store's folder; written beside it, then renamed into place.
    n_features : int
    key_parts : dict
        What the rows derive from, kept in ``key.json``.
    dtype : float32 or float64
        The values' precision (the table's, for a coded store).
    progress : callable, optional
        Called with the rows written so far after each chunk.
    table : ndarray of shape (256,), optional
        The chunks are `distrib.linear.softmax.CodedCSR` rows whose codes index this table
        (`code_pixels`): written as they are.

    Returns
    -------
    RowStore
        Coded (one-byte values) where the rows take at most 256 distinct values: the
        chunks are then read once; otherwise, found at the first chunk that exceeds them,
        the store is written anew with the floats (``chunks`` called again).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        if table is not None:
            return _write(chunks, folder, n_features, key_parts, table.dtype, table, progress)
        try:
            return _write(chunks, folder, n_features, key_parts, dtype, True, progress)
        except _NotCodable:
            return _write(chunks, folder, n_features, key_parts, dtype, False, progress)
    except OSError as exc:
        raise storage_error(
            "the row store", folder, exc, "free space there, or point --data-home elsewhere"
        ) from exc


def _write(
    chunks: Callable[[], Iterable[tuple[Any, np.ndarray]]],
    folder: Path,
    n_features: int,
    key_parts: dict[str, Any],
    dtype: Any,
    coded: bool | np.ndarray,
    progress: Callable[[int], None] | None,
) -> RowStore:
    """Write the store; ``coded``: encode the values (True), write the floats (False), or
    the chunks' codes into this table (an array)."""
    work = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    work.mkdir()
    index = softmax.index_dtype(n_features)
    table = coded if isinstance(coded, np.ndarray) else None
    coder = _Coder(dtype) if coded is True else None
    writer = _Writer(work, coder, np.dtype(dtype), np.dtype(index))
    try:
        writer.open()
        for X, y in chunks():
            if X.shape[1] != n_features:
                raise DataError(f"a chunk of {X.shape[1]} columns in a store of {n_features}")
            writer.add(X, np.asarray(y))
            if progress is not None:
                progress(writer.n_rows)
        writer.close()
        if writer.coder is not None:
            table = writer.coder.table
        if table is not None:
            np.save(work / "table.npy", np.ascontiguousarray(table))
        coded = table is not None
        names = [f"{name}.bin" for name in STORE_FILES]
        key = {
            **key_parts,
            "shape": [writer.n_rows, n_features],
            "nnz": writer.nnz,
            "dtypes": {
                "values": "uint8" if coded else np.dtype(dtype).name,
                "indices": np.dtype(index).name,
                "indptr": "int64",
                "y": (writer.label or np.dtype(np.int64)).name,
                "table": np.dtype(dtype).name if coded else None,
            },
            "checksums": {name: file_checksums(work / name) for name in names},
        }
        write_json(work / "key.json", key)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old.{uuid.uuid4().hex}")
            folder.rename(old)
            _remove(old)
        work.rename(folder)
    finally:
        for handle in writer.handles.values():
            handle.close()
        _remove(work)
    return RowStore(str(folder), (writer.n_rows, n_features))


def _remove(folder: Path) -> None:
    if folder.exists():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
        folder.rmdir()


def open_row_store(folder: str | os.PathLike[str]) -> RowStore | None:
    """The row store in ``folder`` if it is complete (its ``key.json`` written), else None."""
    try:
        key = json.loads((Path(folder) / "key.json").read_text())
        shape = (int(key["shape"][0]), int(key["shape"][1]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return RowStore(str(folder), shape)


# Per process: folder -> (key.json's mtime, its contents).
_KEYS: dict[str, tuple[int, dict[str, Any]]] = {}


@dataclass
class _Buffers:
    """One piece's arrays, reused from piece to piece (grown when a piece needs more)."""

    values: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    def fit(self, nnz: int, rows: int) -> None:
        if len(self.values) < nnz:
            self.values = np.empty(max(nnz, 2 * len(self.values)), self.values.dtype)
            self.indices = np.empty(len(self.values), self.indices.dtype)
        if len(self.indptr) < rows + 1:
            self.indptr = np.empty(rows + 1, np.int64)


@dataclass(frozen=True)
class PassReads:
    """What one pass read: its bytes, and the seconds the kernel waited for them."""

    bytes: int = 0
    wait: float = 0.0


@dataclass(frozen=True)
class RowStore:
    """Rows kept in a row store's files (see the module), opened by path.

    As `distrib.parallel.rows.TrainingData` it gives decoded rows (an in-memory fit on a
    store); a streamed block reads it a piece at a time (`pieces`).
    """

    folder: str
    shape: tuple[int, int]

    # -- the store's description ------------------------------------------------------------

    def key(self) -> dict[str, Any]:
        """``key.json``'s contents (read once per process while the file is unchanged)."""
        path = Path(self.folder) / "key.json"
        try:
            mtime = os.stat(path).st_mtime_ns
            known = _KEYS.get(self.folder)
            if known is None or known[0] != mtime:
                known = _KEYS[self.folder] = (mtime, json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise damaged(path, f"cannot be read ({exc})") from exc
        return known[1]

    def _path(self, name: str) -> Path:
        return Path(self.folder) / f"{name}.bin"

    def _dtype(self, name: str) -> np.dtype[Any]:
        return np.dtype(self.key()["dtypes"][name])

    @property
    def coded(self) -> bool:
        """The values are one-byte codes into the store's table."""
        return self.key()["dtypes"]["table"] is not None

    @property
    def dtype(self) -> np.dtype[Any]:
        """The precision of the rows' values (the table's, for a coded store)."""
        dtypes = self.key()["dtypes"]
        return np.dtype(dtypes["table"] or dtypes["values"])

    def table(self) -> np.ndarray:
        """The 256 values of a coded store's codes."""
        try:
            table = np.load(Path(self.folder) / "table.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise damaged(Path(self.folder) / "table.npy", f"cannot be read ({exc})") from exc
        if table.shape != (CODES,) or table.dtype != self.dtype:
            raise damaged(Path(self.folder) / "table.npy", "is not the store's table")
        return table

    def signature(self) -> tuple[tuple[int, int], ...]:
        """``(size, mtime_ns)`` of each file: changed files must be checked again."""
        stats = [os.stat(self._path(name)) for name in STORE_FILES]
        return tuple((st.st_size, st.st_mtime_ns) for st in stats)

    def digest(self) -> str:
        """A digest of the store's bytes (of its files' checksums, in ``key.json``): two
        stores with the same digest hold the same rows."""
        checksums = json.dumps(self.key()["checksums"], sort_keys=True).encode()
        return hashlib.sha256(checksums).hexdigest()[:16]

    def nbytes(self) -> int:
        """The bytes of its files on disk."""
        return sum(os.path.getsize(p) for p in Path(self.folder).iterdir())

    def paths(self) -> list[str]:
        """The files the workers must see to read the store."""
        names = [str(self._path(name)) for name in STORE_FILES]
        return names + ([os.path.join(self.folder, "table.npy")] if self.coded else [])

    # -- reading ------------------------------------------------------------------------------

    def _read(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Entries ``start:stop`` of file ``name`` (checked against its checksums once per
        process), into ``out`` if given."""
        dtype, path = self._dtype(name), self._path(name)
        size = dtype.itemsize
        verify_range(path, self.key()["checksums"][f"{name}.bin"], start * size, stop * size)
        count = stop - start
        array = np.empty(count, dtype) if out is None else out[:count]
        view = memoryview(array).cast("B")  # type: ignore[arg-type]
        with open(path, "rb", buffering=0) as handle:
            got = 0
            while got < len(view):
                n = os.preadv(handle.fileno(), [view[got:]], start * size + got)
                if not n:
                    raise damaged(path, f"ends before entry {stop:,}")
                got += n
        return array

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The labels of rows ``start:stop`` (default: every row's)."""
        return self._read("y", start, self.shape[0] if stop is None else stop)

    def _piece(
        self,
        start: int,
        stop: int,
        buffers: _Buffers | None = None,
        table: Any = None,
        check: bool = True,
    ) -> softmax.Rows:
        """Rows ``start:stop``: a `softmax.CodedCSR` (coded: ``table``, else the store's)
        or CSR of the values, in ``buffers`` if given (views of them), else in new arrays;
        their CSR structure checked unless ``check`` is False (checked before, unchanged)."""
        n_rows = stop - start
        if buffers is not None:
            buffers.fit(0, n_rows)
        indptr = self._read("indptr", start, stop + 1, None if buffers is None else buffers.indptr)
        lo, hi = int(indptr[0]), int(indptr[-1])
        if hi < lo:
            raise damaged(self._path("indptr"), "decreases")
        if buffers is not None:
            buffers.fit(hi - lo, n_rows)
        values = self._read("values", lo, hi, None if buffers is None else buffers.values)
        indices = self._read("indices", lo, hi, None if buffers is None else buffers.indices)
        if check:
            check_csr(indptr, indices, self.shape[1], self._path("indices"), first=lo)
        indptr = indptr - lo if buffers is None else np.subtract(indptr, lo, out=indptr)
        shape = (n_rows, self.shape[1])
        if self.coded:
            table = self.table() if table is None else table
            return softmax.CodedCSR(shape, values, indices, indptr, table)
        return softmax.block_csr(shape, values, indices, indptr)

    def pieces(
        self,
        start: int,
        stop: int,
        rows: int = PIECE_ROWS,
        reads: list[PassReads] | None = None,
        check: bool = True,
    ) -> Iterator[tuple[int, softmax.Rows]]:
        """Rows ``start:stop`` as consecutive pieces of ``rows`` rows: ``(first row,
        piece)``, each read while the caller works on the one before (two sets of buffers,
        reused: a piece is valid until the next but one is asked for). ``reads`` receives
        the bytes read and the seconds spent waiting for them; ``check``: check each
        piece's CSR structure (a pass over its column indices: ~15 % of a pass's time,
        needed once while the files are unchanged, `signature`)."""
        bounds = [(a, min(stop, a + rows)) for a in range(start, stop, rows)]
        if not bounds:
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="distrib-read-ahead")
        buffers = [self._new_buffers(), self._new_buffers()]
        table = self.table() if self.coded else None
        waited = 0.0
        try:
            first = (*bounds[0], buffers[0], table, check)
            ahead: Future[softmax.Rows] = pool.submit(self._piece, *first)
            for k, (a, _) in enumerate(bounds):
                t0 = time.perf_counter()
                piece = ahead.result()
                waited += time.perf_counter() - t0
                if k + 1 < len(bounds):
                    following = (*bounds[k + 1], buffers[(k + 1) % 2], table, check)
                    ahead = pool.submit(self._piece, *following)
                yield a, piece
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if reads is not None:
            reads.append(PassReads(self.bytes_of(start, stop), waited))

    def _new_buffers(self) -> _Buffers:
        values = np.empty(0, self._dtype("values"))
        return _Buffers(values, np.empty(0, self._dtype("indices")), np.empty(0, np.int64))

    def bytes_of(self, start: int, stop: int) -> int:
        """The bytes a pass over rows ``start:stop`` reads."""
        first, last = self._read("indptr", start, start + 1), self._read("indptr", stop, stop + 1)
        entries = int(last[0] - first[0])
        item = self._dtype("values").itemsize + self._dtype("indices").itemsize
        return entries * item + (stop - start + 1) * 8

    # -- as TrainingData (decoded rows, in memory) -------------------------------------------------

    def rows(self, start: int, stop: int) -> tuple[softmax.Rows, np.ndarray]:
        """Rows ``start:stop`` decoded into a float CSR matrix, and their labels."""
        piece = self._piece(start, stop)
        X = piece.decoded() if isinstance(piece, softmax.CodedCSR) else piece
        return X, self.labels(start, stop)

    def arrays(self) -> tuple[softmax.Rows, np.ndarray]:
        """All rows, decoded into memory (what a store is for is not to: `pieces`)."""
        return self.rows(0, self.shape[0])

    def weights(self, start: int, stop: int) -> np.ndarray | None:
        """None: the rows of a store weigh 1 each."""
        return None

    def describe(self) -> dict[str, Any]:
        key = self.key()
        return {"mode": "streamed", "folder": self.folder, "nnz": key["nnz"],
                "coded": self.coded}  # fmt: skip
