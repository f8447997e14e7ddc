"""Multinomial fits resume where they stopped, bit for bit (issue 25): the evaluation log."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client

from distrib import TrainConfig, train
from distrib.errors import ConfigError
from distrib.run.checkpoint import _RECORD, EVALUATION_LOG, Checkpoints, EvaluationLog

from .conftest import DaskProcesses, run_cli
from .test_faults import _read_lines_until, _start_train


def _points(n: int, size: int = 30) -> list[tuple[np.ndarray, float, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.normal(size=size), float(rng.normal()), rng.normal(size=size)) for _ in range(n)]


def test_the_log_replays_what_it_holds_then_logs_on(tmp_path: Path) -> None:
    path = tmp_path / "log"
    points = _points(4)
    log = EvaluationLog(path, resume=False)
    for w, loss, grad in points[:3]:
        log.append(w, loss, grad)
    log.close()
    again = EvaluationLog(path, resume=True)
    for i, (w, loss, grad) in enumerate(points[:3]):
        got = again.replay(i, w.copy())
        assert got is not None and got[0] == loss
        np.testing.assert_array_equal(got[1], grad)
    assert again.replay(3, points[3][0]) is None and again.replayed == 3
    again.append(*points[3])
    again.close()
    assert len(EvaluationLog(path, resume=True).logged) == 4
    assert EvaluationLog(path, resume=False).logged == []  # a new run starts it anew


def test_a_torn_last_record_is_dropped_and_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = EvaluationLog(path, resume=False)
    for point in _points(3):
        log.append(*point)
    log.close()
    whole = path.stat().st_size
    with path.open("r+b") as fh:  # the driver was killed while it wrote the third record
        fh.truncate(whole - 17)
    again = EvaluationLog(path, resume=True)
    assert len(again.logged) == 2
    again.append(*_points(3)[2])
    again.close()
    assert path.stat().st_size == whole
    assert len(EvaluationLog(path, resume=True).logged) == 3


def test_a_flipped_byte_or_other_coefficients_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "log"
    path.parent.mkdir()
    log = EvaluationLog(path, resume=False)
    points = _points(3)
    for point in points:
        log.append(*point)
    log.close()
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x10
    path.write_bytes(bytes(damaged))
    with pytest.raises(ConfigError, match=r"evaluation 2 in .* fails its checksum"):
        EvaluationLog(path, resume=True)
    path.write_bytes(good)
    again = EvaluationLog(path, resume=True)
    with pytest.raises(ConfigError, match=r"evaluation 1 .* other coefficients"):
        again.replay(0, points[0][0] + 1e-12)
    again.close()


def _same_model_and_evaluations(
    run: Path, reference: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both runs' models equal bit for bit, after as many evaluations; their solver records."""
    with np.load(run / "model.npz") as got, np.load(reference / "model.npz") as ref:
        np.testing.assert_array_equal(got["coef"], ref["coef"])
        np.testing.assert_array_equal(got["intercept"], ref["intercept"])
    solver = json.loads((run / "metrics.json").read_text())["solver"]
    expected = json.loads((reference / "metrics.json").read_text())["solver"]
    assert solver["n_evaluations"] == expected["n_evaluations"]
    return solver, expected


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    ("grow", "rows", "solver"),
    [(1, "auto", "auto"), (2, "auto", "auto"), (1, "disk", "auto"), (1, "auto", "lbfgs")],
)
def test_an_interrupted_digits_fit_resumes_to_the_same_model(
    cluster_client: Client, tmp_path: Path, grow: int, rows: str, solver: str
) -> None:
    """Stop a multinomial digits fit after 30 iterations (an exception from its progress
    callback, as a crash would); `resume` replays the logged evaluations without the
    cluster and goes on: the undisturbed model, bit for bit, after as many evaluations.
    Grown rows (made on the workers as chunks of a Dask array) and rows streamed from disk
    too."""
    config = TrainConfig(dataset="digits", strategy="multinomial", max_iter=80, tol=1e-9,
                         grow=grow, rows=rows, solver=solver)  # fmt: skip
    reference = train(config, client=cluster_client, out=tmp_path / "reference", home=tmp_path)
    # Newton-CG's products on the sample are made again on resume, from the same rows
    where, least = ("[30/80] L-BFGS", 30) if solver == "lbfgs" else ("[3/80] Newton-CG", 4)

    def stop(message: str) -> None:
        if message.startswith(where):
            raise _Interrupted

    run = tmp_path / "run"
    with pytest.raises(_Interrupted):
        train(config, client=cluster_client, out=run, home=tmp_path, log=stop)
    logged = len(EvaluationLog(Checkpoints(run).folder / EVALUATION_LOG, resume=True).logged)
    assert logged >= least and not (run / "model.npz").exists()

    messages: list[str] = []
    result = train(config, client=cluster_client, out=run, home=tmp_path, resume=True,
                   log=messages.append)  # fmt: skip
    np.testing.assert_array_equal(result.model.coef, reference.model.coef)
    np.testing.assert_array_equal(result.model.intercept, reference.model.intercept)
    solver, expected = result.metrics["solver"], reference.metrics["solver"]
    assert solver["n_evaluations"] == expected["n_evaluations"]
    assert solver["resumed"]["replayed_evaluations"] == logged == solver["replayed_evaluations"]
    assert any(m.startswith(f"resuming: {logged} evaluation(s) logged") for m in messages)
    assert any(m.startswith(f"resumed at evaluation {logged + 1}") for m in messages)
    assert not Checkpoints(run).folder.exists()  # removed with the run's files written

    if grow > 1 or rows == "disk" or solver == "lbfgs":
        return
    # other settings are refused before any work, naming the setting
    with pytest.raises(_Interrupted):
        train(config, client=cluster_client, out=tmp_path / "other", home=tmp_path, log=stop)
    with pytest.raises(ConfigError, match=r"settings\.C: checkpoint has 0\.1, this run 0\.5"):
        train(TrainConfig(dataset="digits", strategy="multinomial", max_iter=80, tol=1e-9,
                          C=0.5), client=cluster_client, out=tmp_path / "other", home=tmp_path,
              resume=True)  # fmt: skip


@pytest.mark.slow
def test_driver_killed_mid_multinomial_fit_then_resumed_gives_the_same_model(
    mnist_home: Path, tmp_path: Path
) -> None:
    """SIGKILL the driver (and its local cluster of 2 workers) halfway through a
    250-iteration L-BFGS fit of MNIST; `distrib train --resume` on 3 workers replays the log
    and ends with the undisturbed model."""
    common = ["--strategy", "multinomial", "--solver", "lbfgs", "--max-iter", "250", "--tol",
              "1e-9", "--workers", "2", "--dashboard-address", ":0", "--data-home",
              str(mnist_home)]  # fmt: skip
    reference = run_cli("train", *common, "--out", str(tmp_path / "reference"), timeout=600)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    proc = _start_train(*common, "--out", str(run), new_session=True)
    try:
        lines = _read_lines_until(proc, "[120/250]", timeout=300)
        assert any("[120/250]" in ln for ln in lines), "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (run / "model.npz").exists()
    # on another number of workers: the blocks and the order of their sums are the first run's
    resumed = run_cli("train", "--resume", str(run), "--workers", "3", "--dashboard-address",
                      ":0", "--data-home", str(mnist_home), timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: " in resumed.stderr and "evaluation(s) logged" in resumed.stderr
    solver, expected = _same_model_and_evaluations(run, tmp_path / "reference")
    replayed = solver["resumed"]["replayed_evaluations"]
    assert 100 <= replayed < expected["n_evaluations"]
    # the resumed fit's solver time is about the remaining share of the undisturbed one's
    share = 1 - replayed / expected["n_evaluations"]
    print(f"\nreplayed {replayed} of {expected['n_evaluations']} evaluations in "
          f"{solver['resumed']['replay_seconds']:.2f} s; solver {solver['seconds']:.2f} s "
          f"against {expected['seconds']:.2f} s undisturbed ({share:.0%} left)")  # fmt: skip
    assert solver["seconds"] < expected["seconds"] * share + 5
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["cluster"]["workers"] == 3 and len(metrics["fits"]) == 2  # the first run's


@pytest.mark.slow
def test_a_lost_cluster_then_a_resume_on_a_new_one_gives_the_same_model(
    mnist_home: Path, tmp_path: Path
) -> None:
    """A real `dask scheduler` and its 2 workers SIGKILLed mid-fit (Newton-CG, after its
    third iteration): the driver stops naming `--resume`; resumed against a new scheduler
    with 3 workers, the fit gathers its Hessian's sample again from the first run's blocks,
    replays its log and ends with the model of an undisturbed run, bit for bit."""
    common = ["--strategy", "multinomial", "--max-iter", "250", "--tol", "1e-9",
              "--data-home", str(mnist_home)]  # fmt: skip
    reference = run_cli("train", *common, "--workers", "2", "--dashboard-address", ":0",
                        "--out", str(tmp_path / "reference"), timeout=600)  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    first = DaskProcesses(tmp_path / "first-cluster")
    second = DaskProcesses(tmp_path / "second-cluster")
    (tmp_path / "first-cluster").mkdir()
    (tmp_path / "second-cluster").mkdir()
    run = tmp_path / "run"
    try:
        first.start_scheduler()
        for _ in range(2):
            first.start_worker()
        proc = _start_train(*common, "--scheduler", first.address, "--wait-workers", "2",
                            "--out", str(run))  # fmt: skip
        try:
            lines = _read_lines_until(proc, "[3/250] Newton-CG", timeout=300)
            assert any("[3/250] Newton-CG" in ln for ln in lines), "".join(lines)
            for cluster_process in first.procs:  # the whole cluster, at once
                cluster_process.kill()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == 1
        assert any("--resume" in ln for ln in lines[-3:]), "".join(lines[-5:])
        second.start_scheduler()
        for _ in range(3):
            second.start_worker()
        resumed = run_cli("train", "--resume", str(run), "--scheduler", second.address,
                          "--wait-workers", "3", "--data-home", str(mnist_home),
                          timeout=600)  # fmt: skip
    finally:
        first.stop()
        second.stop()
    assert resumed.returncode == 0, resumed.stderr
    solver, _ = _same_model_and_evaluations(run, tmp_path / "reference")
    assert solver["resumed"]["replayed_evaluations"] >= 4  # Newton-CG: its third iteration


def _inside_the_middle_record(log: bytes) -> int:
    """A byte of the middle record's payload (its loss), wherever the kill left the log:
    the middle of the file falls on a record's header for an even number of records."""
    starts, at = [], 0
    while at + _RECORD.size <= len(log):
        starts.append(at)
        at += _RECORD.size + _RECORD.unpack_from(log, at)[1]
    return starts[len(starts) // 2] + _RECORD.size + 33


@pytest.mark.slow
def test_a_grown_fit_killed_then_resumed_and_damaged_logs(tmp_path: Path) -> None:
    """Digits grown 16x (rows made on the workers), the driver SIGKILLed halfway through 200
    L-BFGS iterations (Newton-CG ends this fit in 7; the fast test above resumes it). From
    copies of the interrupted run: resumed as it is and with its last record torn (the
    undisturbed model, bit for bit), refused with a flipped byte or other settings (one
    line, nothing written, the log untouched)."""
    common = ["--dataset", "digits", "--grow", "16", "--strategy", "multinomial", "--solver",
              "lbfgs", "--max-iter", "200", "--tol", "1e-12", "--dashboard-address", ":0",
              "--data-home", str(tmp_path)]  # fmt: skip
    reference = run_cli("train", *common, "--workers", "2", "--out", str(tmp_path / "reference"),
                        timeout=300)  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    proc = _start_train(*common, "--workers", "2", "--out", str(run), new_session=True)
    try:
        lines = _read_lines_until(proc, "[100/200]", timeout=200)  # about half of the fit
        assert any("[100/200]" in ln for ln in lines), "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (run / "model.npz").exists()
    copies = {name: tmp_path / name for name in ("torn", "flipped", "other")}
    for copy in copies.values():
        shutil.copytree(run, copy)
    torn_log = Checkpoints(copies["torn"]).folder / EVALUATION_LOG
    with torn_log.open("r+b") as fh:  # killed while it wrote its last record
        fh.truncate(torn_log.stat().st_size - 17)
    flipped_log = Checkpoints(copies["flipped"]).folder / EVALUATION_LOG
    damaged = bytearray(flipped_log.read_bytes())
    damaged[_inside_the_middle_record(bytes(damaged))] ^= 0x10
    flipped_log.write_bytes(bytes(damaged))

    resume = ["--workers", "3", "--dashboard-address", ":0", "--data-home", str(tmp_path)]
    for name in ("run", "torn"):
        resumed = run_cli("train", "--resume", str(tmp_path / name), *resume, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        solver, expected = _same_model_and_evaluations(tmp_path / name, tmp_path / "reference")
        replayed = solver["resumed"]["replayed_evaluations"]
        assert 100 <= replayed < expected["n_evaluations"]
        share = 1 - replayed / expected["n_evaluations"]
        print(f"\n{name}: replayed {replayed} of {expected['n_evaluations']} evaluations; "
              f"solver {solver['seconds']:.2f} s against {expected['seconds']:.2f} s "
              f"undisturbed ({share:.0%} left)")  # fmt: skip
        assert not Checkpoints(tmp_path / name).folder.exists()  # removed once it is done

    for name, flags, refusal in [
        ("flipped", [], "fails its checksum: it is not this run's log"),
        ("other", ["--C", "0.5"], "settings.C: checkpoint has 0.1, this run 0.5"),
    ]:
        folder = copies[name]
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        refused = run_cli("train", "--resume", str(folder), *flags, *resume, timeout=300)
        assert refused.returncode == 1
        errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and refusal in errors[0], refused.stderr
        assert "Traceback" not in refused.stderr
        after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert after == before, "a refused resume must write nothing"
