"""Workers that stop answering without dying (issue 24): paused with SIGSTOP, real signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import load_digits

from distrib import TrainConfig, train
from distrib.parallel.blocks.block import block_loss_grad, load_block
from distrib.parallel.blocks.partial_sums import total
from distrib.parallel.blocks.runner import ClusterBlocks, worker_slots
from distrib.parallel.cluster import start_local_cluster
from distrib.parallel.deadlines import silence_deadline
from distrib.parallel.rows import InMemoryArrays


def test_the_silence_deadline_follows_the_fits_own_pace() -> None:
    import dask

    # too few evaluations to know the pace: distrib.silent-host.first (a host silent from
    # the first evaluation on is given up too; it was waited on forever)
    assert silence_deadline([]) == silence_deadline([0.05, 0.05]) == 60.0
    assert silence_deadline([0.05, 0.04, 0.06]) == 2.0  # 10 x 0.05 s, at least 2 s
    assert silence_deadline([0.5, 0.4, 0.6, 9.0]) == pytest.approx(5.5)  # 10 x the median
    with dask.config.set({"distrib.silent-host.factor": 4, "distrib.silent-host.minimum": "1s"}):
        assert silence_deadline([0.5, 0.4, 0.6]) == pytest.approx(2.0)
        assert silence_deadline([0.01, 0.01, 0.01]) == 1.0
    with dask.config.set({"distrib.silent-host.first": "5s"}):
        assert silence_deadline([0.05]) == 5.0


@pytest.mark.slow
@pytest.mark.parametrize("role", ["relayed", "relaying"])
def test_a_paused_worker_is_given_up_and_the_model_is_the_same(
    mnist_home: Path, tmp_path: Path, role: str
) -> None:
    """3 workers, two groups (the first host relays for the second): SIGSTOP one worker
    process after 3 Newton-CG iterations. Its sockets stay open and the scheduler keeps
    listing it; the fit gives it up once an evaluation has waited past the deadline, loads
    its block on the live workers, and ends with the undisturbed model bit for bit, after
    as many evaluations."""
    config = TrainConfig(strategy="multinomial", max_iter=250, tol=1e-9)
    cluster = start_local_cluster(3)
    client = Client(cluster, set_as_default=False)
    pids: dict[str, int] = {}
    paused: dict[str, float] = {}
    try:
        client.wait_for_workers(3, timeout=60)
        reference = train(config, client=client, out=tmp_path / "reference", home=mnist_home)
        pids = client.run(os.getpid)
        slots = worker_slots(client)
        victim = slots[1] if role == "relayed" else slots[0]

        messages: list[str] = []
        resumed: list[str] = []

        def log(message: str) -> None:
            messages.append(message)
            if message.startswith("[3/250] Newton-CG") and not paused:
                os.kill(pids[victim], signal.SIGSTOP)
                paused[victim] = time.monotonic()
            if message.startswith(f"{victim} given up") and not resumed:
                # the worker comes back mid-fit: its late replies are dropped, nothing changes
                os.kill(pids[victim], signal.SIGCONT)
                resumed.append(victim)

        result = train(config, client=client, out=tmp_path / "run", home=mnist_home, log=log)
    finally:
        for worker in paused:
            if worker not in resumed:
                os.kill(pids[worker], signal.SIGCONT)
        client.close(timeout=10)
        cluster.close(timeout=10)

    assert paused, "no worker was paused"
    assert resumed == [victim], "the paused worker should have come back mid-fit"
    solver, expected = result.metrics["solver"], reference.metrics["solver"]
    np.testing.assert_array_equal(result.model.coef, reference.model.coef)
    np.testing.assert_array_equal(result.model.intercept, reference.model.intercept)
    assert solver["n_evaluations"] == expected["n_evaluations"]
    assert [g["worker"] for g in solver["given_up"]] == [victim]
    assert "given up: no answer" in solver["given_up"][0]["why"] or (
        "no heartbeat" in solver["given_up"][0]["why"]
    )
    assert expected["given_up"] == []
    # the pause costs the deadline (2 s here) and a reload, not the scheduler's worker-ttl
    assert solver["seconds"] - expected["seconds"] < 10, (solver["seconds"], expected["seconds"])
    assert all(b["worker"] != victim for b in result.metrics["fits"])
    # the progress output named the worker while it waited, then said it gave it up
    assert any(m.startswith("evaluation ") and "waiting" in m and victim in m for m in messages)
    assert any(m.startswith(f"{victim} given up") for m in messages), messages
    print(f"\n{role}: solver {solver['seconds']:.2f} s against {expected['seconds']:.2f} s "
          f"undisturbed; {solver['given_up'][0]['why']}")  # fmt: skip


@pytest.mark.slow
def test_a_paused_worker_called_through_dask_is_given_up_too() -> None:
    """Two workers whose hosts are called through distributed's RPC (no direct channels:
    a worker that cannot open one, or ``direct=False``). SIGSTOP one after the fit's pace is
    known: the evaluation gives it up past the silence deadline instead of waiting for the
    scheduler's worker-ttl, loads its rows on the live worker, and still sums to exactly
    what the same blocks give here."""
    X, y = load_digits(return_X_y=True)
    X, y = np.tile(X.astype(np.float32), (200, 1)), np.tile(y, 200)  # ~20 ms per block
    data = InMemoryArrays(X, y)
    classes = np.arange(10)
    rng = np.random.default_rng(1)
    points = [(rng.normal(size=(10, 64)) * 0.01, rng.normal(size=10)) for _ in range(5)]
    cluster = start_local_cluster(2)
    client = Client(cluster, set_as_default=False)
    paused: list[int] = []
    messages: list[str] = []
    try:
        client.wait_for_workers(2, timeout=60)
        runner = ClusterBlocks.from_training_data(
            client, data, classes, timeout=120, direct=False, log=messages.append
        )
        got = [runner.evaluate(*point, None) for point in points[:4]]
        assert not runner.channels, "every host was called through distributed"
        victim = runner.placement[1]
        pid = client.run(os.getpid)[victim]
        os.kill(pid, signal.SIGSTOP)
        paused.append(pid)
        started = time.monotonic()
        got.append(runner.evaluate(*points[4], None))
        waited = time.monotonic() - started
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        client.close(timeout=10)
        cluster.close(timeout=10)

    assert list(runner.given_up) == [victim]
    assert "given up: no answer in" in runner.given_up[victim]["why"]
    assert any(m.startswith(f"{victim} given up") for m in messages), messages
    assert victim not in runner.placement
    assert waited < 15, f"the paused host held the evaluation {waited:.1f} s"
    blocks = [load_block(data, a, b, classes) for a, b in ((0, len(y) // 2), (len(y) // 2, len(y)))]
    for evaluation, (coef, intercept) in zip(got, points, strict=True):
        here = {i: block_loss_grad(block, coef, intercept, None) for i, block in enumerate(blocks)}
        expected = total(runner.tree, here)
        assert evaluation.total.loss == expected.loss
        np.testing.assert_array_equal(evaluation.total.grad, expected.grad)


def test_late_tasks_are_those_of_a_worker_whose_running_task_is_late() -> None:
    from distrib.parallel.deadlines import BackupPolicy, late_tasks

    policy = BackupPolicy(factor=2.0, minimum=1.0, min_finished=2)
    processing = {"a": ["t1", "t2"], "b": ["t3"], "c": []}
    started = {"t1": 0.0, "t3": 9.0}  # t2 waits behind t1 on worker a
    # too few finished: nobody is late yet
    assert late_tasks(10.0, started, [2.0], processing, ["t1", "t2", "t3"], policy) == {}
    # median 2 s: past 4 s a task is late; t1 has run 10 s, t3 only 1 s
    late = late_tasks(10.0, started, [2.0, 1.5, 3.0], processing, ["t1", "t2", "t3"], policy)
    assert late == {"t1": ("a", 10.0), "t2": ("a", 10.0)}
    # the minimum holds for quick tasks; a task already done is not backed up
    assert late_tasks(0.9, {"t1": 0.0}, [0.1, 0.1], processing, ["t1"], policy) == {}
    assert late_tasks(10.0, started, [2.0, 2.0], processing, ["t2"], policy) == {}
    assert BackupPolicy(enabled=False).deadline([1.0, 1.0, 1.0]) is None
    # a worker whose tasks never said they started is timed from when they were seen there
    silent = {"a": ["t1"], "b": []}
    assert late_tasks(10.0, {}, [2.0, 2.0], silent, ["t1"], policy) == {}
    assert late_tasks(10.0, {}, [2.0, 2.0], silent, ["t1"], policy, {"t1": 3.0}) == {
        "t1": ("a", 7.0)
    }


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["lbfgs", "saga"])
def test_a_paused_worker_s_classes_get_backup_attempts_and_the_model_is_the_same(
    mnist_home: Path, tmp_path: Path, solver: str
) -> None:
    """3 workers; one worker process SIGSTOPped 0.5 s into a one-vs-rest fit (lbfgs: its
    group of classes fitted in lockstep; saga: its class and the one queued behind it).
    Once its task has run past the finished tasks' pace, the task runs again on the live
    workers; the first attempt to finish wins, and the model is the undisturbed one."""
    import dask

    settings = {"lbfgs": {}, "saga": {"solver": "saga", "tol": 1e-2, "max_iter": 15}}[solver]
    config = TrainConfig(**settings)  # type: ignore[arg-type]
    cluster = start_local_cluster(3)
    client = Client(cluster, set_as_default=False)
    pids: dict[str, int] = {}
    paused: list[str] = []
    try:
        client.wait_for_workers(3, timeout=60)
        reference = train(config, client=client, out=tmp_path / "reference", home=mnist_home)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]
        messages: list[str] = []

        def log(message: str) -> None:
            messages.append(message)
            if message.startswith("fitting 10 one-vs-rest") and not paused:

                def pause() -> None:
                    time.sleep(0.5)
                    os.kill(pids[victim], signal.SIGSTOP)
                    paused.append(victim)

                threading.Thread(target=pause, daemon=True).start()

        with dask.config.set({"distrib.backup.factor": 1.5, "distrib.backup.minimum": "1s"}):
            result = train(config, client=client, out=tmp_path / "run", home=mnist_home, log=log)
    finally:
        for worker in paused:
            os.kill(pids[worker], signal.SIGCONT)
        client.close(timeout=10)
        cluster.close(timeout=10)

    assert paused == [victim]
    np.testing.assert_array_equal(result.model.coef, reference.model.coef)
    np.testing.assert_array_equal(result.model.intercept, reference.model.intercept)
    backups = result.metrics["solver"]["backups"]
    assert backups and {b["late_worker"] for b in backups} == {victim}
    assert all(b["winner"] == "backup" for b in backups)
    assert reference.metrics["solver"]["backups"] == []
    assert all(f["worker"] != victim for f in result.metrics["fits"] if f["retries"])
    retried = [f for f in result.metrics["fits"] if f["retries"]]
    assert retried and all("a backup attempt started elsewhere" in f["retries"][0]["why"]
                           for f in retried)  # fmt: skip
    assert any(f"{victim} has run a task for" in m for m in messages)
    # the pause costs about the deadline and the task again, not the scheduler's worker-ttl
    fit, undisturbed = result.metrics["timings"]["fit"], reference.metrics["timings"]["fit"]
    print(f"\nfit {fit:.2f} s paused, {undisturbed:.2f} s undisturbed")
    assert fit < 3 * undisturbed + 5
