"""Worker loss, driver crash and resume, scheduler loss, mismatched workers: real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import load_digits

from distrib import TrainConfig, train
from distrib.linear.model import LinearModel
from distrib.parallel.blocks.block import block_loss_grad, load_block
from distrib.parallel.blocks.partial_sums import total
from distrib.parallel.blocks.runner import ClusterBlocks
from distrib.parallel.cluster import start_local_cluster
from distrib.parallel.rows import InMemoryArrays
from distrib.run.checkpoint import Checkpoints

from .conftest import REPO, DaskProcesses, run_cli


@pytest.fixture(scope="module")
def reference_run(mnist_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An undisturbed full-MNIST run with default settings."""
    out = tmp_path_factory.mktemp("reference") / "run"
    cluster = start_local_cluster(2)
    client = Client(cluster, set_as_default=False)
    try:
        train(TrainConfig(), client=client, out=out, home=mnist_home)
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)
    return out


def _same_model(run: Path, reference: Path) -> None:
    model, _ = LinearModel.load(run)
    expected, _ = LinearModel.load(reference)
    np.testing.assert_allclose(model.coef, expected.coef, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.intercept, expected.intercept, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_worker_killed_mid_fit_gives_the_same_model(
    mnist_home: Path, reference_run: Path, tmp_path: Path
) -> None:
    cluster = start_local_cluster(2)
    client = Client(cluster, set_as_default=False)
    try:
        pids = client.run(os.getpid)
        killed: list[str] = []

        def log(message: str) -> None:
            # When the first class arrives, the other worker is busy with its own class.
            if "fitted on" in message and not killed:
                finished_on = message.split(" fitted on ")[1].split()[0]
                victim = next(w for w in pids if w != finished_on)
                killed.append(victim)
                os.kill(pids[victim], signal.SIGKILL)

        result = train(TrainConfig(), client=client, out=tmp_path / "run", home=mnist_home, log=log)
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)

    assert killed, "no worker was killed"
    _same_model(tmp_path / "run", reference_run)
    retried = [r for r in result.metrics["fits"] if r["retries"]]
    assert retried, result.metrics["fits"]
    for record in retried:
        assert record["retries"][0]["worker"] == killed[0]
        assert "left the cluster" in record["retries"][0]["why"]
        assert record["worker"] != killed[0]
    # Only classes that ran on the killed worker are refit (checked above): the one it was
    # fitting, and any it had finished whose result had not yet left it (Dask recomputes
    # results lost with their worker).
    assert len(retried) < 10
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_worker_killed_mid_multinomial_fit_recomputes_its_rows_same_model(
    mnist_home: Path, tmp_path: Path
) -> None:
    """SIGKILL a worker after 3 Newton-CG iterations (of 9): Dask reloads its block of rows
    from the prepared files (by path) on a live worker, the solver continues, the model is the
    one an undisturbed run gives."""
    config = TrainConfig(strategy="multinomial")
    cluster = start_local_cluster(2)
    client = Client(cluster, set_as_default=False)
    try:
        reference = train(config, client=client, out=tmp_path / "reference", home=mnist_home)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]

        def log(message: str) -> None:
            if message.startswith("[3/100] Newton-CG"):
                os.kill(pids[victim], signal.SIGKILL)

        result = train(config, client=client, out=tmp_path / "run", home=mnist_home, log=log)
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)

    _same_model(tmp_path / "run", tmp_path / "reference")
    assert result.metrics["test_accuracy"] == reference.metrics["test_accuracy"]
    assert result.metrics["solver"]["n_evaluations"] == reference.metrics["solver"]["n_evaluations"]
    reloaded = [b for b in result.metrics["fits"] if len(b["loads"]) > 1]
    assert len(reloaded) == 1, result.metrics["fits"]
    first, again = reloaded[0]["loads"][:2]
    assert first["worker"] == victim and not first["worker_alive"]
    assert again["worker"] != victim


@pytest.mark.slow
@pytest.mark.parametrize("role", ["relaying", "relayed"])
def test_a_worker_killed_under_a_relay_gives_the_same_sums(role: str) -> None:
    """Two workers, one group: the first host relays every evaluation to the second. SIGKILL
    either mid-evaluation: its rows are loaded again on the live worker and every evaluation
    still sums to exactly what the same blocks give here."""
    X, y = load_digits(return_X_y=True)
    X, y = np.tile(X.astype(np.float32), (200, 1)), np.tile(y, 200)  # ~20 ms per block
    data = InMemoryArrays(X, y)
    classes = np.arange(10)
    rng = np.random.default_rng(0)
    points = [(rng.normal(size=(10, 64)) * 0.01, rng.normal(size=10)) for _ in range(6)]
    cluster = start_local_cluster(2)
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=60)
        runner = ClusterBlocks.from_training_data(client, data, classes, timeout=120, groups=1)
        got = [runner.evaluate(*points[0], None)]
        assert got[0].relayed == 1, "the second host was reached through the first"
        victim = runner.placement[0 if role == "relaying" else 1]
        pid = client.run(os.getpid)[victim]
        for k, point in enumerate(points[1:], start=1):
            if k == 2:
                threading.Timer(0.005, os.kill, (pid, signal.SIGKILL)).start()
            got.append(runner.evaluate(*point, None))
        runner.release()
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)

    assert victim not in runner.placement and sum(runner.losses.values()) == 1
    assert got[2].relayed == 0, "killed mid-evaluation: the live host evaluated both blocks"
    blocks = [load_block(data, a, b, classes) for a, b in ((0, len(y) // 2), (len(y) // 2, len(y)))]
    assert [(s["start"], s["rows"]) for s in runner.describe()] == [
        (0, len(y) // 2),
        (len(y) // 2, len(y) - len(y) // 2),
    ]
    for evaluation, (coef, intercept) in zip(got, points, strict=True):
        here = {i: block_loss_grad(block, coef, intercept, None) for i, block in enumerate(blocks)}
        expected = total(((0, 1),), here)
        assert evaluation.total.loss == expected.loss
        np.testing.assert_array_equal(evaluation.total.grad, expected.grad)


def _start_train(*args: str, new_session: bool = False) -> subprocess.Popen[str]:
    """``distrib train ARGS`` in the background, its stderr readable line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "distrib", "train", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        start_new_session=new_session,
    )


def _read_lines_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if needle in line:
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    return lines


@pytest.mark.slow
def test_driver_killed_mid_fit_then_resumed_gives_the_same_model(
    mnist_home: Path, reference_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = _start_train(
        "--workers",
        "1",
        "--dashboard-address",
        ":0",
        "--out",
        str(run),
        "--data-home",
        str(mnist_home),
        new_session=True,
    )
    try:
        lines = _read_lines_until(proc, "[ 3/10]", timeout=120)
        assert any("[ 3/10]" in ln for ln in lines), "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local cluster, all at once
        proc.wait(timeout=30)
    assert not (run / "model.npz").exists() and not (run / "metrics.json").exists()
    saved = Checkpoints(run).load()
    assert 3 <= len(saved) < 10

    resumed = run_cli(
        "train",
        "--resume",
        str(run),
        "--workers",
        "2",
        "--dashboard-address",
        ":0",
        "--data-home",
        str(mnist_home),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(saved)} class(es) from checkpoints, {10 - len(saved)} to fit" in (
        resumed.stderr
    )
    _same_model(run, reference_run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(r["from_checkpoint"] for r in metrics["fits"]) == len(saved)
    assert not (run / "checkpoints").exists()


def _interrupted_digits_run(tmp_path: Path) -> Path:
    """A digits run folder holding a manifest and no class yet, as after an early crash."""
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        "--dataset",
        "digits",
        "--workers",
        "1",
        "--dashboard-address",
        ":0",
        "--out",
        str(run),
        "--data-home",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((run / "model.json").read_text())
    for name in ("model.npz", "model.json", "metrics.json"):
        (run / name).unlink()
    checkpoints = Checkpoints(run)
    checkpoints.begin(
        {
            "settings": {k: v for k, v in manifest["settings"].items() if k != "preset"},
            "data": {
                k: manifest["data"][k]
                for k in ("dataset", "X_sha256", "y_sha256", "split", "scale")
            },
            "layout": "dense",
            "classes": list(range(10)),
            "distrib_version": manifest["distrib_version"],
        },
        resume=False,
    )
    return run


@pytest.mark.slow
def test_resume_refuses_other_settings_naming_them(tmp_path: Path) -> None:
    run = _interrupted_digits_run(tmp_path)
    proc = run_cli(
        "train",
        "--resume",
        str(run),
        "-C",
        "2",
        "--data-home",
        str(tmp_path),
        "--workers",
        "1",
        "--dashboard-address",
        ":0",
    )
    assert proc.returncode == 1
    assert "Error: cannot resume" in proc.stderr
    assert "settings.C: checkpoint has 0.1, this run 2.0" in proc.stderr
    assert not (run / "model.npz").exists()

    finished = run_cli(
        "train",
        "--resume",
        str(run),
        "--data-home",
        str(tmp_path),
        "--workers",
        "1",
        "--dashboard-address",
        ":0",
    )
    assert finished.returncode == 0, finished.stderr
    again = run_cli("train", "--resume", str(run), "--data-home", str(tmp_path))
    assert again.returncode == 1 and "is a finished run" in again.stderr


def test_resume_of_a_folder_without_checkpoint(tmp_path: Path) -> None:
    proc = run_cli("train", "--resume", str(tmp_path), "--dataset", "digits")
    assert proc.returncode == 1
    assert "holds no checkpoint" in proc.stderr and "Traceback" not in proc.stderr


KILLER = """
import os
import time

import distrib.parallel.dispatch as dispatch

# A preload may run more than once in a process: wrap the originals only.
_fit = getattr(dispatch, "_unpatched_fit_binary", dispatch._fit_binary)
dispatch._unpatched_fit_binary = _fit
_fit_together = getattr(dispatch, "_unpatched_fit_lockstep", dispatch._fit_lockstep)
dispatch._unpatched_fit_lockstep = _fit_together


def _die(label, run_id, group=None):  # as an out-of-memory kill would
    dispatch._announce_attempt(label, run_id, group)
    time.sleep(0.5)
    os._exit(1)


def _fit_binary(data, label, params, run_id=None):
    if label == 3:  # this class exhausts its worker
        _die(label, run_id)
    return _fit(data, label, params, run_id)


def _fit_lockstep(data, labels, params, run_id=None):
    if 3 in labels:  # the task holding this class exhausts its worker
        _die(3, run_id, labels)
    return _fit_together(data, labels, params, run_id)


dispatch._fit_binary = _fit_binary
dispatch._fit_lockstep = _fit_lockstep
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("solver", "named"),
    [
        ("saga", "class 3 was started 2 times"),  # a task per class
        ("lbfgs", "the task fitting classes 1, 3, 5, 7, 9 together was started 2 times"),
    ],
)
def test_a_class_that_kills_workers_is_named(
    dask_processes: DaskProcesses,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    solver: str,
    named: str,
) -> None:
    (tmp_path / "killer.py").write_text(KILLER)
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "1")
    address = dask_processes.start_scheduler()
    dask_processes.start_worker("--preload", str(tmp_path / "killer.py"))
    dask_processes.start_worker("--preload", str(tmp_path / "killer.py"))
    run = tmp_path / "run"
    started = time.monotonic()
    proc = run_cli(
        "train",
        "--dataset",
        "digits",
        "--solver",
        solver,
        "--scheduler",
        address,
        "--wait-workers",
        "2",
        "--out",
        str(run),
        "--data-home",
        str(tmp_path),
        timeout=180,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{named} and each time its worker died" in last, last
    assert f"distrib train --resume {run}" in last
    assert time.monotonic() - started < 150
    assert not (run / "model.npz").exists()
    assert 3 not in Checkpoints(run).load()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "progress"), [("ovr", "[ 1/10]"), ("multinomial", "[10/100] L-BFGS")]
)  # L-BFGS: ~100 evaluations, the fit still running when the scheduler goes
def test_scheduler_lost_mid_fit_fails_fast(
    dask_processes: DaskProcesses, mnist_home: Path, tmp_path: Path, strategy: str, progress: str
) -> None:
    """The multinomial fit calls its workers directly between evaluations, not through the
    scheduler: it must notice the scheduler's loss all the same."""
    address = dask_processes.start_scheduler()
    dask_processes.start_worker()
    run = tmp_path / "run"
    proc = _start_train(
        "--scheduler",
        address,
        "--strategy",
        strategy,
        "--solver",
        "lbfgs",
        "--out",
        str(run),
        "--data-home",
        str(mnist_home),
    )
    try:
        lines = _read_lines_until(proc, progress, timeout=120)
        assert any(progress in ln for ln in lines), "".join(lines)
        dask_processes.procs[0].kill()  # the scheduler
        killed = time.monotonic()
        proc.wait(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    assert proc.returncode == 1
    last = "".join(lines).strip().splitlines()[-1]
    assert f"lost the Dask scheduler at {address} during the fit" in last, last
    assert "--resume" in last
    assert elapsed < 45
    assert not (run / "model.npz").exists()


VERSIONS = """
import distrib.parallel.cluster as cluster

_real = getattr(cluster, "_unpatched_package_versions", cluster.package_versions)
cluster._unpatched_package_versions = _real


def package_versions():
    return {**_real(), "scikit-learn": "0.0-other"}


cluster.package_versions = package_versions
"""


def test_workers_with_other_library_versions_are_refused(
    dask_processes: DaskProcesses, tmp_path: Path
) -> None:
    (tmp_path / "versions.py").write_text(VERSIONS)
    address = dask_processes.start_scheduler()
    dask_processes.start_worker("--preload", str(tmp_path / "versions.py"))
    proc = run_cli(
        "train",
        "--dataset",
        "digits",
        "--scheduler",
        address,
        "--out",
        str(tmp_path / "run"),
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "workers run other library versions than this client" in last
    assert "has scikit-learn 0.0-other" in last
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_worker_killed_mid_streamed_fit_gives_the_in_memory_model(
    mnist_home: Path, tmp_path: Path
) -> None:
    """Rows streamed from disk (--rows disk): SIGKILL a worker after 3 Newton-CG iterations;
    its block is opened again on the live worker, which streams both, and the model is the
    in-memory fit's of the same rows, bit for bit."""
    memory = TrainConfig(strategy="multinomial", layout="sparse", rows="memory")
    streamed = TrainConfig(strategy="multinomial", layout="sparse", rows="disk")
    cluster = start_local_cluster(2)
    client = Client(cluster, set_as_default=False)
    try:
        reference = train(memory, client=client, out=tmp_path / "reference", home=mnist_home)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]

        def log(message: str) -> None:
            if message.startswith("[3/100] Newton-CG"):
                os.kill(pids[victim], signal.SIGKILL)

        result = train(streamed, client=client, out=tmp_path / "run", home=mnist_home, log=log)
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)

    assert np.array_equal(result.model.coef, reference.model.coef)  # bit for bit
    assert np.array_equal(result.model.intercept, reference.model.intercept)
    assert result.metrics["train_accuracy"] == reference.metrics["train_accuracy"]
    assert result.metrics["transfer"] == "streamed"
    reads = result.metrics["solver"]["per_evaluation"]["read_bytes"]
    assert min(reads) > 0
    reloaded = [b for b in result.metrics["fits"] if len(b["loads"]) > 1]
    assert len(reloaded) == 1, result.metrics["fits"]
    first, again = reloaded[0]["loads"][:2]
    assert first["worker"] == victim and not first["worker_alive"]
    assert again["worker"] != victim
