"""Wall time against core count, with the baselines measured in the same run.

For each worker count, a fresh `LocalCluster` of single-threaded workers (or the workers an
existing scheduler has) runs the same training job ``repeat`` times after ``warmup`` runs.
Baselines on the same split, settings and matrix layout: the binary fits one after another in
one process, and ``OneVsRestClassifier(n_jobs=k)`` with loky (on the same layout, and on the
dense matrix a notebook user would pass); dask-ml's ``LogisticRegression`` (dask-glm's
L-BFGS on the Dask array, binary only) through scikit-learn's ``OneVsRestClassifier`` on each
cluster, what a Dask user reaches for first; optionally the notebook's own settings.

With the multinomial strategy in the list, its runs get the same treatment (fresh clusters,
same repeats) and its baseline is scikit-learn's own multinomial ``LogisticRegression`` (lbfgs,
same ``C``, ``tol`` and ``max_iter``) in one process, on the same matrix.

A projection past this machine simulates the one-vs-rest schedule on 1..32 workers from the
measured per-class compute times and the measured fixed overhead; for the multinomial fit,
each evaluation's compute divided over the workers plus its measured coordination cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from distributed import Client
from sklearn.multiclass import OneVsRestClassifier

from distrib.config import SOLVER_NAMES, STRATEGIES, ClusterConfig, TrainConfig
from distrib.data.datasets import load_dataset
from distrib.data.split import split_arrays
from distrib.errors import ConfigError, OutputError
from distrib.files import write_json
from distrib.parallel.cluster import connect, load_fit_libraries, package_versions, worker_infos
from distrib.parallel.memory import matrix_bytes
from distrib.parallel.strategies import strategy_for
from distrib.parallel.rows import matrix_nbytes
from distrib.parallel.prepared import choose_layout, density_of
from distrib.report.bench_format import BENCH_FORMAT_VERSION, STRATEGY_KEYS
from distrib.bench.baselines import (
    BenchData,
    Timing,
    multinomial_baselines,
    notebook_line,
    ovr_baselines,
    spark_lines,
)
from distrib.bench.commands import time_commands
from distrib.bench.coordination import relay_level
from distrib.bench.peers import check_spark, time_to_target
from distrib.run.train import train

PROJECTION_WORKERS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32)
#: ``max_iter`` values tried, in turn, until distrib's fit reaches the target accuracy (each
#: solver, each strategy and worker count; the run's own ``max_iter`` last).
TARGET_STEPS = (1, 2, 4, 8, 16, 32, 64)
#: Other tools `run_bench` can time beside distrib (``--peers``).
PEERS = ("spark",)


def parse_workers(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; refuses anything but positive whole numbers."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise ConfigError(f"--workers takes a list like 1,2,4, got {text!r}") from exc
    if not counts or counts[0] < 1:
        raise ConfigError(f"--workers takes positive whole numbers like 1,2,4, got {text!r}")
    return counts


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _rss_bytes() -> int:
    """Resident memory of this process now (runs on workers)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _idle_rss_bytes() -> int:
    """Resident memory with the fit modules imported and the multinomial kernels loaded
    (`distrib train` warms its workers up the same way), before any job (runs on workers)."""
    load_fit_libraries()
    return _rss_bytes()


def _peak_rss_bytes() -> int:
    """Peak resident memory of this worker process (``VmHWM``; runs on workers).

    Not ``ru_maxrss``: Linux carries that across fork and exec, so a worker would report
    its parent's peak.
    """
    return _proc_status_bytes("VmHWM")


def machine() -> dict[str, Any]:
    """Cores, memory, CPU and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(),
    }


@contextlib.contextmanager
def _cluster(
    workers: int, scheduler: str | None, tls: dict[str, str | None] | None = None
) -> Iterator[tuple[Client, float]]:
    """A client of ``workers`` fresh local workers (or of ``scheduler``'s cluster, once it
    has that many, with ``tls``: `ClusterConfig`'s certificate settings), and the seconds
    it took."""
    started = time.perf_counter()
    tls = tls or {}
    config = ClusterConfig(
        tls_ca_file=tls.get("tls_ca_file"),
        tls_cert=tls.get("tls_cert"),
        tls_key=tls.get("tls_key"),
        scheduler=scheduler,
        workers=workers,
        wait_workers=workers,
        worker_timeout=120.0,
        dashboard_address=":0",  # fresh clusters one after another: never a port clash
    )
    with connect(config) as client:
        yield client, time.perf_counter() - started


@dataclasses.dataclass(frozen=True)
class EstimatorInputs:
    """The training matrix as a user of the estimator hands it over, and the test split."""

    inputs: dict[str, Any]  # name -> X (numpy, CSR, Dask array)
    y: np.ndarray
    X_test: Any
    y_test: np.ndarray


def _estimator_runs(
    client: Client,
    config: TrainConfig,
    data: EstimatorInputs,
    repeat: int,
    warmup: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """`DaskLogisticRegression.fit` on the current client, once per input kind, as a user
    with a ``Client`` calls it: the data is handed over in memory at each fit."""
    from distrib.estimator import DaskLogisticRegression

    params = config.model_settings()
    present = len(worker_infos(client))
    results: dict[str, Any] = {}
    with client.as_current():
        for name, X in data.inputs.items():
            walls: list[float] = []
            solvers: list[dict[str, Any]] = []
            for i in range(warmup + repeat):
                started = time.perf_counter()
                clf = DaskLogisticRegression(**params).fit(X, data.y)
                wall = time.perf_counter() - started
                label = (
                    f"warm-up {i + 1}/{warmup}" if i < warmup else f"run {i - warmup + 1}/{repeat}"
                )
                where = f"estimator {config.strategy}, {name}, {present} worker(s)"
                say(f"[{where}] {label}: fit {wall:.2f} s")
                if i >= warmup:
                    walls.append(wall)
                    solvers.append({k: v for k, v in clf.solver_.items() if k != "per_evaluation"})
            results[name] = {
                "walls": walls,
                "median_fit": _median(walls),
                "solver": solvers,
                "test_accuracy": float(clf.score(data.X_test, data.y_test)),
            }
    return results


#: Timed runs of the dask-ml baseline (`--dask-ml`; minutes each on MNIST, no warm-up).
DASK_ML_REPEAT = 1


def _dask_ml_runs(
    client: Client,
    config: TrainConfig,
    data: EstimatorInputs,
    repeat: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """dask-ml's ``LogisticRegression`` one class after another (``OneVsRestClassifier``;
    dask-ml fits binary problems only), each fit's L-BFGS evaluating its gradient as Dask
    graphs over the cluster's workers, on the training matrix persisted there as a Dask
    array. Its ``C`` and tolerance are dask-glm's, close to but not scikit-learn's: its
    accuracy is reported beside the time."""
    from dask_ml.linear_model import LogisticRegression as DaskMLLogisticRegression

    present = len(worker_infos(client))
    X = client.persist(data.inputs["dask"].rechunk({0: 10_000, 1: -1}))
    walls: list[float] = []
    with client.as_current(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dask-glm's convergence and deprecation chatter
        for i in range(repeat):
            started = time.perf_counter()
            binary = DaskMLLogisticRegression(
                solver="lbfgs",
                C=config.C,
                tol=config.tol,
                max_iter=config.max_iter,
                fit_intercept=config.fit_intercept,
                solver_kwargs={"normalize": False},  # MNIST's all-zero pixels break it
            )
            model = OneVsRestClassifier(binary).fit(X, data.y)
            walls.append(time.perf_counter() - started)
            say(f"[dask-ml OneVsRest, {present} worker(s)] run {i + 1}/{repeat}: {walls[-1]:.2f} s")
        accuracy = float(np.mean(np.asarray(model.predict(data.X_test)) == data.y_test))
    del X
    return {"walls": walls, "median_fit": _median(walls), "test_accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One timed ``distrib train`` run: its wall, fit and transfer seconds, every phase, its
    test accuracy, and what its fit did (each class's binary fit, or the solver's record,
    the evaluation log's share of the fit and each row block)."""

    wall: float
    fit: float
    transfer: float
    phases: dict[str, Any]
    test_accuracy: float
    classes: list[dict[str, Any]] | None = None
    solver: dict[str, Any] | None = None
    checkpoint_share_of_fit: float | None = None
    blocks: list[dict[str, Any]] | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], holds_row_blocks: bool) -> RunRecord:
        """The record of a run from its ``metrics.json``."""
        t = metrics["timings"]
        common = {"wall": t["total"], "fit": t["fit"], "transfer": t["transfer"], "phases": t,
                  "test_accuracy": metrics["test_accuracy"]}  # fmt: skip
        if not holds_row_blocks:  # each class's fit; the solver and its busiest task's passes
            fit_keys = ("label", "seconds", "worker", "n_iter", "converged", "passes")
            solver = {k: v for k, v in metrics["solver"].items() if k in ("solver", "passes")}
            return cls(
                **common,
                classes=[{k: f.get(k) for k in fit_keys} for f in metrics["fits"]],
                solver=solver or None,
            )
        solver = metrics["solver"]
        keys = ("start", "rows", "worker", "copies", "calls")
        return cls(
            **common,
            solver={k: v for k, v in solver.items() if k != "per_evaluation"},
            # what the evaluation log (--resume's checkpoint) costs the fit
            checkpoint_share_of_fit=solver.get("checkpoint_seconds", 0.0) / t["fit"],
            blocks=[{k: b[k] for k in keys} for b in metrics["fits"]],
        )

    def to_json(self) -> dict[str, Any]:
        """As ``bench.json`` holds it (what this kind of fit has no record of left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _distrib_runs(
    config: TrainConfig,
    workers: int,
    *,
    scheduler: str | None,
    tls: dict[str, str | None] | None = None,
    repeat: int,
    warmup: int,
    home: str | os.PathLike[str] | None,
    scratch: Path,
    say: Callable[[str], None],
    estimator_inputs: EstimatorInputs | None = None,
    dask_ml_inputs: EstimatorInputs | None = None,
    to_target: bool = True,
) -> dict[str, Any]:
    strategy = strategy_for(config.strategy)
    runs: list[RunRecord] = []
    estimator: dict[str, Any] = {}
    dask_ml: dict[str, Any] = {}
    relay: dict[str, float] = {}
    with _cluster(workers, scheduler, tls) as (client, startup):
        present = len(worker_infos(client))
        idle_rss = client.run(_idle_rss_bytes)
        for i in range(warmup + repeat):
            label = f"warm-up {i + 1}/{warmup}" if i < warmup else f"run {i - warmup + 1}/{repeat}"
            out = scratch / f"{config.strategy}-w{workers}-{i}"
            result = train(config, client=client, out=out, home=home)
            t = result.metrics["timings"]
            say(
                f"[distrib {config.strategy}, {present} worker(s)] {label}: "
                f"wall {t['total']:.2f} s, fit {t['fit']:.2f} s, "
                f"test accuracy {result.metrics['test_accuracy']:.4f}"
            )
            if i >= warmup:
                runs.append(RunRecord.from_metrics(result.metrics, strategy.holds_row_blocks))
        peak_rss = client.run(_peak_rss_bytes)
        folder = scratch / f"target-{config.strategy}-w{workers}"
        reached = _solvers_to_target(config, client, home, folder, say) if to_target else {}
        if strategy.holds_row_blocks and present >= 2:
            relay = relay_level(client)
            say(
                f"[distrib multinomial, {present} worker(s)] one relay level: "
                f"{relay['level_seconds'] * 1e3:.2f} ms per evaluation"
            )
        if estimator_inputs is not None:
            estimator = _estimator_runs(client, config, estimator_inputs, repeat, warmup, say)
        if dask_ml_inputs is not None:
            dask_ml = _dask_ml_runs(client, config, dask_ml_inputs, DASK_ML_REPEAT, say)
    shares = [r.checkpoint_share_of_fit for r in runs if r.checkpoint_share_of_fit is not None]
    return {
        "workers": present,
        "cluster_start_seconds": startup,
        "runs": [r.to_json() for r in runs],
        "median_wall": _median([r.wall for r in runs]),
        "median_fit": _median([r.fit for r in runs]),
        "median_transfer": _median([r.transfer for r in runs]),
        "test_accuracy": runs[-1].test_accuracy,
        "layout": result.metrics["layout"],
        "transfer_mode": result.metrics["transfer"],
        "worker_memory": {
            w: {"idle_rss_bytes": idle_rss.get(w), "peak_rss_bytes": peak}
            for w, peak in sorted(peak_rss.items())
        },
        **({"time_to_target": reached} if reached else {}),
        **({"relay_level": relay} if relay else {}),
        **({"median_checkpoint_share_of_fit": _median(shares)} if shares else {}),
        **({"estimator": estimator} if estimator else {}),
        **({"dask_ml": dask_ml} if dask_ml else {}),
    }


def _solvers_to_target(
    config: TrainConfig,
    client: Client,
    home: str | os.PathLike[str] | None,
    scratch: Path,
    say: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """For each of distrib's solvers (`SOLVER_NAMES`), fits of ``config`` with ``max_iter``
    stepped through `TARGET_STEPS` until one reaches the notebook's test accuracy: each
    step's fit seconds, passes over the rows and test accuracy (`peers.time_to_target`)."""
    steps = [k for k in TARGET_STEPS if k < config.max_iter] + [config.max_iter]
    reached = {}
    for solver in SOLVER_NAMES:

        def fit(max_iter: int, solver: str = solver) -> dict[str, Any]:
            job = dataclasses.replace(config, solver=solver, max_iter=max_iter)
            metrics = train(job, client=client, out=scratch / f"{solver}-{max_iter}",
                            home=home).metrics  # fmt: skip
            return {
                "max_iter": max_iter,
                "wall": metrics["timings"]["fit"],
                "passes": metrics["solver"].get("passes"),
                "test_accuracy": metrics["test_accuracy"],
            }

        reached[solver] = time_to_target(fit, steps)
        say(f"[distrib {config.strategy}, {SOLVER_NAMES[solver]}] {target_line(reached[solver])}")
    return reached


def target_line(reached: dict[str, Any]) -> str:
    """How long one of distrib's solvers took to the target accuracy, or that it did not
    (`_solvers_to_target`'s record)."""
    last = reached["steps"][-1]
    if reached["reached"]:
        return (
            f"{reached['target']} reached in {reached['wall']:.2f} s of fit, {last['passes']} "
            f"passes (max_iter {reached['max_iter']})"
        )
    return f"{reached['target']} not reached by max_iter {last['max_iter']}"


def speedups(runs: dict[int, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Speedup and efficiency of each worker count over the smallest one."""
    base_k = min(runs)
    base = runs[base_k]
    return {
        str(k): {
            "speedup_wall": base["median_wall"] / r["median_wall"],
            "speedup_fit": base["median_fit"] / r["median_fit"],
            "efficiency_wall": base["median_wall"] / r["median_wall"] / (k / base_k),
            "relative_to_workers": base_k,
        }
        for k, r in runs.items()
    }


def _memory(
    runs: dict[int, dict[str, Any]], matrix_bytes: int, dense_bytes: int
) -> dict[str, dict[str, float]]:
    """Peak worker memory per worker count, absolute and over the training matrix (as stored,
    and as a dense float32 matrix). ``job`` = peak minus the worker's idle size."""
    memory: dict[str, dict[str, float]] = {}
    for k, r in runs.items():
        workers = r["worker_memory"].values()
        peak = max(m["peak_rss_bytes"] for m in workers)
        job = max(m["peak_rss_bytes"] - (m["idle_rss_bytes"] or 0) for m in workers)
        memory[str(k)] = {
            "max_peak_rss_bytes": peak,
            "max_job_bytes": job,
            "peak_rss_over_matrix": peak / matrix_bytes,
            "job_bytes_over_matrix": job / matrix_bytes,
            "job_bytes_over_dense_matrix": job / dense_bytes,
        }
    return memory


def simulate_schedule(durations: Sequence[float], workers: int) -> float:
    """Makespan of tasks dispatched in order to whichever of ``workers`` frees up first."""
    free_at = [0.0] * workers
    for duration in durations:
        slot = min(range(workers), key=free_at.__getitem__)
        free_at[slot] += duration
    return max(free_at)


def project(distrib_by_workers: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Simulated wall time on 1..32 workers from the smallest measured worker count.

    Per-class task time = its compute seconds plus the measured per-task overhead (fit wall
    minus the class times, spread over the tasks); fixed overhead = end-to-end wall minus fit
    wall. It assumes every worker has its own core and memory bandwidth.
    """
    base_workers = min(distrib_by_workers)
    base = distrib_by_workers[base_workers]
    labels = [c["label"] for c in base["runs"][0]["classes"]]
    per_class = {
        label: _median(
            [c["seconds"] for run in base["runs"] for c in run["classes"] if c["label"] == label]
        )
        for label in labels
    }
    tasks = [per_class[label] for label in sorted(per_class)]
    ideal_fit = simulate_schedule(tasks, base_workers)
    per_task = max(0.0, (base["median_fit"] - ideal_fit) * base_workers / len(tasks))
    fixed = max(0.0, base["median_wall"] - base["median_fit"])
    durations = [t + per_task for t in tasks]
    walls = {k: fixed + simulate_schedule(durations, k) for k in PROJECTION_WORKERS}
    slowest = max(durations)
    saturates = next(
        k for k in range(1, len(durations) + 1) if simulate_schedule(durations, k) <= slowest
    )
    return {
        "basis_workers": base_workers,
        "per_class_seconds": {str(k): v for k, v in per_class.items()},
        "per_task_overhead_seconds": per_task,
        "fixed_overhead_seconds": fixed,
        "workers": list(PROJECTION_WORKERS),
        "wall": [walls[k] for k in PROJECTION_WORKERS],
        "speedup": [walls[PROJECTION_WORKERS[0]] / walls[k] for k in PROJECTION_WORKERS],
        "saturates_at_workers": saturates,
        "slowest_class": max(per_class, key=per_class.__getitem__),
        "note": (
            f"one task per class: no more than {len(tasks)} workers can be busy; the schedule "
            f"stops improving at {saturates} workers, where the slowest class "
            f"({max(per_class, key=per_class.__getitem__)}, {max(tasks):.2f} s) alone sets "
            "the fit time. Simulated, assuming one core and its own memory bandwidth per worker."
        ),
    }


def project_multinomial(runs_by_workers: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Projected wall time of the multinomial fit on 1..32 workers, from the smallest
    measured worker count.

    Per evaluation: the compute of all blocks divided over the workers, plus the measured
    coordination cost at the base count, plus what the sum tree adds past it. On ``k``
    workers the tree has ``g = ceil(sqrt(k))`` groups of up to ``h = ceil(k / g)`` hosts
    (`distrib.parallel.blocks.partial_sums.sum_tree`): the driver reads ``g`` replies, each
    costing its CPU time per reply (measured in the fits of the largest measured worker
    count, where an evaluation has the most replies); where ``h > 1`` a relaying host adds one
    level (measured on this cluster, `distrib.bench.coordination.relay_level`; without such a
    measurement, one more base coordination) and reads ``h - 1`` replies at the same cost
    per message. Times the evaluations L-BFGS needed; plus the run's fixed overhead (end-to-
    end wall minus fit). ``speedup`` is end to end; ``solver_speedup`` counts the
    evaluations only (what compute and coordination alone allow).
    """
    base_workers = min(runs_by_workers)
    base = runs_by_workers[base_workers]
    solvers = [run["solver"] for run in base["runs"]]
    evaluations = _median([s["n_evaluations"] for s in solvers])
    compute = _median([s["median_compute_seconds_all_blocks"] for s in solvers])
    coordination = _median([s["median_coordination_seconds"] for s in solvers])
    # The driver's CPU per reply, from the runs with the most replies per evaluation: the
    # first reply of an evaluation also pays for waking up (cold caches), which the base
    # coordination already counts; the further replies the tree adds cost less.
    widest = runs_by_workers[max(runs_by_workers)]
    per_message = _median(
        [r["solver"].get("median_driver_cpu_seconds_per_message") or 0.0 for r in widest["runs"]]
    )
    probes = [r["relay_level"] for _, r in sorted(runs_by_workers.items()) if "relay_level" in r]
    level = probes[-1]["level_seconds"] if probes else coordination
    setup = max(0.0, base["median_fit"] - _median([s["seconds"] for s in solvers]))
    fixed = max(0.0, base["median_wall"] - base["median_fit"])

    def shape(k: int) -> tuple[int, int]:
        groups = math.ceil(math.sqrt(k))
        return groups, math.ceil(k / groups)

    def coordination_at(k: int) -> float:
        groups, hosts = shape(k)
        base_groups, _ = shape(base_workers)
        extra = coordination + max(0, groups - base_groups) * per_message
        return extra + (level + (hosts - 2) * per_message if hosts > 1 else 0.0)

    solver = {k: evaluations * (compute / k + coordination_at(k)) for k in PROJECTION_WORKERS}
    walls = {k: fixed + setup + solver[k] for k in PROJECTION_WORKERS}
    half = next((k for k in PROJECTION_WORKERS if coordination_at(k) > compute / k), None)
    return {
        "basis_workers": base_workers,
        "evaluations": evaluations,
        "compute_seconds_per_evaluation_all_blocks": compute,
        "coordination_seconds_per_evaluation": coordination,
        "driver_cpu_seconds_per_message": per_message,
        "relay_level_seconds": level,
        "relay_level_measured": bool(probes),
        "block_setup_seconds": setup,
        "fixed_overhead_seconds": fixed,
        "workers": list(PROJECTION_WORKERS),
        "groups": [shape(k)[0] for k in PROJECTION_WORKERS],
        "coordination_seconds": [coordination_at(k) for k in PROJECTION_WORKERS],
        "wall": [walls[k] for k in PROJECTION_WORKERS],
        "speedup": [walls[PROJECTION_WORKERS[0]] / walls[k] for k in PROJECTION_WORKERS],
        "solver_speedup": [solver[PROJECTION_WORKERS[0]] / solver[k] for k in PROJECTION_WORKERS],
        "note": (
            f"rows, not classes, are divided: every worker stays busy at any count. Each of "
            f"the {evaluations:.0f} evaluations pays {coordination * 1e3:.2f} ms of "
            f"coordination at {base_workers} worker(s); past it, results are summed in "
            f"about sqrt(workers) groups: {per_message * 1e6:.0f} us of the driver's time "
            f"per group and, where a group has several hosts, one relay level "
            f"({level * 1e3:.2f} ms, {'measured' if probes else 'assumed'}) plus the same "
            "time per host it relays to. "
            + (
                f"From {half} workers coordination exceeds the compute it divides. "
                if half is not None
                else f"Up to {PROJECTION_WORKERS[-1]} workers it stays below the compute. "
            )
            + "Simulated from the measured times, assuming one core and its own memory "
            "bandwidth per worker."
        ),
    }


@dataclasses.dataclass(frozen=True)
class BenchRequest:
    """What `run_bench` times, and where.

    Attributes
    ----------
    workers : sequence of int, optional
        Worker counts (default ``1..cores``). Ignored with ``scheduler``, whose workers are
        used as they are.
    repeat, warmup : int
        Timed runs and untimed warm-up runs per configuration.
    scheduler : str, optional
        An existing scheduler instead of fresh local clusters.
    tls : dict, optional
        The client's certificates for a ``tls://`` scheduler (`ClusterConfig`'s
        ``tls_ca_file``, ``tls_cert``, ``tls_key``).
    home : path, optional
        The data cache folder.
    out : path
        Folder for ``bench.json`` and ``bench.png``.
    strategies : sequence of {"ovr", "multinomial"}
        Which strategies to time. ``ovr`` results are under ``distrib``, ``multinomial``
        under ``multinomial`` (with scikit-learn's multinomial fit as its baseline).
    baselines : bool
        Also time scikit-learn's `OneVsRestClassifier` in one process and with loky for each
        worker count.
    notebook : bool
        Also time the notebook's own settings in one process (minutes on MNIST).
    estimators : bool
        With ``multinomial``: also time `DaskLogisticRegression` given the training matrix in
        memory (numpy, CSR) and as a Dask array, on each cluster, against scikit-learn on
        the same matrix.
    dask_ml : bool
        Also time dask-ml's one-vs-rest on each cluster, once (minutes on MNIST).
    commands : bool
        Also time whole ``distrib train`` processes for each strategy and worker count, as a
        user times the command, beside the plain scikit-learn scripts
        (`distrib.bench.commands`; not for grown data or an existing scheduler).
    targets : bool
        Also time how long each of distrib's solvers takes to reach the notebook's test
        accuracy (`peers.TARGET_ACCURACY`), by fits with ``max_iter`` stepped through
        `TARGET_STEPS` on each cluster (not for grown data).
    peers : sequence of {"spark"}
        Other tools to time on the same split, on as many cores as each worker count:
        ``spark``, Apache Spark's ``LogisticRegression`` (`distrib.bench.peers`; needs
        the ``spark`` extra). Not for grown data.
    """

    workers: Sequence[int] | None = None
    repeat: int = 3
    warmup: int = 1
    scheduler: str | None = None
    tls: dict[str, str | None] | None = None
    home: str | os.PathLike[str] | None = None
    out: str | os.PathLike[str] = "bench"
    strategies: Sequence[str] = ("ovr",)
    baselines: bool = True
    notebook: bool = False
    estimators: bool = True
    dask_ml: bool = False
    commands: bool = True
    targets: bool = True
    peers: Sequence[str] = ()

    def worker_counts(self) -> list[int]:
        """The worker counts to time (one, on an existing scheduler)."""
        counts = list(self.workers or range(1, (os.cpu_count() or 1) + 1))
        return counts[:1] if self.scheduler else counts


def run_bench(
    config: TrainConfig | None = None,
    request: BenchRequest | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark `distrib train` against worker count; write ``bench.json`` and ``bench.png``.

    Parameters
    ----------
    config : TrainConfig, optional
        The job to time (defaults: MNIST, notebook split, distrib's defaults).
    request : BenchRequest, optional
        What to time beside it, how often, and where (default: `BenchRequest`'s defaults).
    log : callable, optional
        Receives a progress line per run.

    Returns
    -------
    dict
        The report, as written to ``bench.json`` (`distrib.report.bench_format`).
    """
    config = config or TrainConfig()
    request = request or BenchRequest()
    _check_request(request.strategies, request.repeat, request.warmup, request.peers)
    say = log or (lambda _msg: None)
    folder = Path(request.out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the bench folder {folder}: {exc}") from exc
    data = _bench_data(config, request.home, say)
    if data.grown:
        # Grown rows are made on the workers by `distrib train`; here only scikit-learn's
        # fit needs them, made a chunk at a time after distrib's runs. The baselines that
        # take the dense matrix in memory (estimators, serial, loky, notebook, dask-ml)
        # are not run: the point of growing is a matrix too large for them.
        say(
            f"grown data ({config.grow} variants, {data.n_rows:,} rows): timing "
            "distrib and scikit-learn's multinomial fit in one process only"
        )
        request = dataclasses.replace(
            request, estimators=False, baselines=False, notebook=False, dask_ml=False
        )
    report = _header(config, data, request.repeat, request.warmup, request.scheduler)
    timing = Timing(request.repeat, request.warmup, say)
    by_strategy = _time_distrib(config, data, request, timing)
    _add_commands(report, config, data, request, say)
    _add_distrib_results(report, by_strategy)
    _add_baselines(report, config, data, request, by_strategy, timing)

    from distrib.report.plots import plot_bench

    write_json(folder / "bench.json", report)
    plot_bench(report, folder / "bench.png")
    say(f"wrote {folder / 'bench.json'} and {folder / 'bench.png'}")
    return report


def _add_commands(
    report: dict[str, Any],
    config: TrainConfig,
    data: BenchData,
    request: BenchRequest,
    say: Callable[[str], None],
) -> None:
    """Whole ``distrib train`` processes beside the plain scripts (``commands``)."""
    if not request.commands or data.grown or request.scheduler:
        return
    with tempfile.TemporaryDirectory(prefix="distrib-commands-") as scratch:
        report["commands"] = time_commands(
            config,
            strategies=[s for s in STRATEGIES if s in request.strategies],
            workers=request.worker_counts(),
            repeat=request.repeat,
            scratch=Path(scratch),
            home=None if request.home is None else str(request.home),
            log=say,
        )


def _add_distrib_results(
    report: dict[str, Any], by_strategy: dict[str, dict[int, dict[str, Any]]]
) -> None:
    """distrib's runs of each strategy, their speedups and memory, and their projections."""
    for strategy, runs in by_strategy.items():
        keys = STRATEGY_KEYS[strategy]
        report[keys.runs] = {str(k): v for k, v in runs.items()}
        report[keys.scaling] = speedups(runs)
        report[keys.memory] = _memory(
            runs, report["training_matrix_bytes"], report["dense_matrix_bytes"]
        )
    if "multinomial" in by_strategy:
        report[STRATEGY_KEYS["multinomial"].projection] = project_multinomial(
            by_strategy["multinomial"]
        )
    if by_strategy.get("ovr"):
        report[STRATEGY_KEYS["ovr"].projection] = project(by_strategy["ovr"])


def _add_baselines(
    report: dict[str, Any],
    config: TrainConfig,
    data: BenchData,
    request: BenchRequest,
    by_strategy: dict[str, dict[int, dict[str, Any]]],
    timing: Timing,
) -> None:
    """Each strategy's baselines measured in this run, and the peers."""
    counts, say = request.worker_counts(), timing.say
    distrib_runs = by_strategy.get("ovr", {})
    if request.baselines and distrib_runs:
        report.update(ovr_baselines(config, data, counts, distrib_runs, timing))
    if any("dask_ml" in r for r in distrib_runs.values()):
        report["fit_vs_dask_ml"] = {
            str(k): r["dask_ml"]["median_fit"] / r["median_fit"]
            for k, r in distrib_runs.items()
            if "dask_ml" in r
        }
    if "spark" in request.peers and data.X_fit is not None:
        report["peers"] = {"spark": spark_lines(config, data, counts, say)}
    if "multinomial" in by_strategy:
        matrix_bytes = report["training_matrix_bytes"]
        report.update(
            multinomial_baselines(
                config, data, by_strategy["multinomial"], timing, request.estimators, matrix_bytes
            )
        )
    if request.notebook and distrib_runs and data.X_dense is not None:
        report["notebook"] = notebook_line(config, data, request.home, distrib_runs, say)


def _check_request(
    strategies: Sequence[str], repeat: int, warmup: int, peers: Sequence[str]
) -> None:
    """Refuse a benchmark that cannot run, before any work."""
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ConfigError(f"--strategy takes a list of {STRATEGIES}, got {list(strategies)}")
    if repeat < 1 or warmup < 0:
        raise ConfigError(f"--repeat must be >= 1 and --warmup >= 0, got {repeat}, {warmup}")
    unknown_peers = sorted(set(peers) - set(PEERS))
    if unknown_peers:
        raise ConfigError(f"--peers takes a list of {PEERS}, got {unknown_peers}")
    if "spark" in peers:
        check_spark()


def _bench_data(
    config: TrainConfig, home: str | os.PathLike[str] | None, say: Callable[[str], None]
) -> BenchData:
    dataset = load_dataset(config.dataset, home, log=say)
    parts = split_arrays(dataset, config.split, config.scale, config.grow, config.deform)
    grown = config.grow > 1
    X_dense: np.ndarray | None = None
    if grown:
        y_train, X_test, y_test = parts.local("y_train", "X_test", "y_test")
        density = density_of(parts.X_train[: len(parts.split.train_index)])
    else:
        X_dense, y_train, X_test, y_test = parts.local("X_train", "y_train", "X_test", "y_test")
        density = density_of(parts.X_train)
    layout = choose_layout(config.layout, density)
    X_fit: Any = None
    if X_dense is not None:
        X_fit = sp.csr_matrix(X_dense) if layout == "sparse" else X_dense
    n_rows, n_features = (int(n) for n in parts.X_train.shape)
    return BenchData(
        parts, grown, X_dense, X_fit, y_train, X_test, y_test, density, layout, n_rows, n_features
    )


def _header(
    config: TrainConfig, data: BenchData, repeat: int, warmup: int, scheduler: str | None
) -> dict[str, Any]:
    """What the benchmark measured, on what and where: the report's first keys."""
    return {
        "format_version": BENCH_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": config.to_dict(),
        "layout": data.layout,
        "density": data.density,
        "training_matrix_bytes": matrix_nbytes(data.X_fit)
        if data.X_fit is not None
        else matrix_bytes(data.n_rows, data.n_features, data.density, data.layout),
        "dense_matrix_bytes": data.n_rows * data.n_features * 4,  # float32
        "n_train": len(data.y_train),
        "n_classes": len(np.unique(data.y_train)),
        "repeat": repeat,
        "warmup": warmup,
        "scheduler": scheduler,
        "machine": machine(),
    }


def _time_distrib(
    config: TrainConfig, data: BenchData, request: BenchRequest, timing: Timing
) -> dict[str, dict[int, dict[str, Any]]]:
    """distrib's runs per strategy and worker count, each on a fresh cluster (with the
    estimator and dask-ml lines measured on the same clusters where asked)."""
    inputs = None
    estimators, dask_ml = request.estimators, request.dask_ml
    if (estimators or dask_ml) and data.X_dense is not None:
        inputs = EstimatorInputs(
            inputs={
                "numpy": data.X_dense,
                "csr": sp.csr_matrix(data.X_dense),
                "dask": data.parts.X_train,
            },
            y=data.y_train,
            X_test=data.X_test,
            y_test=data.y_test,
        )
    by_strategy: dict[str, dict[int, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="distrib-bench-") as scratch:
        for strategy in (s for s in STRATEGIES if s in request.strategies):
            job = dataclasses.replace(config, strategy=strategy)
            blocks = strategy_for(strategy).holds_row_blocks
            by_strategy[strategy] = {
                k: _distrib_runs(
                    job,
                    k,
                    scheduler=request.scheduler,
                    tls=request.tls,
                    repeat=timing.repeat,
                    warmup=timing.warmup,
                    home=request.home,
                    scratch=Path(scratch),
                    say=timing.say,
                    # the estimator's Dask-array path keeps rows as blocks; dask-ml's binary
                    # LogisticRegression is a one-vs-rest peer
                    estimator_inputs=inputs if estimators and blocks else None,
                    dask_ml_inputs=inputs if dask_ml and not blocks else None,
                    # stepped fits of grown data would take minutes each
                    to_target=request.targets and not data.grown,
                )
                for k in request.worker_counts()
            }
    return by_strategy
