"""TLS clusters: a real ``dask scheduler --protocol tls`` and ``dask worker`` processes, with
certificates made by ``scripts/make_certs.sh`` in the test; ``distrib train`` through them with
certificates from flags and from dask's configuration, and every refusal named in one line."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, DaskProcesses, run_cli

CONNECT_TIMEOUT = 5


def _make_certs(folder: Path, days: int) -> Path:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "make_certs.sh"), str(folder), str(days)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return folder


def _flags(certs: Path, role: str = "client") -> list[str]:
    return [
        "--tls-ca-file", str(certs / "ca.pem"),
        "--tls-cert", str(certs / f"{role}.pem"),
        "--tls-key", str(certs / f"{role}.key"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A TLS scheduler with three single-threaded workers: (its tls:// address, its certs)."""
    workdir = tmp_path_factory.mktemp("tls-cluster")
    certs = _make_certs(workdir / "certs", 7)
    procs = DaskProcesses(workdir)
    try:
        address = procs.start_scheduler("--protocol", "tls", *_flags(certs, "scheduler"))
        for _ in range(3):
            procs.start_worker(*_flags(certs, "worker"))
        yield address, certs
    finally:
        procs.stop()


def test_make_certs_writes_a_ca_and_a_pair_per_role_keys_private(tmp_path: Path) -> None:
    certs = _make_certs(tmp_path / "certs", 3)
    names = {p.name for p in certs.iterdir()}
    assert names == {
        f"{r}.{e}" for r in ("ca", "scheduler", "worker", "client") for e in ("pem", "key")
    }
    for key in certs.glob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    dates = subprocess.run(
        ["openssl", "x509", "-in", str(certs / "client.pem"), "-noout", "-enddate", "-issuer"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert "distrib dask CA" in dates
    bad = subprocess.run(
        ["bash", str(REPO / "scripts" / "make_certs.sh"), str(tmp_path / "x"), "soon"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2 and "DAYS must be a whole number" in bad.stderr


@pytest.mark.slow
def test_train_through_a_tls_cluster_with_flags_and_with_dask_config(
    tls_cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, certs = tls_cluster
    out = tmp_path / "flags"
    proc = run_cli(
        "train", "--dataset", "digits", "--scheduler", address, "--wait-workers", "3",
        *_flags(certs), "--out", str(out), "-q", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cluster"]["scheduler"] == address and metrics["test_accuracy"] > 0.9
    assert {fit["worker"][:6] for fit in metrics["fits"]} == {"tls://"}

    env = {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(certs / "ca.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(certs / "client.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(certs / "client.key"),
    }
    out = tmp_path / "config"
    proc = run_cli(
        "train", "--dataset", "digits", "--strategy", "multinomial", "--scheduler", address,
        "--wait-workers", "3", "--out", str(out), "-q", env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.9
    # the hosts' direct channels speak TLS with the workers' certificates; with 3 workers
    # one host relays each evaluation to another over them
    assert {block["calls"] for block in metrics["fits"]} == {"direct channel"}
    assert len({block["worker"] for block in metrics["fits"]}) == 3
    assert metrics["solver"]["median_relay_cpu_seconds_per_message"]


REFUSALS = {
    "no certificates": (lambda a, c, o: [], r"speaks TLS, and this client has no certificates"),
    "another CA's pair": (
        lambda a, c, o: [*_flags(c)[:2], *_flags(o)[2:]],
        r"could not reach .* the TLS handshake failed: check that --tls-ca-file",
    ),
    "another CA entirely": (
        lambda a, c, o: _flags(o),
        r"could not reach .* the TLS handshake failed",
    ),
    "an expired certificate": (
        lambda a, c, o: [
            *_flags(c)[:2],
            "--tls-cert",
            str(o.parent / "expired" / "client.pem"),
            "--tls-key",
            str(o.parent / "expired" / "client.key"),
        ],
        r"the TLS certificate .*expired/client\.pem \(from the flags\) expired on",
    ),
    "a missing key": (
        lambda a, c, o: [*_flags(c)[:4], "--tls-key", str(o / "nowhere.key")],
        r"the TLS key .*nowhere\.key \(from the flags\) cannot be read: No such file",
    ),
    "a key of another certificate": (
        lambda a, c, o: [*_flags(c)[:4], "--tls-key", str(o / "client.key")],
        r"do not form a pair .*: pass the key made with that certificate",
    ),
    "flags in part": (
        lambda a, c, o: _flags(c)[:2],
        r"TLS needs --tls-ca-file, --tls-cert, --tls-key together .* missing --tls-cert",
    ),
}


@pytest.mark.slow
def test_every_refusal_is_one_line_quick_and_writes_nothing(
    tls_cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, certs = tls_cluster
    other = _make_certs(tmp_path / "other", 7)
    _make_certs(tmp_path / "expired", 0)  # valid for no time at all
    plain = "tcp://" + address.removeprefix("tls://")
    cases = {name: ([address], *case) for name, case in REFUSALS.items()}
    cases["a tcp:// address, no certificates"] = (
        [plain], lambda a, c, o: [], r"needs tls://HOST:PORT and certificates",
    )  # fmt: skip
    cases["a tcp:// address with certificates"] = (
        [plain], lambda a, c, o: _flags(c), r"which is not a tls:// address: use tls://",
    )  # fmt: skip
    for name, (addresses, extra, pattern) in cases.items():
        out = tmp_path / "runs" / name.replace(" ", "-")
        started = time.monotonic()
        proc = run_cli(
            "train", "--dataset", "digits", "--scheduler", addresses[0],
            "--connect-timeout", str(CONNECT_TIMEOUT), *extra(address, certs, other),
            "--out", str(out), timeout=120,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        assert lines[-1].startswith("Error: ") and re.search(pattern, lines[-1]), (name, lines)
        assert not out.exists(), f"{name}: the run folder was written"
        # within the connect timeout, plus starting Python and importing distrib
        assert elapsed < CONNECT_TIMEOUT + 25, (name, elapsed)
