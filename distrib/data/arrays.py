"""Your own arrays as a data set: a ``.npz``, a folder of ``X.npy`` and ``y.npy``, or Zarr.

The arrays are read as chunked Dask arrays whose tasks open the file by path (any process
that sees the file can compute any chunk). Loading checks what can be checked before
training, each with a message that names the problem and the fix: the arrays are there,
``X`` is 2-D and numeric, ``y`` is 1-D whole-number labels of the same length, every value
of ``X`` is finite, and every class has enough rows to be both trained and tested. The
finiteness check is one pass over ``X``, a chunk at a time; the same pass gives the content
digest (which names the prepared split in the cache) and the largest absolute value (what
``scale="unit"`` divides by, as 255 for MNIST's pixels).
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from distrib.data.datasets import CHUNK_ROWS, Dataset, npy_as_dask
from distrib.errors import DataError

#: The share of rows held out for testing (scikit-learn's default).
TEST_FRACTION = 0.25
#: Rows each class needs: at least one to train on and one to test on.
MIN_ROWS_PER_CLASS = 2
FORMATS = "a .npz holding X and y, a folder holding X.npy and y.npy, or a Zarr group"


def load_arrays(path: str | os.PathLike[str], chunk_rows: int = CHUNK_ROWS) -> Dataset:
    """Your arrays at ``path`` as a `Dataset` (checked; the pixels stay lazy).

    Parameters
    ----------
    path : path
        A ``.npz`` file holding ``X`` and ``y``; a folder holding ``X.npy`` and ``y.npy``;
        or a Zarr group (a folder) with arrays ``X`` and ``y``.
    chunk_rows : int
        Rows per chunk of ``.npy`` and ``.npz`` arrays (Zarr keeps its own chunks).
    """
    path = Path(path).expanduser().resolve()  # tasks open it by path, from any folder
    if not path.exists():
        raise DataError(f"--data {path} does not exist: give {FORMATS}")
    if path.is_file() and path.suffix == ".npz":
        X, y = _npz_arrays(path, chunk_rows)
        files = [path]
    elif path.is_dir() and _is_zarr(path):
        X, y = _zarr_arrays(path)
        files = [path]
    elif path.is_dir():
        X, y = _npy_pair(path, chunk_rows)
        files = [path / "X.npy", path / "y.npy"]
    else:
        raise DataError(f"--data {path} is not {FORMATS}")
    return _checked(path, X, y, tuple(str(f) for f in files))


# --- formats -----------------------------------------------------------------------------


def _missing(path: Path, name: str, present: list[str]) -> DataError:
    shown = ", ".join(sorted(present)) or "nothing"
    return DataError(
        f"--data {path} has no array {name!r} (it holds {shown}): store the pixels as X and "
        "the labels as y"
    )


def _npy_pair(folder: Path, chunk_rows: int) -> tuple[da.Array, da.Array]:
    present = [p.name for p in folder.iterdir()]
    for name in ("X", "y"):
        if not (folder / f"{name}.npy").is_file():
            raise _missing(folder, f"{name}.npy", present)
    return tuple(_npy(folder / f"{n}.npy", chunk_rows) for n in ("X", "y"))  # type: ignore[return-value]


def _npy(path: Path, chunk_rows: int) -> da.Array:
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays need pickles
        raise DataError(f"{path} cannot be read as numbers ({exc}): save a numeric array") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is truncated or not a .npy file ({exc})") from exc
    if header.ndim == 0:
        raise DataError(f"{path} holds a single value, not an array")
    return npy_as_dask(path, chunk_rows)


def _npz_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], Any, bool, int]:
    """Shape, dtype, Fortran order and data offset of one ``.npy`` member."""
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(handle)
        return shape, dtype, fortran, handle.tell()


def read_npz_rows(path: str, member: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` (first axis) of one array in a ``.npz`` (a Dask task).

    Stored members are read from the offset; compressed ones are decompressed up to
    ``stop`` (zip seeks that way)."""
    with zipfile.ZipFile(path) as archive:
        shape, dtype, _, offset = _npz_header(archive, member)
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        with archive.open(member) as handle:
            handle.seek(offset + start * row)
            payload = handle.read((stop - start) * row)
    return np.frombuffer(payload, dtype=dtype).reshape((stop - start, *shape[1:])).copy()


def _npz_arrays(path: Path, chunk_rows: int) -> tuple[da.Array, da.Array]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"--data {path} is not a readable .npz ({exc})") from exc
    with archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        arrays = []
        for name in ("X", "y"):
            if name not in members:
                raise _missing(path, name, list(members))
            try:
                shape, dtype, fortran, _ = _npz_header(archive, members[name])
            except ValueError as exc:
                raise DataError(f"{path}: {name} is not a readable array ({exc})") from exc
            if dtype.hasobject:
                raise DataError(
                    f"{path}: {name} holds Python objects ({dtype}), not numbers: save a "
                    "numeric array"
                )
            if fortran and len(shape) > 1:
                raise DataError(
                    f"{path}: {name} is stored in Fortran order: save it with np.ascontiguousarray"
                )
            if not shape:
                raise DataError(f"{path}: {name} holds a single value, not an array")
            arrays.append(_npz_as_dask(str(path), members[name], shape, dtype, chunk_rows))
    return arrays[0], arrays[1]


def _npz_as_dask(
    path: str, member: str, shape: tuple[int, ...], dtype: Any, chunk_rows: int
) -> da.Array:
    n = shape[0]
    blocks = []
    for start in range(0, max(n, 1), chunk_rows):
        stop = min(start + chunk_rows, n)
        token = hashlib.sha1(f"{path}:{member}:{start}:{stop}".encode()).hexdigest()[:16]
        task = dask.delayed(read_npz_rows, pure=True)(
            path, member, start, stop, dask_key_name=f"read-npz-{token}"
        )
        blocks.append(da.from_delayed(task, shape=(stop - start, *shape[1:]), dtype=dtype))
    return da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]


def _is_zarr(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def _zarr_arrays(folder: Path) -> tuple[da.Array, da.Array]:
    try:
        import zarr
    except ImportError as exc:  # a declared dependency, but images may be built without it
        raise DataError(
            f"--data {folder} is a Zarr group, and the zarr package is missing: pip install zarr"
        ) from exc

    try:
        group = zarr.open_group(str(folder), mode="r")
    except Exception as exc:  # zarr raises several kinds for a folder that is not a group
        raise DataError(f"--data {folder} is not a readable Zarr group ({exc})") from exc
    present = list(group.array_keys())
    arrays = []
    for name in ("X", "y"):
        if name not in present:
            raise _missing(folder, name, present)
        dtype = np.dtype(getattr(group[name], "dtype", object))
        if dtype.hasobject or dtype.kind in "USV":
            raise DataError(f"{folder}: {name} holds {dtype}, not numbers: store a numeric array")
        arrays.append(da.from_zarr(str(folder), component=name))
    return arrays[0], arrays[1]


# --- checks ------------------------------------------------------------------------------


def _checked(path: Path, X: da.Array, y: da.Array, files: tuple[str, ...]) -> Dataset:
    if X.ndim != 2:
        raise DataError(
            f"--data {path}: X has shape {X.shape}; it must be 2-D, one row per sample "
            "(reshape images to (n_samples, height * width))"
        )
    if y.ndim != 1:
        raise DataError(f"--data {path}: y has shape {y.shape}; it must be 1-D, one label per row")
    if X.shape[0] != y.shape[0]:
        raise DataError(
            f"--data {path}: X has {X.shape[0]} rows but y has {y.shape[0]} labels: they must match"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"--data {path}: X has shape {X.shape}: it holds no data")
    for name, array in (("X", X), ("y", y)):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise DataError(f"--data {path}: {name} holds {array.dtype}, not numbers")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"--data {path}: X holds complex numbers ({X.dtype}): give real values")
    labels = _labels(path, y.compute(scheduler="threads"))
    X_sha256, largest = _scan(path, X)
    side = math.isqrt(int(X.shape[1]))
    image_shape = (side, side) if side * side == X.shape[1] else None
    return Dataset(
        name="data",
        X=X,
        y=da.from_array(labels, chunks=X.chunks[0]),
        image_shape=image_shape,
        pixel_max=largest if largest > 0 else 1.0,
        test_fraction=TEST_FRACTION,
        source=str(path),
        X_sha256=X_sha256,
        y_sha256=hashlib.sha256(labels.tobytes()).hexdigest(),
        files=files,
    )


def _labels(path: Path, y: np.ndarray) -> np.ndarray:
    """``y`` as whole-number labels, each class with enough rows."""
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)):
            raise DataError(
                f"--data {path}: y holds values that are not whole numbers (e.g. "
                f"{y[~np.isfinite(y) | (y != np.round(y))][:3].tolist()}): labels must be "
                "class numbers"
            )
        big = np.abs(y) > 2.0**53  # past this, floats are no longer every whole number
        if np.any(big):
            raise DataError(
                f"--data {path}: y holds labels too large to be told apart as class numbers "
                f"(e.g. {y[big][:3].tolist()}; beyond 2**53 a float skips whole numbers, and "
                "int64 ends at 2**63): number the classes 0, 1, 2, ..."
            )
        y = y.astype(np.int64)
    elif y.dtype == bool:
        y = y.astype(np.int64)
    classes, counts = np.unique(y, return_counts=True)
    few = {int(c): int(n) for c, n in zip(classes, counts, strict=True) if n < MIN_ROWS_PER_CLASS}
    if few:
        raise DataError(
            f"--data {path}: class(es) {few} (label: rows) have fewer than "
            f"{MIN_ROWS_PER_CLASS} rows; each class needs one to train on and one to test on: "
            "add rows of those classes or drop them"
        )
    return np.ascontiguousarray(y)


def _scan(path: Path, X: da.Array) -> tuple[str, float]:
    """One pass over ``X``, a chunk at a time: its sha256 (uint8/C-order bytes as MNIST's)
    and its largest absolute value; refuses a non-finite value, naming its row."""
    digest = hashlib.sha256()
    largest = 0.0
    start = 0
    X = X.rechunk({1: -1})
    for chunk in X.to_delayed().ravel():
        block = np.ascontiguousarray(dask.compute(chunk, scheduler="threads")[0])
        digest.update(block.data.cast("B"))
        if block.size:
            if np.issubdtype(block.dtype, np.floating):
                bad = ~np.isfinite(block)
                if bad.any():
                    row, column = np.argwhere(bad)[0]
                    raise DataError(
                        f"--data {path}: X[{start + row}, {column}] is {block[row, column]}: "
                        "every value must be finite (drop or impute those rows)"
                    )
            largest = max(largest, float(np.abs(block.astype(np.float64)).max()))
        start += len(block)
    return digest.hexdigest(), largest
