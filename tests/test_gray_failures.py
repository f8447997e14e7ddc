"""Workers that stop answering without dying (issue 24): paused with SIGSTOP, real signals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from distrib import TrainConfig, train
from distrib.parallel.block_hosts import silence_deadline, worker_slots
from distrib.parallel.cluster import start_local_cluster


def test_the_silence_deadline_follows_the_fits_own_pace() -> None:
    import dask

    assert silence_deadline([0.05, 0.05]) is None  # too few evaluations to know the pace
    assert silence_deadline([0.05, 0.04, 0.06]) == 2.0  # 10 x 0.05 s, at least 2 s
    assert silence_deadline([0.5, 0.4, 0.6, 9.0]) == pytest.approx(5.5)  # 10 x the median
    with dask.config.set({"distrib.silent-host.factor": 4, "distrib.silent-host.minimum": "1s"}):
        assert silence_deadline([0.5, 0.4, 0.6]) == pytest.approx(2.0)
        assert silence_deadline([0.01, 0.01, 0.01]) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("role", ["relayed", "relaying"])
def test_a_paused_worker_is_given_up_and_the_model_is_the_same(
    mnist_home: Path, tmp_path: Path, role: str
) -> None:
    """3 workers, two groups (the first host relays for the second): SIGSTOP one worker
    process after 20 L-BFGS iterations. Its sockets stay open and the scheduler keeps
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

        def log(message: str) -> None:
            messages.append(message)
            if message.startswith("[20/250] L-BFGS") and not paused:
                os.kill(pids[victim], signal.SIGSTOP)
                paused[victim] = time.monotonic()

        result = train(config, client=client, out=tmp_path / "run", home=mnist_home, log=log)
    finally:
        for worker in paused:
            os.kill(pids[worker], signal.SIGCONT)
        client.close(timeout=10)
        cluster.close(timeout=10)

    assert paused, "no worker was paused"
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
