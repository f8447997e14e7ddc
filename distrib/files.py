"""Atomic file writes: a temp file in the same folder, then `os.replace`.

A reader never sees a half-written file: it sees the old one or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


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
