"""What bounds the block kernel: each part of its pass timed alone, per non-zero entry.

`distrib.linear.softmax`'s pass does, per non-zero entry of a row, one vector multiply-add of
a row of ``W`` into the scores (loads only) and one read-modify-write of a row of ``G``
(the residuals times the entry); per row, the softmax. This script times loops that do only
one of those, on the full MNIST training matrix (float32 CSR, uint16 indices, as
`distrib train` stores it), one thread, with the kernel's own vector operations
(`_add_scaled`), round after round, interleaved:

* ``stream``: numpy's sums of the data and index arrays (the bytes every pass reads);
* ``scores``: the scores loop alone (two ``W`` vectors loaded and multiply-added per entry);
* ``gradient_16_lanes``: the gradient loop alone (two 8-float vectors of ``G`` loaded,
  multiply-added and stored per entry: 10 classes in 16 lanes, as the kernel);
* ``gradient_8_lanes``: the same with one vector (8 classes: one load, one store per entry);
* ``gradient_8_plus_2_lanes``: 10 classes as an 8-float and a 2-float vector, in two arrays
  (two narrower read-modify-writes per entry: does the width or the count of stores count?);
* ``rows_only``: the whole kernel on as many rows with no entries (softmax and per-row work);
* ``kernel``: the whole kernel (`loss_grad`).

Cycles are at /proc/cpuinfo's nominal clock.

    python scripts/kernel_limits.py --rounds 15 --out scripts/results/kernel-limits-2cores.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
from kernel_bench import clock_hz

from distrib.data.datasets import load_dataset
from distrib.data.split import split_arrays
from distrib.files import write_json
from distrib.linear.softmax import (
    _NON_NEGATIVE,
    _add_scaled,
    _aligned_zeros,
    _lane_buffer,
    _vectorize_across_lanes,
    block_csr,
    loss_grad,
    prepare,
)

_JIT = {"nogil": True, "boundscheck": False, "fastmath": {"contract"}}


def _scores(n_lanes: int) -> Callable[..., None]:
    @numba.njit(**_JIT)
    def scores(data, indices, indptr, W, out):  # type: ignore[no-untyped-def]
        even = numba.carray(_lane_buffer(W, n_lanes), n_lanes)
        odd = numba.carray(_lane_buffer(W, n_lanes), n_lanes)
        for i in range(indptr.shape[0] - 1):
            lo, hi = indptr[i] & _NON_NEGATIVE, indptr[i + 1] & _NON_NEGATIVE
            even[:] = 0
            odd[:] = 0
            for p in range(lo, hi - 1, 2):
                p &= _NON_NEGATIVE
                j, j2 = indices[p] & _NON_NEGATIVE, indices[p + 1] & _NON_NEGATIVE
                _add_scaled(even, 0, W, j * n_lanes, data[p], n_lanes)
                _add_scaled(odd, 0, W, j2 * n_lanes, data[p + 1], n_lanes)
            for k in range(n_lanes):
                out[k] += even[k] + odd[k]

    return scores


def _gradient(n_lanes: int, n_more: int = 0) -> Callable[..., None]:
    """The gradient loop over ``n_lanes`` classes in one array, and ``n_more`` in another
    (0: none)."""
    n_second = max(n_more, 1)

    @numba.njit(**_JIT)
    def gradient(data, indices, indptr, G, G_more, residual):  # type: ignore[no-untyped-def]
        lanes = numba.carray(_lane_buffer(G, n_lanes), n_lanes)
        more = numba.carray(_lane_buffer(G, n_second), n_second)
        for i in range(indptr.shape[0] - 1):
            lo, hi = indptr[i] & _NON_NEGATIVE, indptr[i + 1] & _NON_NEGATIVE
            for k in range(n_lanes):
                lanes[k] = residual[k] * (i & 7)
            for k in range(n_second):
                more[k] = residual[k] * (i & 7)
            for p in range(lo, hi):
                p &= _NON_NEGATIVE
                j = indices[p] & _NON_NEGATIVE
                _add_scaled(G, j * n_lanes, lanes, 0, data[p], n_lanes)
                if n_more:
                    _add_scaled(G_more, j * n_second, more, 0, data[p], n_second)

    return gradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="kernel-limits.json")
    args = parser.parse_args()

    parts = split_arrays(load_dataset("mnist"), "notebook", "unit")
    X: Any = prepare(sp.csr_matrix(parts.X_train.compute(scheduler="threads")))
    codes = parts.y_train.compute(scheduler="threads").astype(np.intp)
    n_rows, n_features = X.shape
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(10, n_features)) * 0.01, rng.normal(size=10) * 0.1
    empty = block_csr(
        X.shape, X.data[:0], X.indices[:0], np.zeros(n_rows + 1, dtype=X.indptr.dtype)
    )

    def lanes(n: int) -> np.ndarray:
        array = _aligned_zeros((n_features * n,), np.float32)
        array[:] = 1e-3
        return array

    entries = (X.data, X.indices, X.indptr)
    out, residual = np.zeros(16, np.float32), np.ones(16, np.float32)
    kernels = {
        "scores": (_scores(16), (*entries, lanes(16), out)),
        "gradient_16_lanes": (_gradient(16), (*entries, lanes(16), lanes(1), residual)),
        "gradient_8_lanes": (_gradient(8), (*entries, lanes(8), lanes(1), residual)),
        "gradient_8_plus_2_lanes": (_gradient(8, 2), (*entries, lanes(8), lanes(2), residual)),
    }
    methods: dict[str, Callable[[], Any]] = {
        "stream": lambda: (X.data.sum(), X.indices.sum()),
        **{name: (lambda k=k, a=a: k(*a)) for name, (k, a) in kernels.items()},
        "rows_only": lambda: loss_grad(empty, codes, coef, intercept),
        "kernel": lambda: loss_grad(X, codes, coef, intercept),
    }
    with _vectorize_across_lanes():  # as the kernel is compiled
        for method in methods.values():
            method()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            started = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - started)
    clock = clock_hz()
    medians = {name: float(np.median(t)) for name, t in times.items()}
    report = {
        "rows": n_rows,
        "nnz": int(X.nnz),
        "clock_hz": clock,
        "rounds": args.rounds,
        "median_ms": {name: s * 1e3 for name, s in medians.items()},
        "cycles_per_nonzero": {name: s / X.nnz * clock for name, s in medians.items()}
        if clock
        else None,
        "stream_gb_per_s": (X.data.nbytes + X.indices.nbytes) / medians["stream"] / 1e9,
        "parts_sum_ms": (medians["scores"] + medians["gradient_16_lanes"] + medians["rows_only"])
        * 1e3,
        "seconds": times,
    }
    for name, seconds in medians.items():
        cycles = f", {seconds / X.nnz * clock:.2f} cycles per non-zero" if clock else ""
        print(f"{name}: {seconds * 1e3:.1f} ms{cycles}")
    print(
        f"scores + gradient + rows alone: {report['parts_sum_ms']:.1f} ms; "
        f"the kernel: {medians['kernel'] * 1e3:.1f} ms"
    )
    out_path = Path(args.out)
    write_json(out_path, report)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
