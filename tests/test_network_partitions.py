"""Silent partitions (issue 24): the hosts are Linux network namespaces, and one worker
host's link is cut mid-fit (its switch port set down: no FIN, no RST), then healed.

The bed: a scheduler host, a driver host and three worker hosts on one bridge, a real
``dask scheduler`` and ``dask worker`` processes in them, ``distrib train`` on the driver
host. The worker hosts cannot see the driver's files (the data home is covered by an empty
tmpfs in their mount namespaces), so the rows reach them over the network: scattered once
(one-vs-rest) or sent block by block (multinomial).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from . import netns
from .test_tls import _flags as _tls_flags
from .test_tls import _make_certs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]

WORKERS = ("w0", "w1", "w2")


class _Bed:
    """The hosts, and how the driver reaches the scheduler (``tcp``, or ``tls`` with the
    certificates of ``scripts/make_certs.sh``)."""

    def __init__(self, hosts: netns.Hosts, protocol: str, certs: Path | None) -> None:
        self.hosts, self.protocol, self.certs = hosts, protocol, certs

    def tls(self, role: str) -> list[str]:
        return _tls_flags(self.certs, role) if self.certs is not None else []

    @property
    def scheduler(self) -> str:
        return f"{self.protocol}://{self.hosts.addresses['sched']}:8786"


@pytest.fixture(params=["tcp", "tls"])
def bed(request: pytest.FixtureRequest, tmp_path: Path, mnist_home: Path) -> Iterator[_Bed]:
    hosts = netns.Hosts(tmp_path)
    protocol = str(request.param)
    certs = _make_certs(tmp_path / "certs", 7) if protocol == "tls" else None
    setup = _Bed(hosts, protocol, certs)
    try:
        address = hosts.add("sched")
        hosts.add("driver")
        hosts.start("sched", hosts.python("-m", "dask", "scheduler", "--host", address,
                                          "--port", "8786", "--protocol", protocol,
                                          "--dashboard-address", f"{address}:0",
                                          *setup.tls("scheduler")))  # fmt: skip
        for name in WORKERS:
            address = hosts.add(name)
            (tmp_path / name).mkdir()
            worker = hosts.python("-m", "dask", "worker", setup.scheduler, "--host", address,
                                  "--nthreads", "1", "--nworkers", "1", "--dashboard-address",
                                  f"{address}:0", "--local-directory", str(tmp_path / name),
                                  *setup.tls("worker"))  # fmt: skip
            hosts.start(name, worker, hide=(mnist_home,))
        yield setup
    finally:
        hosts.close()


def _train(bed: _Bed, mnist_home: Path, out: Path, *flags: str) -> subprocess.Popen[str]:
    argv = bed.hosts.python("-m", "distrib", "train", "--scheduler", bed.scheduler,
                            "--wait-workers", "3", "--worker-timeout", "60", "--data-home",
                            str(mnist_home), "--out", str(out), *bed.tls("client"),
                            *flags)  # fmt: skip
    return subprocess.Popen(bed.hosts.command("driver", argv), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # fmt: skip


class _Lines:
    """A process's stderr, read line by line in a thread; `wait_for` a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._grew = threading.Condition()
        self._ended = False
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._grew:
                self.lines.append(line)
                self._grew.notify_all()
        with self._grew:
            self._ended = True
            self._grew.notify_all()

    def wait_for(self, needle: str, timeout: float) -> bool:
        """Whether a line holding ``needle`` came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._grew:
            while not any(needle in line for line in self.lines):
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    return False
                self._grew.wait(left)
            return True

    def __str__(self) -> str:
        return "".join(self.lines)


def _finish(proc: subprocess.Popen[str], timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _model(run: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with np.load(run / "model.npz") as model:
        coef, intercept = model["coef"], model["intercept"]
    return coef, intercept, json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("strategy", "flags", "cut_at"),
    [
        ("multinomial", ("--strategy", "multinomial", "--solver", "lbfgs", "--max-iter", "150",
                         "--tol", "1e-9"), "[30/150] L-BFGS"),  # long enough to cut mid-fit
        ("ovr", (), "rows sent to every worker"),
    ],
)  # fmt: skip
def test_a_worker_host_cut_off_mid_fit_gives_the_undisturbed_model(
    bed: _Bed, mnist_home: Path, tmp_path: Path, strategy: str, flags: tuple, cut_at: str
) -> None:
    hosts = bed.hosts
    reference = _train(bed, mnist_home, tmp_path / "reference", *flags)
    said = _Lines(reference)
    _finish(reference, 300)
    assert reference.returncode == 0, str(said)
    coef, intercept, expected = _model(tmp_path / "reference")
    assert expected["transfer"] == "scatter", "the worker hosts must not see the driver's files"
    holders = {f["worker"] for f in expected["fits"]}
    # a worker host that held fits in the undisturbed run (the scheduler may leave one idle)
    victim = next(
        (name for name, address in sorted(hosts.addresses.items()) if name.startswith("w")
         and any(w.startswith(f"{bed.protocol}://{address}:") for w in holders)),
        None,
    )  # fmt: skip
    assert victim is not None, holders
    victim_address = f"{bed.protocol}://{hosts.addresses[victim]}"

    run = tmp_path / "run"
    proc = _train(bed, mnist_home, run, *flags)
    said = _Lines(proc)
    try:
        assert said.wait_for(cut_at, timeout=300), str(said)
        if strategy == "ovr":
            time.sleep(0.3)  # the classes are being fitted
        hosts.cut(victim)
        cut = time.monotonic()
        noticed = "given up" if strategy == "multinomial" else "a backup attempt started"
        assert said.wait_for(noticed, timeout=120), str(said)
        hosts.heal(victim)  # the link comes back: nothing may change
        _finish(proc, 240)
        finished = time.monotonic() - cut
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, str(said)
    got_coef, got_intercept, metrics = _model(run)
    np.testing.assert_array_equal(got_coef, coef)
    np.testing.assert_array_equal(got_intercept, intercept)
    fit, undisturbed = metrics["timings"]["fit"], expected["timings"]["fit"]
    print(f"\n{strategy} over {bed.protocol}: finished {finished:.1f} s after the cut; fit "
          f"{fit:.2f} s, undisturbed {undisturbed:.2f} s")  # fmt: skip
    if strategy == "multinomial":
        assert metrics["solver"]["n_evaluations"] == expected["solver"]["n_evaluations"]
        given_up = metrics["solver"]["given_up"]
        assert [g["worker"].rsplit(":", 1)[0] for g in given_up] == [victim_address]
        assert finished < 30
    else:
        backups = metrics["solver"]["backups"]
        assert backups and all(b["late_worker"].startswith(victim_address) for b in backups)
        assert fit < 3 * undisturbed + 10
