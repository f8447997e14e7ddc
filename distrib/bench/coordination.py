"""What one multinomial evaluation costs to coordinate, measured on a cluster.

Each worker holds one block of 50 synthetic rows (MNIST's shape unless told), so an
evaluation's wall time is almost all coordination. The same blocks are evaluated in turn,
evaluation by evaluation, by runners that differ only in how the driver reaches the hosts:

- ``direct``: the driver calls every host over its channel;
- ``relayed``: one group, so the first host relays the evaluation to all the others;
- ``rpc``: every host through distributed's RPC (``actor_execute``: TLS clusters).

`distrib bench` uses ``direct`` against ``relayed`` on two workers to measure what a level of
relaying adds (the projection past this machine); ``scripts/coordination.py`` prints all three
on several worker counts.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import scipy.sparse as sp
from distributed import Client

from distrib.parallel.blocks.runner import ClusterBlocks
from distrib.parallel.cluster import worker_infos
from distrib.parallel.rows import InMemoryArrays

MODES = ("direct", "relayed", "rpc")


def measure_coordination(
    client: Client,
    modes: tuple[str, ...] = MODES,
    evaluations: int = 100,
    n_features: int = 784,
    n_classes: int = 10,
) -> dict[str, dict[str, float]]:
    """Median seconds per evaluation of tiny blocks, one per worker, in each mode.

    Returns
    -------
    dict
        mode -> ``median_wall_seconds``, ``median_coordination_seconds`` (wall minus the
        busiest block), ``p90_coordination_seconds``, ``median_driver_cpu_seconds_per_message``
        and, for ``relayed``, ``median_relay_cpu_seconds_per_message``.
    """
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown modes {unknown}: choose among {list(MODES)}")
    rng = np.random.default_rng(0)
    rows = 50 * len(worker_infos(client))
    dense = rng.random((rows, n_features)) * (rng.random((rows, n_features)) < 0.2)
    X, y = sp.csr_matrix(dense.astype(np.float32)), rng.integers(0, n_classes, rows)
    coef = rng.normal(size=(n_classes, n_features)) * 0.01
    intercept = np.zeros(n_classes)
    runners: dict[str, ClusterBlocks] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        for mode in modes:
            runner = ClusterBlocks.from_training_data(
                client,
                InMemoryArrays(X, y),
                np.arange(n_classes),
                run_id=uuid.uuid4().hex,
                direct=mode != "rpc",
                relay=mode == "relayed",
                groups=1 if mode == "relayed" else None,
            )
            runner.wait_loaded()
            runners[mode] = runner
            samples[mode] = {"wall": [], "coordination": [], "driver": [], "relay": []}
        for _ in range(evaluations):
            for mode, runner in runners.items():
                started = time.perf_counter()
                evaluation = runner.evaluate(coef, intercept, None)
                wall = time.perf_counter() - started
                busiest = max(t.seconds for t in evaluation.total.timings)
                samples[mode]["wall"].append(wall)
                samples[mode]["coordination"].append(wall - busiest)
                if evaluation.messages:
                    per = evaluation.message_cpu / evaluation.messages
                    samples[mode]["driver"].append(per)
                if evaluation.relayed:
                    samples[mode]["relay"].append(evaluation.relay_cpu / evaluation.relayed)
    finally:
        for runner in runners.values():
            runner.release()
    report: dict[str, dict[str, float]] = {}
    for mode, s in samples.items():
        report[mode] = {
            "median_wall_seconds": float(np.median(s["wall"])),
            "median_coordination_seconds": float(np.median(s["coordination"])),
            "p90_coordination_seconds": float(np.percentile(s["coordination"], 90)),
        }
        if s["driver"]:
            report[mode]["median_driver_cpu_seconds_per_message"] = float(np.median(s["driver"]))
        if s["relay"]:
            report[mode]["median_relay_cpu_seconds_per_message"] = float(np.median(s["relay"]))
    return report


def relay_level(client: Client, evaluations: int = 100) -> dict[str, float]:
    """What one level of relaying adds to an evaluation's coordination, on two or more
    workers (``level_seconds``).

    With ``W`` workers, ``direct`` costs a base plus the driver's CPU ``c`` for each of
    ``W - 1`` further replies; ``relayed`` costs the base plus the level plus the relaying
    host's CPU ``c_r`` for each of ``W - 2`` further relayed replies. So the level is
    ``relayed - direct + (W - 1) c - (W - 2) c_r``.
    """
    measured = measure_coordination(client, ("direct", "relayed"), evaluations)
    direct, relayed = measured["direct"], measured["relayed"]
    workers = len(worker_infos(client))
    c = direct.get("median_driver_cpu_seconds_per_message", 0.0)
    c_r = relayed.get("median_relay_cpu_seconds_per_message", 0.0)
    saved = (workers - 1) * c - max(0, workers - 2) * c_r
    return {
        "workers": workers,
        "direct_coordination_seconds": direct["median_coordination_seconds"],
        "relayed_coordination_seconds": relayed["median_coordination_seconds"],
        "relay_cpu_seconds_per_message": relayed.get("median_relay_cpu_seconds_per_message", 0.0),
        "level_seconds": max(
            0.0,
            relayed["median_coordination_seconds"] - direct["median_coordination_seconds"] + saved,
        ),
    }
