"""A one-vs-rest fit with one worker paused a third of the way through, beside the same fit
undisturbed, on the same 3-worker local cluster (issue 24's measurement).

For each setting: the fit undisturbed, then again with one worker process SIGSTOPped after a
third of the undisturbed fit time (and continued once the fit is over). Reports both fit
phases, their ratio, the backup attempts and whether the models are equal bit for bit.
First, what the watching for late tasks costs a fit that needs no backup: the default fit
with the watch on and off in turn (``distrib.backup.enabled``).

    python scripts/gray_bench.py --out scripts/results/gray-2cores.json
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
from distributed import Client

from distrib import TrainConfig, train
from distrib.bench.bench import machine
from distrib.files import write_json
from distrib.parallel.cluster import start_local_cluster

SETTINGS: dict[str, dict[str, Any]] = {
    "default (lbfgs, lockstep groups)": {},
    "--preset notebook (saga, a task per class)": {"preset": "notebook"},
}


def _paused_fit(client: Client, config: TrainConfig, out: Path, after: float) -> Any:
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    paused: list[float] = []

    def log(message: str) -> None:
        if message.startswith("fitting ") and not paused:

            def pause() -> None:
                time.sleep(after)
                os.kill(pids[victim], signal.SIGSTOP)
                paused.append(time.monotonic())

            threading.Thread(target=pause, daemon=True).start()

    try:
        return train(config, client=client, out=out, log=log), victim
    finally:
        if paused:
            os.kill(pids[victim], signal.SIGCONT)


def _watch_cost(workers: int, repeat: int, scratch: Path) -> dict[str, Any]:
    """The default one-vs-rest fit phase undisturbed, with the backup watch on and off in
    turn, on one cluster: what watching costs a fit that needs no backup."""
    fits: dict[str, list[float]] = {"watching": [], "not watching": []}
    cluster = start_local_cluster(workers)
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(workers, timeout=60)
        for i in range(repeat + 1):  # the first round warms up
            for name, enabled in (("watching", True), ("not watching", False)):
                with dask.config.set({"distrib.backup.enabled": enabled}):
                    result = train(TrainConfig(), client=client, out=scratch / f"w{i}{enabled}")
                if i:
                    fits[name].append(result.metrics["timings"]["fit"])
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)
    medians = {name: float(np.median(walls)) for name, walls in fits.items()}
    print(f"watch cost: fit median {medians['watching']:.3f} s watching, "
          f"{medians['not watching']:.3f} s not (spreads {fits})", flush=True)  # fmt: skip
    return {"fit_seconds": fits, "median_fit_seconds": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="gray.json")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--watch-repeat", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "workers": args.workers, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="distrib-watch-") as scratch:
        results["watch_cost"] = _watch_cost(args.workers, args.watch_repeat, Path(scratch))
    with tempfile.TemporaryDirectory(prefix="distrib-gray-") as scratch:
        for name, settings in SETTINGS.items():
            config = TrainConfig.from_preset(**settings) if settings else TrainConfig()
            cluster = start_local_cluster(args.workers)
            client = Client(cluster, set_as_default=False)
            try:
                client.wait_for_workers(args.workers, timeout=60)
                reference = train(config, client=client, out=Path(scratch) / f"{name}-ref")
                undisturbed = reference.metrics["timings"]["fit"]
                result, victim = _paused_fit(
                    client, config, Path(scratch) / f"{name}-paused", undisturbed / 3
                )
            finally:
                client.close(timeout=10)
                cluster.close(timeout=10)
            paused = result.metrics["timings"]["fit"]
            entry = {
                "undisturbed_fit_seconds": undisturbed,
                "paused_fit_seconds": paused,
                "paused_over_undisturbed": paused / undisturbed,
                "paused_worker": victim,
                "paused_after_seconds": undisturbed / 3,
                "backups": result.metrics["solver"]["backups"],
                "same_model": bool(
                    np.array_equal(result.model.coef, reference.model.coef)
                    and np.array_equal(result.model.intercept, reference.model.intercept)
                ),
                "test_accuracy": result.metrics["test_accuracy"],
            }
            results["settings"][name] = entry
            print(
                f"{name}: fit {paused:.2f} s with a worker paused after {undisturbed / 3:.1f} s, "
                f"{undisturbed:.2f} s undisturbed ({paused / undisturbed:.2f}x), "
                f"{len(entry['backups'])} backup attempt(s), same model: {entry['same_model']}",
                flush=True,
            )
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
