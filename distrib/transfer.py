"""How the training arrays reach the workers.

Two ways, chosen per run (DESIGN.md section 1):

* `ArrayFiles`: the training split is written once as ``.npy`` files; each task memory-maps
  them by path. Nothing crosses the network, workers on one host share the page cache, and
  any task can be recomputed anywhere after a worker dies. Needs workers that see the
  client's files (same host, or a shared volume mounted at the same path).
* `InMemoryArrays`: the arrays travel by value. The caller broadcasts the object to every
  worker once (``parallel_config(backend="dask", scatter=[data])``); each worker process then
  copies it once into aligned memory (arrays deserialized from the network are unaligned,
  which makes BLAS up to 10x slower, DESIGN.md section 3) and reuses that copy for every class.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dask.array as da
import numpy as np

from distrib.errors import DataError, OutputError
from distrib.files import atomic_path

TRANSFER_MODES = ("auto", "path", "scatter")


class TrainingData(Protocol):
    """What a binary-fit task receives: something that yields ``(X, y)`` on the worker."""

    def arrays(self) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


def file_signature(path: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a file, or None where this process cannot see it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ArrayFiles:
    """Training arrays stored as ``.npy`` files that tasks open by path (memory-mapped)."""

    x_path: str
    y_path: str
    shape: tuple[int, int]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # np.save puts the data at a 64-byte-aligned offset, so the map is aligned.
        X = np.load(self.x_path, mmap_mode="r", allow_pickle=False)
        y = np.load(self.y_path, mmap_mode="r", allow_pickle=False)
        return X, np.asarray(y)

    def signatures(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        return file_signature(self.x_path), file_signature(self.y_path)

    def describe(self) -> dict[str, Any]:
        return {"mode": "path", "X": self.x_path, "y": self.y_path, "shape": list(self.shape)}


# Per worker process: token -> aligned (X, y). One entry per job; released at the job's end.
_ALIGNED: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_ALIGNED_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class InMemoryArrays:
    """Training arrays sent by value; aligned once per worker process and job."""

    X: np.ndarray
    y: np.ndarray
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        with _ALIGNED_LOCK:
            cached = _ALIGNED.get(self.token)
            if cached is None:
                cached = (
                    np.require(self.X, requirements=("A", "C")),
                    np.require(self.y, requirements=("A", "C")),
                )
                _ALIGNED.clear()  # a new job: drop any earlier job's copy
                _ALIGNED[self.token] = cached
        return cached

    def describe(self) -> dict[str, Any]:
        return {"mode": "scatter", "shape": list(self.X.shape), "nbytes": int(self.X.nbytes)}


def release_aligned(token: str) -> bool:
    """Drop this process's aligned copy of job ``token`` (run on every worker at job end)."""
    with _ALIGNED_LOCK:
        return _ALIGNED.pop(token, None) is not None


def prepared_folder(root: Path, key_parts: dict[str, Any]) -> Path:
    """A folder under ``root/prepared`` named by a digest of what the arrays derive from."""
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    return root / "prepared" / digest


def _readable_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return array.shape == shape and array.dtype == dtype


def _store_npy(path: Path, array: da.Array) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
        da.store(array, out, lock=False, scheduler="threads")
        out.flush()
        del out


def write_array_files(
    X: da.Array, y: da.Array, folder: Path, key_parts: dict[str, Any]
) -> ArrayFiles:
    """Compute the training split once into ``folder`` (reused while valid).

    Parameters
    ----------
    X, y : dask.array.Array
        The training pixels (float32) and labels.
    folder : Path
        Where to write; its name should derive from ``key_parts``.
    key_parts : dict
        What the arrays derive from, written beside them as ``key.json``.
    """
    shape = (int(X.shape[0]), int(X.shape[1]))
    x_path, y_path = folder / "X_train.npy", folder / "y_train.npy"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not _readable_npy(x_path, shape, X.dtype):
            _store_npy(x_path, X)
        if not _readable_npy(y_path, shape[:1], y.dtype):
            _store_npy(y_path, y)
        key_path = folder / "key.json"
        if not key_path.exists():
            with atomic_path(key_path) as tmp:
                tmp.write_text(json.dumps(key_parts, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise OutputError(
            f"cannot write the prepared training arrays in {folder}: {exc}; "
            "point --data-home at a writable folder"
        ) from exc
    return ArrayFiles(str(x_path), str(y_path), shape)


def load_in_memory(files: ArrayFiles) -> InMemoryArrays:
    """Read prepared files fully into memory, to be sent by value."""
    try:
        X = np.load(files.x_path, allow_pickle=False)
        y = np.load(files.y_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the prepared training arrays {files.x_path}: {exc}") from exc
    return InMemoryArrays(X, y)
