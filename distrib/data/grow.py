"""Grown data sets: K deterministic variants of every training image (issue 16).

Papers on distributed linear models grow MNIST to millions of images by deforming each one
(the "infinite MNIST" / mnist8m data). Here variant 0 of an image is the image itself and
variant ``k >= 1`` shifts it by up to `MAX_SHIFT` pixels (the pixels shifted out are lost,
those shifted in are 0): variants 1-8 by one pixel, 9-24 by two (`shift_of`). Which
shift within those: the next after a starting point drawn from the image's row in the
data set, so

* K = 1 is the data set exactly;
* the variants of one image are distinct shifts (K <= `distrib.config.MAX_GROW`), and
  every shift is used about equally across images;
* a variant depends only on the image, its data set row and ``k``: not on the chunking, the
  split's order, the machine or the worker that makes it.

The variants are made chunk by chunk by Dask tasks, wherever the chunks are computed: the
grown matrix exists only as its chunks.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from distrib.config import check_grow_count
from distrib.errors import ConfigError

MAX_SHIFT = 2
#: Every shift of at most `MAX_SHIFT` pixels each way but (0, 0), nearest first: the 8
#: shifts by one pixel (ring 1), then the 16 by two (ring 2).
SHIFTS: tuple[tuple[int, int], ...] = tuple(
    sorted(
        (
            (dy, dx)
            for dy in range(-MAX_SHIFT, MAX_SHIFT + 1)
            for dx in range(-MAX_SHIFT, MAX_SHIFT + 1)
            if (dy, dx) != (0, 0)
        ),
        key=lambda s: (max(abs(s[0]), abs(s[1])), s),
    )
)
#: Where each ring starts in `SHIFTS`, and how many shifts it holds.
RINGS = ((0, 8), (8, 16))


def check_grow(grow: int, image_shape: tuple[int, int] | None) -> None:
    """Refuse a growth factor the data cannot take."""
    check_grow_count(int(grow) if isinstance(grow, np.integer) else grow)
    if grow > 1 and image_shape is None:
        raise ConfigError(
            "grow > 1 shifts images, and these features do not form a square image: use grow 1"
        )


def _row_hash(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each data set row (splitmix64: neighbouring rows are unrelated)."""
    z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shift_of(rows: np.ndarray, variant: int) -> np.ndarray:
    """The index into `SHIFTS` of variant ``variant`` (>= 1) of each data set row.

    Variants 1-8 are the one-pixel shifts, 9-24 the two-pixel ones (the small ones first,
    so a small K stays close to the data set); within a ring each row starts at a shift
    of its own (from its hash) and takes the next ones in turn, so each shift is used
    about equally and a row never gets the same shift twice.
    """
    h = _row_hash(np.asarray(rows))
    ring = 0 if variant <= RINGS[0][1] else 1
    start, size = RINGS[ring]
    step = variant - 1 - start
    offset = (h >> np.uint64(8 * ring)) % np.uint64(size)  # other bits for each ring
    return (start + (offset.astype(np.int64) + step) % size).astype(np.int64)


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``images`` (n, height, width) moved ``dy`` rows down and ``dx`` columns right."""
    out = np.zeros_like(images)
    h, w = images.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def variant_block(
    pixels: np.ndarray, rows: np.ndarray, variant: int, image_shape: tuple[int, int]
) -> np.ndarray:
    """Variant ``variant`` of each image in ``pixels`` (n, height * width); ``rows`` are
    their rows in the data set (a Dask task: runs where the chunk is computed)."""
    rows = np.asarray(rows).reshape(-1)
    if variant == 0:
        return pixels
    images = np.asarray(pixels).reshape(len(rows), *image_shape)
    out = np.empty_like(images)
    which = shift_of(rows, variant)
    for index, (dy, dx) in enumerate(SHIFTS):
        mine = which == index
        if mine.any():
            out[mine] = _shift(images[mine], dy, dx)
    return out.reshape(pixels.shape)


def grow_rows(
    X: da.Array, rows: np.ndarray, grow: int, image_shape: tuple[int, int] | None
) -> da.Array:
    """``grow`` variants of every row of ``X`` (rows of images), variant by variant: rows
    ``k * n .. (k + 1) * n`` are variant ``k`` of ``X``'s ``n`` rows. ``rows`` are ``X``'s
    rows in the data set (they pick each image's shifts). Lazy: each chunk is made by its
    own task from the matching chunk of ``X``."""
    check_grow(grow, image_shape)
    if grow == 1 or image_shape is None:
        return X
    X = X.rechunk({1: -1})
    index = da.from_array(np.asarray(rows, dtype=np.int64)[:, None], chunks=(X.chunks[0], 1))
    variants = [X] + [
        da.map_blocks(
            variant_block,
            X,
            index,
            variant=k,
            image_shape=image_shape,
            dtype=X.dtype,
            name=f"distrib-variant-{k}-{X.name}",
        )
        for k in range(1, grow)
    ]
    return da.concatenate(variants, axis=0)
