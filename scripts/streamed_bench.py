"""Rows past the workers' memory: a multinomial fit streamed under a memory limit, beside the
same rows and blocks held in memory.

1. ``distrib train --split canonical --grow 38 --deform elastic --strategy multinomial
   --memory-limit 1GiB --workers 2`` (``--rows auto``: 2.28 M elastic MNIST rows, ~3.6 GB as
   float32 CSR, do not fit in two 1 GiB workers, so the run writes them as a row store and
   streams them), timed as a whole process, every process's resident size sampled every
   0.2 s from outside;
2. the same rows and blocks in memory: the store's rows decoded into prepared files and
   fitted by two workers without a limit (`fit_training_data`, the fit `distrib train`
   runs), the same settings.

With ``--zarr-rows N``, the rows are a user's Zarr store instead (``--data``): N rows, copies
of MNIST's 70,000 images shifted by up to 2 pixels (made once under ``--home``, one-byte
pixels), split as the notebook split (past `distrib.data.split.SHUFFLE_BYTES`, the rows in
the store's order).

The result (JSON): the command's wall time, each process's peak resident size (the driver's:
``process_peak_rss``; its workers': ``started_processes_peak_rss``), each fit's
median evaluation, and whether the two models are the same bits.

    python scripts/streamed_bench.py --home /tmp/streamed-home --mnist ~/.cache/distrib \\
        --out scripts/results/streamed-2cores.json
    python scripts/streamed_bench.py --home /tmp/streamed-home --mnist ~/.cache/distrib \\
        --zarr-rows 2250000 --out scripts/results/streamed-zarr-2cores.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster

from distrib.bench.commands import run_sampled
from distrib.config import TrainConfig
from distrib.data.datasets import load_mnist
from distrib.parallel.prepared import write_in_memory
from distrib.parallel.row_store import open_row_store
from distrib.parallel.rows import InMemoryArrays
from distrib.parallel.strategies import fit_training_data


def make_zarr_store(folder: Path, n_rows: int, mnist_home: Path) -> None:
    """``n_rows`` rows of one-byte pixels in a Zarr group (``X``, ``y``; chunks of 10,000
    rows): copy k of MNIST's 70,000 images shifted by one of the 25 shifts of up to 2 pixels
    (the empty edge black). Made beside ``folder`` and renamed: a store there is whole."""
    import zarr

    if folder.exists():
        return
    mnist = load_mnist(mnist_home, fetch=False)
    images = np.asarray(mnist.X).reshape(-1, 28, 28)
    labels = np.asarray(mnist.y)
    work = folder.with_name(folder.name + ".partial")
    group = zarr.open_group(str(work), mode="w")
    X = group.create_array("X", shape=(n_rows, 784), chunks=(10_000, 784), dtype="uint8")
    y = group.create_array("y", shape=(n_rows,), chunks=(10_000,), dtype="uint8")
    for start in range(0, n_rows, len(images)):
        k, stop = start // len(images), min(n_rows, start + len(images))
        dy, dx = k % 5 - 2, k // 5 % 5 - 2
        shifted = np.zeros_like(images)
        shifted[:, max(dy, 0) : 28 + min(dy, 0), max(dx, 0) : 28 + min(dx, 0)] = images[
            :, max(-dy, 0) : 28 + min(-dy, 0), max(-dx, 0) : 28 + min(-dx, 0)
        ]
        X[start:stop] = shifted.reshape(-1, 784)[: stop - start]
        y[start:stop] = labels[: stop - start]
    work.rename(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the run's data home (made if missing)")
    parser.add_argument("--mnist", required=True, help="a data home holding the MNIST cache")
    parser.add_argument("--grow", type=int, default=38)
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--zarr-rows", type=int, default=0, help="a Zarr store of this many rows")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "mnist").exists():
        (home / "mnist").symlink_to(Path(args.mnist).resolve() / "mnist")
    if args.zarr_rows:
        zarr_store = home / f"mnist-shifted-{args.zarr_rows}.zarr"
        make_zarr_store(zarr_store, args.zarr_rows, home)
        data, store_name = ["--data", str(zarr_store)], "train"
        config = TrainConfig(data=str(zarr_store), strategy="multinomial")
    else:
        data = ["--split", "canonical", "--grow", str(args.grow), "--deform", "elastic"]
        store_name = f"train-elastic-{args.grow}"
        config = TrainConfig(split="canonical", grow=args.grow, deform="elastic",
                             strategy="multinomial")  # fmt: skip
    run = home / "run-streamed"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    if args.zarr_rows:  # the first run on the store: split, row store and test part made
        subprocess.run(["rm", "-rf", str(home / "prepared")], check=True)
    command = ["train", *data, "--strategy", "multinomial", "--memory-limit", args.memory_limit,
               "--workers", "2", "--dashboard-address", ":0", "--data-home", str(home),
               "--out", str(run)]  # fmt: skip
    streamed = run_sampled([sys.executable, "-m", "distrib", *command], home / "streamed.log")
    metrics = json.loads((run / "metrics.json").read_text())
    solver = metrics["solver"]
    streamed.update(
        transfer=metrics["transfer"],
        n_train=metrics["n_train"],
        row_order=json.loads((run / "model.json").read_text())["data"]["row_order"],
        phases=metrics["timings"],
        test_accuracy=metrics["test_accuracy"],
        fit_seconds=metrics["timings"]["fit"],
        median_evaluation_seconds=solver["median_evaluation_seconds"],
        n_evaluations=solver["n_evaluations"],
        read_bytes_per_evaluation=int(np.median(solver["per_evaluation"]["read_bytes"])),
    )
    print("streamed", json.dumps(streamed), file=sys.stderr)

    (folder,) = home.glob(f"prepared/*/stream/{store_name}")
    store = open_row_store(folder)
    assert store is not None
    X, y = store.arrays()
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        files = write_in_memory(InMemoryArrays(X, y), Path(tmp))
        nbytes_float32_csr = int(X.nnz) * 8 + 8 * (X.shape[0] + 1)
        del X
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
        with cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            outcome = fit_training_data(files, np.arange(10), config, client=client)
            fit_seconds = time.perf_counter() - t0
    model = np.load(run / "model.npz")
    in_memory = {
        "fit_seconds": fit_seconds,
        "median_evaluation_seconds": outcome.solver["median_evaluation_seconds"],
        "n_evaluations": outcome.solver["n_evaluations"],
    }
    report = {
        "command": "python scripts/streamed_bench.py " + " ".join(sys.argv[1:]),
        "streamed_command": "distrib " + " ".join(command[:-4]),
        "memory_limit": args.memory_limit,
        "training_rows_as_float32_csr_bytes": nbytes_float32_csr,
        "streamed": streamed,
        "in_memory_same_blocks": in_memory,
        "same_model": bool(
            np.array_equal(model["coef"], outcome.coef)
            and np.array_equal(model["intercept"], outcome.intercept)
        ),
        "streamed_over_in_memory_evaluation": streamed["median_evaluation_seconds"]
        / in_memory["median_evaluation_seconds"],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
