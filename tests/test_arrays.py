"""`--data`: your own arrays as .npz, a folder of X.npy + y.npy, or Zarr; and bad input."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from sklearn.datasets import load_digits

from distrib.data.arrays import load_arrays, read_npz_rows
from distrib.data.datasets import load_dataset
from distrib.data.split import split_arrays
from distrib.errors import DataError


@pytest.fixture(scope="module")
def digits_xy() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def _write(fmt: str, folder: Path, X: np.ndarray, y: np.ndarray) -> Path:
    if fmt == "npz":
        np.savez(folder / "d.npz", X=X, y=y)
        return folder / "d.npz"
    if fmt == "npz-compressed":
        np.savez_compressed(folder / "d.npz", X=X, y=y)
        return folder / "d.npz"
    if fmt == "npy-pair":
        (folder / "pair").mkdir()
        np.save(folder / "pair" / "X.npy", X)
        np.save(folder / "pair" / "y.npy", y)
        return folder / "pair"
    group = zarr.open_group(str(folder / "d.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(500, X.shape[1]))
    group.create_array("y", data=y, chunks=(500,))
    return folder / "d.zarr"


FORMATS = ["npz", "npz-compressed", "npy-pair", "zarr"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_back_the_arrays_in_chunks(
    fmt: str, tmp_path: Path, digits_xy: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = digits_xy
    dataset = load_arrays(_write(fmt, tmp_path, X, y), chunk_rows=400)
    if fmt != "zarr":
        assert dataset.X.chunks[0] == (400, 400, 400, 400, 197)
    np.testing.assert_array_equal(dataset.X.compute(), X)
    np.testing.assert_array_equal(dataset.y.compute(), y)
    assert dataset.X_sha256 == hashlib.sha256(X.tobytes()).hexdigest()
    assert dataset.image_shape == (8, 8)  # 64 features: a square image
    assert dataset.pixel_max == 16.0  # the largest value: what "unit" divides by
    assert dataset.test_fraction == 0.25
    assert dataset.files and all(Path(f).exists() for f in dataset.files)


def test_own_digits_split_like_the_builtin_digits(
    tmp_path: Path, digits_xy: tuple[np.ndarray, np.ndarray]
) -> None:
    """The same arrays through --data give the notebook's split and scaling of the digits."""
    X, y = digits_xy
    own = split_arrays(load_arrays(_write("npz", tmp_path, X, y)), "notebook", "unit")
    builtin = split_arrays(load_dataset("digits"), "notebook", "unit")
    for name in ("X_train", "X_test", "y_train", "y_test"):
        np.testing.assert_array_equal(
            getattr(own, name).compute(), getattr(builtin, name).compute()
        )


def test_features_that_are_not_a_square_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 10))
    y = np.repeat([0, 1, 2], 20)
    dataset = load_arrays(_write("npz", tmp_path, X, y))
    assert dataset.image_shape is None
    assert dataset.pixel_max == pytest.approx(np.abs(X).max())


def test_npz_rows_read_a_slice_of_a_compressed_member(tmp_path: Path) -> None:
    X = np.arange(1000 * 7, dtype=np.int32).reshape(1000, 7)
    np.savez_compressed(tmp_path / "a.npz", X=X, y=np.zeros(1000))
    np.testing.assert_array_equal(
        read_npz_rows(str(tmp_path / "a.npz"), "X.npy", 250, 260), X[250:260]
    )


def _bad(tmp_path: Path, name: str) -> Path:
    """One bad input per name, written for real."""
    X = np.random.default_rng(0).random((40, 16)).astype(np.float32)
    y = np.repeat(np.arange(4), 10)
    if name == "missing file":
        return tmp_path / "nowhere.npz"
    if name == "no X":
        np.savez(tmp_path / "d.npz", pixels=X, y=y)
    elif name == "no y in folder":
        np.save(tmp_path / "X.npy", X)
        return tmp_path
    elif name == "no y in zarr":
        zarr.open_group(str(tmp_path / "d.zarr"), mode="w").create_array("X", data=X)
        return tmp_path / "d.zarr"
    elif name == "X 3-D":
        np.savez(tmp_path / "d.npz", X=X.reshape(40, 4, 4), y=y)
    elif name == "y 2-D":
        np.savez(tmp_path / "d.npz", X=X, y=y.reshape(20, 2))
    elif name == "lengths differ":
        np.savez(tmp_path / "d.npz", X=X, y=y[:-1])
    elif name == "X text":
        np.savez(tmp_path / "d.npz", X=X.astype(str), y=y)
    elif name == "X objects":
        objects = np.empty(X.shape, dtype=object)
        objects[...] = 1.0
        np.savez(tmp_path / "d.npz", X=objects, y=y)
    elif name == "NaN in X":
        X[17, 3] = np.nan
        np.savez(tmp_path / "d.npz", X=X, y=y)
    elif name == "inf in X":
        X[33, 0] = np.inf
        np.savez(tmp_path / "d.npz", X=X, y=y)
    elif name == "fractional labels":
        np.savez(tmp_path / "d.npz", X=X, y=y + 0.5)
    elif name == "labels past int64":  # were merged into 2 classes without a word
        np.savez(tmp_path / "d.npz", X=X, y=np.array([0.0, 1e300, 2e300, 3e300])[y % 4])
    elif name == "one row of a class":
        y[0] = 9
        np.savez(tmp_path / "d.npz", X=X, y=y)
    elif name == "not an archive":
        (tmp_path / "d.npz").write_text("not a zip")
    elif name == "a plain file":
        (tmp_path / "d.csv").write_text("1,2\n")
        return tmp_path / "d.csv"
    return tmp_path / "d.npz"


BAD_INPUT = {
    "missing file": "does not exist",
    "no X": r"has no array 'X' \(it holds pixels, y\)",
    "no y in folder": r"has no array 'y.npy'",
    "no y in zarr": r"has no array 'y' \(it holds X\)",
    "X 3-D": r"X has shape \(40, 4, 4\); it must be 2-D",
    "y 2-D": r"y has shape \(20, 2\); it must be 1-D",
    "lengths differ": "X has 40 rows but y has 39 labels",
    "X text": "X holds <U32, not numbers",
    "X objects": "X holds Python objects",
    "NaN in X": r"X\[17, 3\] is nan: every value must be finite",
    "inf in X": r"X\[33, 0\] is inf: every value must be finite",
    "fractional labels": "not whole numbers",
    "labels past int64": r"labels too large to be told apart .* number the classes 0, 1, 2",
    "one row of a class": r"class\(es\) \{9: 1\}.*fewer than 2 rows",
    "not an archive": "is not a readable .npz",
    "a plain file": r"is not a \.npz holding X and y",
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_refused_with_a_message(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=BAD_INPUT[name]):
        load_arrays(_bad(tmp_path, name))


def test_bad_input_through_the_cli_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    bad = _bad(tmp_path, "NaN in X")
    out = tmp_path / "run"
    done = run_cli("train", "--data", str(bad), "--out", str(out), timeout=120)
    assert done.returncode == 1
    assert "Error: --data" in done.stderr and "X[17, 3] is nan" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_a_corrupt_member_is_named(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("X.npy", b"\x93NUMPY garbage")
        archive.writestr("y.npy", b"")
    with pytest.raises(DataError, match="X is not a readable array"):
        load_arrays(tmp_path / "d.npz")
