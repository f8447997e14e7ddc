"""A full disk is an error named in one line, never a signal or a traceback (issue 33).

Each test mounts a real tmpfs of a few MB (as root, as CI runs), fills it, and points distrib
at it: the prepared split (`--data-home`), the run folder (`--out`, its checkpoints and
model), and the estimator's temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)"
)


@contextlib.contextmanager
def full_tmpfs(folder: Path, size: str = "3m", leave: int = 0) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder``, filled to ``leave`` bytes of free space."""
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                   check=True, timeout=30)  # fmt: skip
    try:
        with open(folder / "filler", "wb") as fh:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            with contextlib.suppress(OSError):
                fh.write(b"\0" * max(0, free - leave))
                fh.flush()
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def _distrib(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distrib", *args],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=env,
    )  # fmt: skip


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.is_file())


@pytest.mark.parametrize("leave", [0, 100_000], ids=["no-room", "room-for-the-small-files"])
def test_a_full_data_home_is_named_with_the_space_needed(tmp_path: Path, leave: int) -> None:
    """With room for the small files but not for the rows, the rows' write fails: it went
    through a memory map, and the process died of SIGBUS (exit 135)."""
    with full_tmpfs(tmp_path / "full", leave=leave) as full:
        proc = _distrib("train", "--dataset", "digits", "--workers", "1",
                        "--dashboard-address", ":0", "--data-home", str(full / "home"),
                        "--out", str(tmp_path / "run"))  # fmt: skip
        leftovers = _leftovers(full)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # not 135: SIGBUS
    last = proc.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last, proc.stderr[-2000:]
    assert "MB needed" in last and "--data-home" in last, last
    assert "Traceback" not in proc.stderr
    assert leftovers == [], "temporary files left on the full disk"


@pytest.mark.parametrize(
    ("strategy", "leave"),
    [("ovr", 0), ("ovr", 12_288), ("multinomial", 12_288)],
    ids=["no-room", "ovr-checkpoints", "multinomial-evaluation-log"],
)
def test_a_full_run_folder_is_named_as_storage_not_as_the_scheduler(
    tmp_path: Path, strategy: str, leave: int
) -> None:
    """Out of space mid-fit (a class's checkpoint, the evaluation log) was read as a lost
    scheduler ("... once it is back")."""
    with full_tmpfs(tmp_path / "full", leave=leave) as full:
        proc = _distrib("train", "--dataset", "digits", "--workers", "1", "--strategy",
                        strategy, "--dashboard-address", ":0", "--out", str(full / "run"),
                        "--data-home", str(tmp_path / "home"))  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last, proc.stderr[-2000:]
    assert "scheduler" not in last, last
    assert "Traceback" not in proc.stderr
    if leave:
        assert "--resume" in last, last


def test_the_estimator_sends_its_rows_when_the_temporary_folder_is_full(tmp_path: Path) -> None:
    """The estimator writes in-memory rows to a temporary folder for workers on this host;
    a full one must not fail the user's fit (nor kill the user's process): the rows go by
    value, and the model is the same."""
    script = textwrap.dedent(
        """
        import sys, tempfile
        import numpy as np
        from distributed import Client, LocalCluster
        from sklearn.datasets import load_digits
        from distrib import DaskLogisticRegression

        X, y = load_digits(return_X_y=True)
        X = X / 16
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, \\
                Client(cluster) as client:
            here = DaskLogisticRegression(max_iter=50).fit(X, y)
            tempfile.tempdir = sys.argv[1]  # the driver's temporary folder is full from here
            full = DaskLogisticRegression(max_iter=50).fit(X, y)
        assert np.array_equal(here.coef_, full.coef_), "the same model either way"
        print("score", full.score(X, y))
        """
    )
    with full_tmpfs(tmp_path / "full") as full:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(full)],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )  # fmt: skip
        leftovers = sorted(p.name for p in full.iterdir() if p.name != "filler")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split("score")[1]) > 0.95
    assert leftovers == []
