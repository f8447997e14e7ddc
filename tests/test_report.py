from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import matplotlib.image
import pytest
from distributed import Client

from distrib import TrainConfig, train
from distrib.errors import OutputError
from distrib.report.render import render_report

from .conftest import run_cli

FIGURES = ["samples", "class_histograms", "coefficients", "confusion_matrix", "misclassified",
           "timeline"]  # fmt: skip


@pytest.fixture(scope="module")
def digits_run(cluster_client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    train(TrainConfig(dataset="digits"), client=cluster_client, out=root / "run", home=root)
    return root / "run"


def test_train_writes_a_report_with_every_figure(digits_run: Path) -> None:
    metrics = json.loads((digits_run / "metrics.json").read_text())
    for name in FIGURES:
        image = matplotlib.image.imread(digits_run / "figures" / f"{name}.png")
        assert image.ndim == 3 and min(image.shape[:2]) > 50, name
    page = (digits_run / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(FIGURES)
    assert all(base64.b64decode(e).startswith(b"\x89PNG") for e in embedded)
    assert f"{metrics['test_accuracy']:.4f}" in page
    assert 'src="figures/' not in page and "http" not in page.split("<body>")[1]  # offline
    md = (digits_run / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(f"figures/{n}.png" for n in FIGURES)
    assert all((digits_run / link).is_file() for link in links)
    assert "| class | precision | recall |" in md
    assert f"{metrics['test_accuracy']:.4f}" in md


def _tables(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


def test_rerender_from_saved_files_is_stable(digits_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(digits_run, copy)
    before = (copy / "report.md").read_text()
    proc = run_cli("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert _tables((copy / "report.md").read_text()) == _tables(before)
    assert (copy / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (lambda run: (run / "metrics.json").unlink(), r"metrics\.json is missing"),
        (
            lambda run: (run / "metrics.json").write_text("{oops"),
            r"metrics\.json is not valid JSON",
        ),
        (
            lambda run: (run / "metrics.json").write_text("{}"),
            r"metrics\.json lacks train_accuracy",
        ),
        (lambda run: (run / "images.npz").write_bytes(b"x"), r"images\.npz is corrupt"),
        (lambda run: (run / "model.npz").unlink(), r"model\.npz is missing"),
    ],
)
def test_broken_run_folders_are_named_and_nothing_is_written(
    digits_run: Path, tmp_path: Path, damage, pattern: str
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(digits_run, copy)
    for name in ("report.html", "report.md"):
        (copy / name).unlink()
    shutil.rmtree(copy / "figures")
    damage(copy)
    with pytest.raises(OutputError, match=pattern):
        render_report(copy)
    assert not (copy / "report.html").exists() and not (copy / "figures").exists()


def test_cli_report_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 1
    assert "metrics.json is missing" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_bench_plot_draws_the_peers_at_their_worker_counts() -> None:
    """dask-ml's one-vs-rest fits and each Spark line at the worker (core) counts they ran
    on, one-process fits at 1, each a point labelled beside it with its accuracy and
    seconds (not in the legend, which holds distrib's lines only); a report without peers
    has none."""
    from distrib.report.plots import bench_figure, bench_peers

    run = {"median_fit": 1.5, "median_wall": 2.7, "test_accuracy": 0.908}
    report = {
        "settings": {"dataset": "mnist"}, "n_train": 60_000,
        "distrib": {"2": {**run, "dask_ml": {"median_fit": 300.0, "test_accuracy": 0.9091}}},
        "serial": {"median_wall": 7.5},
        "peers": {"spark": {"2": {"lines": {
            "same objective": {"wall": 34.0, "test_accuracy": 0.87},
            "spark defaults": {"wall": 33.0, "test_accuracy": 0.916},
        }}}},
    }  # fmt: skip
    peers = {label: (ks, seconds) for ks, seconds, label, *_ in bench_peers(report)}
    assert peers == {
        "scikit-learn one-vs-rest fit": ([1], [7.5]),
        "dask-ml one-vs-rest fit (0.9091)": ([2], [300.0]),
        "Spark fit, same objective (0.8700)": ([2], [34.0]),
        "Spark fit, spark defaults (0.9160)": ([2], [33.0]),
    }
    figure = bench_figure(report)
    wall_ax = figure.axes[0]
    texts = {text.get_text() for text in wall_ax.texts}
    assert {f"{label}: {seconds[0]:.2f} s" for label, (_, seconds) in peers.items()} <= texts
    assert "distrib ovr fit (0.9080): 1.50 s" in texts
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["distrib ovr: fit phase", "distrib ovr: end to end", "ideal"]
    assert bench_peers({"distrib": {"2": run}}) == []
