"""One block's evaluation (loss and gradient, one thread) three ways, on the same rows of a
row store: held in memory as float32 CSR (how a block loads them), held in memory as coded
CSR (one-byte codes), and streamed from the store's files a piece at a time (page cache
warm after the first pass). Medians of ``--repeat`` evaluations; results as JSON.

    python scripts/stream_bench.py --store ~/.cache/distrib/prepared/<digest>/stream/<name> \\
        --rows 1000000 --out scripts/results/stream-evaluation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from distrib.linear import softmax
from distrib.parallel.blocks.streamed import open_streamed_block
from distrib.parallel.row_store import open_row_store


def _cpu() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _median_seconds(evaluate, repeat: int) -> float:  # type: ignore[no-untyped-def]
    evaluate()  # compiled, and the page cache warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a row store folder")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--out", default=None, help="write the results here (JSON)")
    args = parser.parse_args()
    store = open_row_store(args.store)
    if store is None:
        raise SystemExit(f"no complete row store in {args.store}")
    n = min(args.rows, store.shape[0])
    classes = np.unique(store.labels(0, n))
    block = open_streamed_block(store, 0, n, classes)
    codes = block.codes.astype(np.intp)
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(len(classes), store.shape[1])) * 0.01
    intercept = np.zeros(len(classes))
    coded = store._piece(0, n)  # the rows whole, in memory, as the store codes them
    floats = coded.decoded() if isinstance(coded, softmax.CodedCSR) else coded
    results = {
        "rows": n,
        "nnz": int(floats.nnz),
        "machine": _cpu(),
        "float32_csr_in_memory": _median_seconds(
            lambda: softmax.loss_grad(floats, codes, coef, intercept), args.repeat
        ),
        "coded_csr_in_memory": _median_seconds(
            lambda: softmax.loss_grad(coded, codes, coef, intercept), args.repeat
        ),
        "streamed": _median_seconds(lambda: block.loss_grad(coef, intercept, None), args.repeat),
    }
    _, _, reads = block.loss_grad(coef, intercept, None)
    results["streamed_bytes_per_pass"] = reads.bytes
    results["streamed_wait_seconds"] = reads.wait
    results["streamed_over_float32_in_memory"] = (
        results["streamed"] / results["float32_csr_in_memory"]
    )
    results["command"] = "python scripts/stream_bench.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "out"
    )
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
