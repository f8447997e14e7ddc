"""The block kernel against scikit-learn's own loss and gradient, interleaved in one process.

One evaluation of the multinomial loss and gradient at the same coefficients, on the full
MNIST training matrix (notebook split, float32 CSR, as `distrib train` stores it), one
thread each:

* ``sklearn``: scikit-learn's ``LinearModelLoss(HalfMultinomialLoss).loss_gradient`` on all
  rows (what its lbfgs calls once per evaluation);
* ``scipy``: ``X @ W`` then ``X.T @ R`` in float32 with the softmax in numpy between them
  (distrib's block computation before the kernel);
* ``kernel``: `distrib.linear.softmax.loss_grad` on all rows, and on half of them (one block of a
  2-worker fit);
* ``grown``: the kernel on a block of ``--grown-rows`` rows (480,000: one worker's block of a
  2-worker ``--grow 16`` fit) of MNIST grown by shifted copies (`distrib.data.grow`), against
  the 30,000-row block per row;
* ``two_at_once``: two threads, each evaluating its own block at the same time (the kernel
  releases the GIL), as two workers on two cores do: the two halves of MNIST, and two grown
  blocks; per row of one block, against one block alone.

The methods are run in turn, round after round, so a machine whose speed drifts (shared
hosts do) affects them alike; medians per method and their ratios go to a JSON file.

    python scripts/kernel_bench.py --rounds 30 --out scripts/results/kernel-2cores.json
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn._loss.loss import HalfMultinomialLoss
from sklearn.linear_model._linear_loss import LinearModelLoss
from threadpoolctl import threadpool_limits

from distrib.data.datasets import load_dataset
from distrib.data.split import split_arrays
from distrib.files import write_json
from distrib.linear.softmax import block_csr, loss_grad, prepare


def _scipy_loss_grad(X, codes, coef, intercept):  # type: ignore[no-untyped-def]
    rows = np.arange(len(codes))
    scores = np.asarray(X @ coef.T.astype(np.float32), dtype=np.float64) + intercept
    scores -= scores.max(axis=1, keepdims=True)
    expd = np.exp(scores)
    total = expd.sum(axis=1)
    loss = float(np.sum(np.log(total) - scores[rows, codes]))
    residual = expd / total[:, None]
    residual[rows, codes] -= 1.0
    grad = np.asarray(X.T @ residual.astype(np.float32), dtype=np.float64).T
    return loss, grad


def _grown_block(start: int, stop: int, grow: int, step: int = 60_000) -> sp.csr_matrix:
    """Rows ``start:stop`` of the MNIST training part grown ``grow`` times, as the prepared
    CSR block a worker holds, made ``step`` dense rows at a time."""
    X = split_arrays(load_dataset("mnist"), "notebook", "unit", grow=grow).X_train
    pieces: list[Any] = [
        prepare(np.asarray(X[lo : min(lo + step, stop)].compute(scheduler="threads")))
        for lo in range(start, stop, step)
    ]
    indptr = [np.zeros(1, dtype=np.int64)]
    for piece in pieces:
        indptr.append(piece.indptr[1:] + indptr[-1][-1])
    return block_csr(
        (stop - start, X.shape[1]),
        np.concatenate([piece.data for piece in pieces]),
        np.concatenate([piece.indices for piece in pieces]),
        np.concatenate(indptr),
    )


def clock_hz() -> float | None:
    """The nominal clock from /proc/cpuinfo (Linux), else None."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) * 1e6
    except (OSError, ValueError):
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default="kernel.json")
    parser.add_argument(
        "--grown-rows",
        type=int,
        default=480_000,
        help="rows of each grown block (0: no grown blocks; default 480,000)",
    )
    args = parser.parse_args()

    parts = split_arrays(load_dataset("mnist"), "notebook", "unit")
    X = prepare(sp.csr_matrix(parts.X_train.compute(scheduler="threads")))
    codes = parts.y_train.compute(scheduler="threads").astype(np.intp)
    half = X.shape[0] // 2
    X_half = prepare(X[:half])
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(10, 784)) * 0.01, rng.normal(size=10) * 0.1
    theirs = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=10), fit_intercept=True)
    packed = np.hstack([coef, intercept[:, None]])
    y_float = codes.astype(X.dtype)  # as scikit-learn passes it for float32 X

    X_other = prepare(X[half : 2 * half])
    pool = ThreadPoolExecutor(2)

    def at_once(*blocks: tuple[sp.csr_matrix, np.ndarray]) -> None:
        for future in [pool.submit(loss_grad, b, c, coef, intercept) for b, c in blocks]:
            future.result()

    methods = {
        "sklearn_all_rows": lambda: theirs.loss_gradient(packed, X, y_float),
        "scipy_all_rows": lambda: _scipy_loss_grad(X, codes, coef, intercept),
        "kernel_all_rows": lambda: loss_grad(X, codes, coef, intercept),
        "kernel_half_rows": lambda: loss_grad(X_half, codes[:half], coef, intercept),
        "two_at_once_half_rows": lambda: at_once(
            (X_half, codes[:half]), (X_other, codes[half : 2 * half])
        ),
    }
    grown_rows = args.grown_rows
    if grown_rows:
        print(f"growing MNIST: two blocks of {grown_rows:,} rows ...", flush=True)
        grow = -(-2 * grown_rows // X.shape[0])
        grown = _grown_block(0, grown_rows, grow)
        grown_other = _grown_block(grown_rows, 2 * grown_rows, grow)
        grown_codes = np.resize(codes, 2 * grown_rows)  # variant-major: the labels repeat
        first, second = (grown, grown_codes[:grown_rows]), (grown_other, grown_codes[grown_rows:])
        methods["kernel_grown_block"] = lambda: loss_grad(*first, coef, intercept)
        methods["two_at_once_grown_blocks"] = lambda: at_once(first, second)
    times: dict[str, list[float]] = {name: [] for name in methods}
    with threadpool_limits(limits=1):
        for method in methods.values():
            method()  # warm-up (and the kernel's compile or cache load)
        for _ in range(args.rounds):
            for name, method in methods.items():
                started = time.perf_counter()
                method()
                times[name].append(time.perf_counter() - started)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    per_row_us = {
        "half_rows": medians["kernel_half_rows"] / half * 1e6,
        "two_at_once_half_rows": medians["two_at_once_half_rows"] / half * 1e6,
    }
    if grown_rows:
        per_row_us["grown_block"] = medians["kernel_grown_block"] / grown_rows * 1e6
        per_row_us["two_at_once_grown_blocks"] = (
            medians["two_at_once_grown_blocks"] / grown_rows * 1e6
        )
    per_nonzero = medians["kernel_all_rows"] / X.nnz
    clock = clock_hz()
    report = {
        "rows": int(X.shape[0]),
        "nnz": int(X.nnz),
        "kernel_ns_per_nonzero": per_nonzero * 1e9,
        "clock_hz": clock,  # /proc/cpuinfo's "cpu MHz": the nominal clock, not a boost
        "kernel_cycles_per_nonzero": per_nonzero * clock if clock else None,
        "rounds": args.rounds,
        "median_seconds": medians,
        "kernel_over_sklearn_all_rows": medians["kernel_all_rows"] / medians["sklearn_all_rows"],
        "kernel_over_scipy_all_rows": medians["kernel_all_rows"] / medians["scipy_all_rows"],
        "half_block_over_sklearn_evaluation": medians["kernel_half_rows"]
        / medians["sklearn_all_rows"],
        "grown_rows": grown_rows,
        "nonzeros_per_row": {"half_rows": X_half.nnz / half}
        | ({"grown_block": grown.nnz / grown_rows} if grown_rows else {}),
        "per_row_us": per_row_us,
        "seconds": times,
    }
    if grown_rows:
        report["grown_over_half_block_per_row"] = (
            per_row_us["grown_block"] / per_row_us["half_rows"]
        )
        report["grown_over_half_block_per_row_two_at_once"] = (
            per_row_us["two_at_once_grown_blocks"] / per_row_us["two_at_once_half_rows"]
        )
    for name, seconds in medians.items():
        print(f"{name}: {seconds * 1e3:.1f} ms")
    cycles = report["kernel_cycles_per_nonzero"]
    print(
        f"kernel: {per_nonzero * 1e9:.2f} ns per non-zero entry"
        + (f", {cycles:.1f} cycles at the nominal {clock / 1e9:.2f} GHz" if cycles else "")
    )
    print(
        f"kernel / scikit-learn, all rows: {report['kernel_over_sklearn_all_rows']:.2f}; "
        f"one 2-worker block / scikit-learn's evaluation: "
        f"{report['half_block_over_sklearn_evaluation']:.2f}"
    )
    for name, micros in per_row_us.items():
        print(f"per row, {name}: {micros:.3f} us")
    if grown_rows:
        print(
            f"grown block / 30,000-row block, per row: alone "
            f"{report['grown_over_half_block_per_row']:.2f}, two at once "
            f"{report['grown_over_half_block_per_row_two_at_once']:.2f}"
        )
    pool.shutdown()
    out = Path(args.out)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
