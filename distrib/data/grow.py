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

``deform="elastic"`` makes infinite-MNIST-style variants instead, of any number: variant
``k >= 1`` of an image is an elastic deformation of it (a smooth random displacement field,
Simard, Steinkraus and Platt 2003, as Loosli, Canu and Bottou's infimnist makes mnist8m's)
plus a small translation, drawn from a counter-based hash of the image's data set row, ``k``
and the seed: any worker makes any chunk, with the same bits everywhere (`deform_images`).
"""

from __future__ import annotations

import dask.array as da
import numba
import numpy as np

from distrib.config import DEFORMS, check_grow_count
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


def check_grow(grow: int, image_shape: tuple[int, int] | None, deform: str = "shift") -> None:
    """Refuse a growth factor the data cannot take."""
    check_grow_count(int(grow) if isinstance(grow, np.integer) else grow, deform)
    if grow > 1 and image_shape is None:
        raise ConfigError(
            "grow > 1 deforms images, and these features do not form a square image: use grow 1"
        )


#: Control points of the displacement field per axis: the field is smooth between them.
FIELD_POINTS = 5
#: The displacement field's standard deviation, in pixels (per axis, averaged over the image).
ELASTIC_PIXELS = 1.2
#: The largest translation, in pixels (per axis, uniform).
MAX_TRANSLATION = 1.0
#: Draws per image: the field's control points (two axes) and the translation.
_DRAWS = 2 * FIELD_POINTS * FIELD_POINTS + 2


def field_basis(size: int, points: int = FIELD_POINTS) -> np.ndarray:
    """``(size, points)``: how much each control point moves each pixel row (or column).

    Gaussian weights of the control points (evenly spaced over the image; width their
    spacing), scaled so that a field of uniform [-1, 1] control points has a standard
    deviation of 1 pixel on average: a displacement field smoothed over ~7 pixels, as
    Simard et al.'s Gaussian-filtered uniform field with sigma 4-6.
    """
    centres = np.linspace(0, size - 1, points)
    spacing = centres[1] - centres[0]
    basis = np.exp(-0.5 * ((np.arange(size)[:, None] - centres[None, :]) / spacing) ** 2)
    # var of sum_gh A[y,g] A[x,h] U_gh with U uniform on [-1, 1]: (1/3) |A[y]|^2 |A[x]|^2
    mean_norm = float(np.mean(np.sum(basis**2, axis=1)))
    return basis * np.sqrt(np.sqrt(3.0) / mean_norm)


@numba.njit(cache=True, nogil=True)
def _uniform(seed, row, variant, draw):  # numba: unannotated
    """A uniform number in [-1, 1) decided by its four arguments (the seed's key, the
    image's data set row, the variant, the draw): splitmix64 of their mix."""
    z = seed ^ (np.uint64(row) * np.uint64(0x9E3779B97F4A7C15))
    z ^= np.uint64(variant) * np.uint64(0xD1B54A32D192ED03) + np.uint64(draw)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return float(z >> np.uint64(11)) * (2.0 / 9007199254740992.0) - 1.0


@numba.njit(cache=True, nogil=True)
def _deform(images, rows, variant, seed, basis, elastic, shift, out):  # numba: unannotated
    """Each of ``images`` (n, h, w, uint8) moved by its own smooth displacement field and
    translation, sampled bilinearly (0 outside the image), rounded into ``out``."""
    n, h, w = images.shape
    points = basis.shape[1]
    control = np.empty((2, points, points))
    partial = np.empty((2, points, w))
    for i in range(n):
        row = rows[i]
        k = 0
        for axis in range(2):
            for g in range(points):
                for c in range(points):
                    control[axis, g, c] = _uniform(seed, row, variant, k)
                    k += 1
        ty = shift * _uniform(seed, row, variant, k)
        tx = shift * _uniform(seed, row, variant, k + 1)
        for axis in range(2):  # the field's columns: control points x basis(x)
            for g in range(points):
                for x in range(w):
                    total = 0.0
                    for c in range(points):
                        total += control[axis, g, c] * basis[x, c]
                    partial[axis, g, x] = total
        for y in range(h):
            for x in range(w):
                dy = 0.0
                dx = 0.0
                for g in range(points):
                    dy += basis[y, g] * partial[0, g, x]
                    dx += basis[y, g] * partial[1, g, x]
                sy = y + elastic * dy + ty
                sx = x + elastic * dx + tx
                y0 = int(np.floor(sy))
                x0 = int(np.floor(sx))
                fy = sy - y0
                fx = sx - x0
                value = 0.0
                for oy in range(2):
                    yy = y0 + oy
                    if yy < 0 or yy >= h:
                        continue
                    wy = fy if oy else 1.0 - fy
                    for ox in range(2):
                        xx = x0 + ox
                        if xx < 0 or xx >= w:
                            continue
                        wx = fx if ox else 1.0 - fx
                        value += wy * wx * images[i, yy, xx]
                out[i, y, x] = min(255, max(0, int(value + 0.5)))


def deform_images(images: np.ndarray, rows: np.ndarray, variant: int, seed: int = 0) -> np.ndarray:
    """Elastic variant ``variant`` (>= 1) of each of ``images`` (n, height, width; uint8),
    ``rows`` their rows in the data set: a smooth random displacement field
    (`field_basis`, `ELASTIC_PIXELS`) and a translation (up to `MAX_TRANSLATION`), drawn
    from (``seed``, row, variant) alone, sampled bilinearly and rounded to whole pixels."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    out = np.empty_like(images)
    basis = field_basis(images.shape[1])
    if images.shape[1] != images.shape[2]:
        raise ConfigError(f"elastic deformations need square images, not {images.shape[1:]}")
    key = np.uint64(seed) * np.uint64(0x2545F4914F6CDD1D)
    _deform(images, rows, np.int64(variant), key, basis, ELASTIC_PIXELS, MAX_TRANSLATION, out)
    return out


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
    pixels: np.ndarray,
    rows: np.ndarray,
    variant: int,
    image_shape: tuple[int, int],
    deform: str = "shift",
) -> np.ndarray:
    """Variant ``variant`` of each image in ``pixels`` (n, height * width); ``rows`` are
    their rows in the data set (a Dask task: runs where the chunk is computed)."""
    rows = np.asarray(rows).reshape(-1)
    if variant == 0:
        return pixels
    images = np.asarray(pixels).reshape(len(rows), *image_shape)
    if deform == "elastic":
        if images.dtype != np.uint8:
            raise ConfigError(
                f"elastic deformations make one-byte pixels, and these are {images.dtype}: "
                "use --deform shift"
            )
        return deform_images(images, rows, variant).reshape(pixels.shape)
    out = np.empty_like(images)
    which = shift_of(rows, variant)
    for index, (dy, dx) in enumerate(SHIFTS):
        mine = which == index
        if mine.any():
            out[mine] = _shift(images[mine], dy, dx)
    return out.reshape(pixels.shape)


def grow_rows(
    X: da.Array,
    rows: np.ndarray,
    grow: int,
    image_shape: tuple[int, int] | None,
    deform: str = "shift",
) -> da.Array:
    """``grow`` variants of every row of ``X`` (rows of images), variant by variant: rows
    ``k * n .. (k + 1) * n`` are variant ``k`` of ``X``'s ``n`` rows. ``rows`` are ``X``'s
    rows in the data set (they pick each image's shifts or deformations); ``deform``:
    ``shift`` or ``elastic``. Lazy: each chunk is made by its own task from the matching
    chunk of ``X``."""
    if deform not in DEFORMS:
        raise ConfigError(f"unknown deform {deform!r}: expected one of {DEFORMS}")
    check_grow(grow, image_shape, deform)
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
            deform=deform,
            dtype=X.dtype,
            name=f"distrib-variant-{deform}-{k}-{X.name}",
        )
        for k in range(1, grow)
    ]
    return da.concatenate(variants, axis=0)
