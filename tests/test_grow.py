"""Grown data: deterministic, distinct variants of each training image, made chunk by chunk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from sklearn.datasets import load_digits

from distrib.config import MAX_GROW
from distrib.data.arrays import load_arrays
from distrib.data.datasets import load_dataset, load_mnist
from distrib.data.grow import SHIFTS, check_grow, deform_images, grow_rows, shift_of
from distrib.data.split import split_arrays
from distrib.errors import ConfigError


def _row_hashes(X: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest() for row in X]


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved by (dy, dx), written out pixel by pixel (the slow, obvious way)."""
    out = np.zeros_like(image)
    h, w = image.shape
    for r in range(h):
        for c in range(w):
            if 0 <= r - dy < h and 0 <= c - dx < w:
                out[r, c] = image[r - dy, c - dx]
    return out


def test_grow_1_is_the_data_set_itself() -> None:
    dataset = load_dataset("digits")
    plain = split_arrays(dataset, "notebook", "raw")
    grown = split_arrays(dataset, "notebook", "raw", grow=1)
    np.testing.assert_array_equal(grown.X_train.compute(), plain.X_train.compute())
    np.testing.assert_array_equal(grown.y_train.compute(), plain.y_train.compute())


def test_variants_are_shifts_of_each_image_and_distinct() -> None:
    dataset = load_dataset("digits")
    K = 6
    parts = split_arrays(dataset, "notebook", "raw", grow=K)
    X = parts.X_train.compute()
    y = parts.y_train.compute()
    n = len(parts.split.train_index)
    assert X.shape == (K * n, 64)
    plain = load_digits().data[parts.split.train_index]
    np.testing.assert_array_equal(X[:n], plain)  # variant 0: the image itself
    np.testing.assert_array_equal(y, np.tile(y[:n], K))
    for k in range(1, K):
        which = shift_of(parts.split.train_index, k)
        for i in (0, 1, n // 2, n - 1):
            dy, dx = SHIFTS[which[i]]
            expected = _shifted(plain[i].reshape(8, 8), dy, dx).reshape(-1)
            np.testing.assert_array_equal(X[k * n + i], expected)
    hashes = np.array(_row_hashes(X)).reshape(K, n)
    for i in range(n):  # the K variants of every image are K different images
        assert len(set(hashes[:, i])) == K, f"image {i} has repeated variants"
    assert parts.X_test.shape == (450, 64)  # the test part is not grown


def test_variants_do_not_depend_on_the_chunking() -> None:
    X = load_digits().data.astype(np.uint8)
    rows = np.arange(len(X))[::-1].copy()
    a = grow_rows(da.from_array(X[rows], chunks=(100, -1)), rows, 4, (8, 8)).compute()
    b = grow_rows(da.from_array(X[rows], chunks=(333, 16)), rows, 4, (8, 8)).compute()
    np.testing.assert_array_equal(a, b)
    assert _row_hashes(a) == _row_hashes(b)


def test_one_variant_per_shift_and_the_image() -> None:
    assert len(SHIFTS) + 1 == MAX_GROW
    assert len(set(SHIFTS)) == len(SHIFTS)
    assert [max(abs(dy), abs(dx)) for dy, dx in SHIFTS] == [1] * 8 + [2] * 16


def test_small_shifts_first_and_each_used_about_equally() -> None:
    rows = np.arange(60_000)
    one_pixel = {shift_of(rows, k)[0] for k in range(1, 9)}
    assert {max(abs(dy), abs(dx)) for dy, dx in (SHIFTS[i] for i in one_pixel)} == {1}
    for variants, size in ((range(1, 9), 8), (range(9, 25), 16)):
        per_row = np.stack([shift_of(rows, k) for k in variants])
        assert all(len(set(per_row[:, i])) == size for i in range(0, 60_000, 997))
        for k in (variants[0], variants[-1]):
            counts = np.unique(shift_of(rows, k), return_counts=True)[1]
            assert len(counts) == size
            assert counts.min() > 0.9 * 60_000 / size and counts.max() < 1.1 * 60_000 / size


@pytest.mark.parametrize(
    ("grow", "shape", "message"),
    [
        (0, (8, 8), "grow must be a whole number >= 1"),
        (2.5, (8, 8), "grow must be a whole number >= 1"),
        (MAX_GROW + 1, (8, 8), f"at most {MAX_GROW} .*or --deform elastic for any number"),
        (2, None, "do not form a square image"),
    ],
)
def test_bad_growth_is_refused(grow: object, shape: tuple[int, int] | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_grow(grow, shape)  # type: ignore[arg-type]


def test_grown_mnist_is_lazy_and_its_known_hashes_hold(mnist_home: Path) -> None:
    """Grown MNIST is a graph of chunk tasks (nothing computed to build it); the first
    chunk of variant 2 hashes as it always has (a change in how variants are made shows)."""
    parts = split_arrays(load_mnist(mnist_home, fetch=False), "notebook", "unit", grow=3)
    assert parts.X_train.shape == (180_000, 784)
    assert max(parts.X_train.chunks[0]) <= 10_000
    chunk = parts.X_train[120_000:121_000].compute(scheduler="threads")
    digest = hashlib.sha256(chunk.tobytes()).hexdigest()
    again = parts.X_train[120_000:121_000].compute(scheduler="threads")
    assert hashlib.sha256(again.tobytes()).hexdigest() == digest
    assert digest == GROWN_MNIST_DIGEST


GROWN_MNIST_DIGEST = "2061404a5c54abb1ec87d1c89214d9a81f4cc5cd055b945760abe2f7f19cf8b9"


def _mnist_images(mnist_home: Path, n: int) -> np.ndarray:
    return np.array(np.load(mnist_home / "mnist" / "X.npy", mmap_mode="r")[:n]).reshape(n, 28, 28)


def test_elastic_variants_are_smooth_deformations_decided_by_row_and_variant(
    mnist_home: Path,
) -> None:
    images = _mnist_images(mnist_home, 200)
    rows = np.arange(1000, 1200)
    first = deform_images(images, rows, variant=3)
    assert first.dtype == np.uint8 and first.shape == images.shape
    # decided by (row, variant) alone: the same in any chunk, in any call
    assert np.array_equal(deform_images(images[50:60], rows[50:60], 3), first[50:60])
    assert np.array_equal(deform_images(images, rows, 3, seed=0), first)
    assert not np.array_equal(deform_images(images, rows, 4), first)
    assert not np.array_equal(deform_images(images, rows + 1, 3), first)
    assert not np.array_equal(deform_images(images, rows, 3, seed=1), first)
    # each image moved a little, not replaced: its ink's centre within a few pixels, its
    # ink about the same (a deformation stretches some strokes, squeezes others)
    grid = np.arange(28)

    def centre(x: np.ndarray) -> np.ndarray:
        mass = x.sum(axis=(1, 2)).astype(float)
        return np.stack([(x.sum(axis=2) * grid).sum(axis=1) / mass,
                         (x.sum(axis=1) * grid).sum(axis=1) / mass], axis=1)  # fmt: skip

    moved = np.linalg.norm(centre(first) - centre(images), axis=1)
    assert np.median(moved) < 1.5 and moved.max() < 4
    ink = first.reshape(200, -1).sum(axis=1) / images.reshape(200, -1).sum(axis=1)
    assert 0.9 < np.median(ink) < 1.1 and ink.min() > 0.5 and ink.max() < 2
    changed = (first != images).reshape(200, -1).mean(axis=1)
    assert changed.min() > 0.02


def test_elastic_growth_takes_any_count_but_one_byte_pixels_only(tmp_path: Path) -> None:
    check_grow(135, (28, 28), "elastic")  # mnist8m's: past the shifts' 25
    with pytest.raises(ConfigError, match="at most 25"):
        check_grow(135, (28, 28), "shift")
    digits = split_arrays(load_dataset("digits"), "notebook", "unit", grow=2, deform="elastic")
    assert digits.X_train.shape == (2 * 1347, 64)  # one-byte pixels: deformed
    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "floats.npz", X=X.astype(np.float32), y=y)
    floats = load_arrays(str(tmp_path / "floats.npz"))
    with pytest.raises(ConfigError, match="are float32: use --deform shift"):
        split_arrays(floats, "notebook", "unit", grow=2, deform="elastic")


def test_elastic_mnist_hashes_as_it_always_has(mnist_home: Path) -> None:
    """The first chunk of elastic variant 2 on MNIST's canonical split: a change in how the
    deformations are made (or a machine that makes other bits) shows here."""
    parts = split_arrays(load_mnist(mnist_home, fetch=False), "canonical", "unit", grow=3,
                         deform="elastic")  # fmt: skip
    assert parts.X_train.shape == (180_000, 784) and parts.pixels_train is not None
    chunk = parts.pixels_train[120_000:121_000].compute(scheduler="threads")
    assert np.array_equal(chunk, parts.pixels_train[120_000:121_000].compute(scheduler="threads"))
    assert hashlib.sha256(chunk.tobytes()).hexdigest() == ELASTIC_MNIST_DIGEST
    scaled = parts.X_train[120_000:121_000].compute(scheduler="threads")
    assert np.array_equal(parts.pixel_values[chunk], scaled)  # the table is the scaling


ELASTIC_MNIST_DIGEST = "b60e18203d54e1a8f78bbd25ab42486064f3cec6b3ee1936e52d86d24c3ea60f"
