"""Whole commands timed as a user times them, side by side in one run.

Each repeat runs, one after another, a ``distrib train`` process for every strategy and
worker count asked for (a fresh local cluster each: its start, the workers' imports, the
report and the exit all count) and the plain scikit-learn scripts a user would write
instead (`distrib.bench.plain_sklearn`: the multinomial fit in one process, and loky's
``OneVsRestClassifier`` with as many processes as workers). The wall time of each process
is measured from here, as ``time`` would; the ratios compare medians of the same run.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distrib.config import TrainConfig
from distrib.errors import ClusterError

#: Seconds one command may take before the benchmark gives up on it.
COMMAND_TIMEOUT = 900.0


@dataclass(frozen=True)
class Baseline:
    """A plain script ``distrib train`` is held against."""

    model: str  # the script's --model (`distrib.bench.plain_sklearn`)
    label: str
    processes: bool  # runs as many loky processes as distrib has workers; else one process

    def key(self, workers: int) -> str:
        """The script's key in the results, with ``workers`` processes where it has them."""
        return f"script {self.model}" + (f", {workers} process(es)" if self.processes else "")


#: What each strategy's ``distrib train`` is held against.
BASELINES = {
    "multinomial": Baseline(
        "multinomial", "scikit-learn multinomial lbfgs, one process (dense rows)", False
    ),
    "ovr": Baseline("ovr", "loky OneVsRestClassifier(n_jobs=workers) (CSR rows)", True),
}


@dataclass(frozen=True)
class Command:
    """One process to time: its key in the results, its arguments, and where its test
    accuracy can be read once it has run."""

    key: str
    argv: list[str]
    program: str  # "distrib" or "script"
    model: str  # "multinomial" or "ovr"
    workers: int  # workers, or loky processes; 1 for the one-process script
    run_dir: Path | None = None  # a distrib run folder (metrics.json), else the last line


def _train_command(
    config: TrainConfig, strategy: str, workers: int, home: str | None, out: Path
) -> Command:
    argv = [sys.executable, "-m", "distrib", "train", "--strategy", strategy,
            "--dataset", config.dataset, "-C", str(config.C), "--max-iter", str(config.max_iter),
            "--workers", str(workers), "--dashboard-address", ":0", "--quiet",
            "--out", str(out)]  # fmt: skip
    if home is not None:
        argv += ["--data-home", home]
    key = f"distrib {strategy}, {workers} worker(s)"
    return Command(key, argv, "distrib", strategy, workers, out)


def _script_command(
    config: TrainConfig, baseline: Baseline, n_jobs: int, home: str | None
) -> Command:
    argv = [sys.executable, "-m", "distrib.bench.plain_sklearn", "--model", baseline.model,
            "--dataset", config.dataset, "--max-iter", str(config.max_iter),
            "--n-jobs", str(n_jobs)]  # fmt: skip
    if home is not None:
        argv += ["--data-home", home]
    workers = n_jobs if baseline.processes else 1
    return Command(baseline.key(n_jobs), argv, "script", baseline.model, workers)


def _run(command: Command) -> tuple[float, float]:
    """Run ``command``; return its wall time and the test accuracy it reports."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            command.argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(
            f"{command.key} took longer than {COMMAND_TIMEOUT:g} s: {' '.join(command.argv)}"
        ) from exc
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ClusterError(f"{command.key} failed (exit {proc.returncode}): {last}")
    if command.run_dir is not None:
        metrics = json.loads((command.run_dir / "metrics.json").read_text())
        return wall, float(metrics["test_accuracy"])
    found = re.search(r"test accuracy ([0-9.]+)", proc.stdout)
    if found is None:
        raise ClusterError(f"{command.key} printed no test accuracy: {proc.stdout[-200:]!r}")
    return wall, float(found.group(1))


def run_sampled(argv: list[str], log: Path, timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``argv`` as a process (its output into ``log``): its wall time, and the peak
    resident size of it and of each process it starts (a local cluster's workers), sampled
    every 0.2 s from here (a worker's own accounting ends with it).

    Raises
    ------
    ClusterError
        The command failed or took longer than ``timeout`` seconds.
    """
    import threading

    import psutil

    peaks: dict[int, int] = {}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    for p in [root, *root.children(recursive=True)]:
                        peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    pass
                time.sleep(0.2)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            raise ClusterError(f"{' '.join(argv)} took longer than {timeout:g} s") from exc
        finally:
            done.set()
            watcher.join()
    if code != 0:
        raise ClusterError(f"{' '.join(argv)} failed (exit {code}): see {log}")
    main = peaks.pop(proc.pid, 0)
    return {
        "wall_seconds": time.perf_counter() - started,
        "process_peak_rss": main,
        "started_processes_peak_rss": sorted(peaks.values(), reverse=True),
    }


def time_commands(
    config: TrainConfig,
    *,
    strategies: Sequence[str],
    workers: Sequence[int],
    repeat: int,
    scratch: Path,
    home: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time ``distrib train`` processes and the plain scripts, interleaved, ``repeat`` times.

    Returns
    -------
    dict
        ``runs``: per command, what it runs (``program``: ``distrib`` or ``script``,
        ``model``, ``workers``), its arguments, every wall time, the median and the test
        accuracy; ``over_baseline``: per strategy and worker count, the command's median
        wall over its plain script's (``multinomial``: scikit-learn in one process;
        ``ovr``: loky with as many processes as workers), both from this run.
    """
    say = log or (lambda _msg: None)
    commands: list[Command] = []
    for strategy in strategies:
        for k in workers:
            commands.append(_train_command(config, strategy, k, home, scratch / "run"))
    for strategy in strategies:
        baseline = BASELINES[strategy]
        for k in workers if baseline.processes else [1]:
            commands.append(_script_command(config, baseline, k, home))
    walls: dict[str, list[float]] = {c.key: [] for c in commands}
    accuracy: dict[str, float] = {}
    for r in range(repeat):
        for command in commands:
            if command.run_dir is not None and command.run_dir.exists():
                shutil.rmtree(command.run_dir)
            wall, accuracy[command.key] = _run(command)
            walls[command.key].append(wall)
            say(f"[command {r + 1}/{repeat}] {command.key}: {wall:.2f} s, test accuracy "
                f"{accuracy[command.key]:.4f}")  # fmt: skip
    medians = {key: statistics.median(times) for key, times in walls.items()}
    runs = {
        c.key: {
            "program": c.program,
            "model": c.model,
            "workers": c.workers,
            "argv": [Path(c.argv[0]).name, *c.argv[1:]],
            "walls": walls[c.key],
            "median_wall": medians[c.key],
            "test_accuracy": accuracy[c.key],
        }
        for c in commands
    }
    over: dict[str, dict[str, float]] = {}
    for strategy in strategies:
        for k in workers:
            mine = medians[f"distrib {strategy}, {k} worker(s)"]
            script = medians[BASELINES[strategy].key(k)]
            over.setdefault(strategy, {})[str(k)] = mine / script
    return {
        "runs": runs,
        "over_baseline": over,
        "baselines": {s: BASELINES[s].label for s in strategies},
    }
