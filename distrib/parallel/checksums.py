"""Checks that a prepared split is the one that was written, before any kernel reads it.

A prepared file carries a CRC-32 per 4 MiB of its bytes (`file_checksums`, kept in the
folder's ``key.json``). Whoever reads rows of it checks the chunks those rows lie in, once
per process (`verify_range`): a block load reads about its own rows' share of the files, a
one-vs-rest task or the driver the whole of them. CSR structure is checked too before a
kernel sees it (`check_csr`): the kernels run without bounds checks, so a damaged index
would crash a worker instead of failing the fit with a message. The cost: one CRC-32 pass
over the bytes read, once per process (the blocks are then kept in memory, and every later
pass over them costs nothing).
"""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

import numpy as np

from distrib.errors import DataError

#: Bytes covered by one checksum.
CHUNK_BYTES = 4 << 20

# Per process: (path, size, mtime) -> the chunks already found intact.
_VERIFIED: dict[tuple[str, int, int], set[int]] = {}
_LOCK = threading.Lock()


def file_checksums(path: str | os.PathLike[str]) -> list[int]:
    """The CRC-32 of each `CHUNK_BYTES` of the file."""
    sums = []
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            sums.append(zlib.crc32(chunk))
    return sums


def damaged(path: Path, what: str) -> DataError:
    """The error for a damaged prepared file: what is wrong, and how it is rebuilt."""
    folder = path.parent
    return DataError(
        f"the prepared split in {folder} is damaged: {path.name} {what}. Remove the folder "
        f"(rm -r {folder}) and run again: distrib prepares the split anew"
    )


def verify_range(path: Path, checksums: list[int], start: int, stop: int) -> None:
    """Check bytes ``start:stop`` of ``path`` against its ``checksums`` (whole chunks, each
    once per process); raises `DataError` naming the file and the fix."""
    stat = os.stat(path)
    if len(checksums) != -(-stat.st_size // CHUNK_BYTES):
        raise damaged(path, f"has {stat.st_size:,} bytes, not what was written")
    if stop <= start:
        return
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    wanted = range(start // CHUNK_BYTES, (stop - 1) // CHUNK_BYTES + 1)
    with _LOCK:
        todo = [k for k in wanted if k not in _VERIFIED.get(key, ())]
    if not todo:
        return
    with open(path, "rb", buffering=0) as fh:
        for k in todo:
            if zlib.crc32(os.pread(fh.fileno(), CHUNK_BYTES, k * CHUNK_BYTES)) != checksums[k]:
                first = k * CHUNK_BYTES
                raise damaged(path, f"bytes {first:,}..{first + CHUNK_BYTES:,} fail their checksum")
    with _LOCK:
        _VERIFIED.setdefault(key, set()).update(todo)


def check_csr(
    indptr: np.ndarray, indices: np.ndarray, n_features: int, path: Path, first: int = 0
) -> None:
    """Check CSR structure before a kernel reads it: ``indptr`` starts at ``first``, never
    decreases and ends at ``first + len(indices)``; every column index is in
    ``0..n_features - 1``. ``path``: the folder's indices file, named in the error."""
    if len(indptr) == 0 or indptr[0] != first or indptr[-1] != first + len(indices):
        raise damaged(path.with_name("X_indptr.npy"), "does not delimit the stored entries")
    if len(indptr) > 1 and np.any(np.diff(indptr) < 0):
        raise damaged(path.with_name("X_indptr.npy"), "decreases")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_features):
        raise damaged(path, f"holds a column index outside 0..{n_features - 1}")
