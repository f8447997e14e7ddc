"""Atomic file writes: a temp file in the same folder, then `os.replace`.

A reader never sees a half-written file: it sees the old one or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from distrib.errors import OutputError

#: errno values that mean the storage failed (full, read-only, broken, refused), not a peer.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``.

    On any exception the temp file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_with(
    path: str | os.PathLike[str], mode: str, write: Callable[[IO[Any]], object]
) -> None:
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    _write_with(path, "w", lambda fh: fh.write(text))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write raw bytes, atomically."""
    _write_with(path, "wb", lambda fh: fh.write(data))


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one array as ``.npy``, atomically."""
    _write_with(path, "wb", lambda fh: np.save(fh, array, allow_pickle=False))


def write_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Write named arrays as an uncompressed ``.npz``, atomically."""
    _write_with(path, "wb", lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file (errors are the caller's to translate)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the storage (a full or read-only disk...), as opposed
    to a connection's (which are OSErrors too)."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def storage_error(
    what: str, path: str | os.PathLike[str], exc: OSError, fix: str, needed: int | None = None
) -> OutputError:
    """One line for a write that failed: what, where, why, the space there and needed, and
    the fix."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    free = free_bytes(path)
    space = "" if free is None else f"; {free / 1e6:,.1f} MB free there"
    if needed is not None:
        space += f", ~{needed / 1e6:,.1f} MB needed"
    return OutputError(f"cannot write {what} {path}: {reason}{space}: {fix}")


def write_npy_chunks(path: str | os.PathLike[str], chunks: Iterator[np.ndarray], dtype: Any,
                     shape: tuple[int, ...], durable: bool = True) -> None:  # fmt: skip
    """Write a C-ordered ``.npy`` of ``shape`` from ``chunks`` (its rows, in order), with
    ordinary writes (a full disk is an OSError, never a signal as through a memory map),
    atomically; ``durable``: synced to the disk before it is renamed into place."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}  # fmt: skip
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as out:
        np.lib.format.write_array_header_2_0(out, header)
        for chunk in chunks:
            out.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
        out.flush()
        if durable:
            os.fsync(out.fileno())
