"""Shared fixtures: real Dask clusters (worker processes) and a real MNIST cache."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from distrib.data.datasets import fetch_mnist, load_mnist

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def two_workers(memory_limit: str = "auto") -> Iterator[Client]:
    """A client of a LocalCluster of 2 worker processes x 1 thread, closed at the end."""
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit=memory_limit,
    )
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=60)
        yield client
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)


@pytest.fixture(scope="session")
def cluster_client() -> Iterator[Client]:
    """2 worker processes x 1 thread, shared by the session."""
    with two_workers() as client:
        yield client


@pytest.fixture(scope="session")
def mnist_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data home holding the verified MNIST cache, fetched once per session."""
    home = tmp_path_factory.mktemp("data-home")
    fetch_mnist(home)
    return home


@pytest.fixture(scope="session")
def mnist_arrays(mnist_home: Path) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST as numpy (uint8)."""
    dataset = load_mnist(mnist_home, fetch=False)
    return dataset.X.compute(scheduler="threads"), dataset.y.compute(scheduler="threads")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m distrib ARGS`` in a subprocess, bounded in time."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "distrib", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )


class DaskProcesses:
    """A real ``dask scheduler`` and any number of ``dask worker`` processes.

    Started as ``python -m dask ...`` with this interpreter, logs in ``workdir``.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"proc-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.procs.append(proc)
        return proc

    def start_scheduler(self, *extra: str, timeout: float = 30) -> str:
        """A ``dask scheduler`` on a free local port; ``extra`` flags appended."""
        sched_file = self.workdir / "scheduler.json"
        self._spawn(
            "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(sched_file),
            *extra,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sched_file.exists():
                import json

                try:
                    self.address = json.loads(sched_file.read_text())["address"]
                    return self.address
                except (ValueError, KeyError):
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"dask scheduler did not start within {timeout} s")

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        """A ``dask worker`` (with a nanny) of one thread; ``extra`` flags appended."""
        return self._spawn(
            "dask",
            "worker",
            self.address,
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--host",
            "127.0.0.1",
            "--dashboard-address",
            "127.0.0.1:0",
            "--local-directory",
            str(self.workdir),
            *extra,
        )

    def stop(self, grace: float = 10) -> None:
        """Terminate every process; kill what is still alive after ``grace`` seconds."""
        for proc in reversed(self.procs):
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def dask_processes(tmp_path: Path) -> Iterator[DaskProcesses]:
    """Start real dask scheduler/worker processes; all are stopped at the end."""
    procs = DaskProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()
