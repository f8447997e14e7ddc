"""Figures (matplotlib, Agg backend, object API: safe in threads and without a display)."""

from __future__ import annotations

import os
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distrib.files import atomic_path


def _integer_log2_axis(ax: Any, axis: str = "x") -> None:
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator([1, 2, 4, 8, 16, 32]))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_formatter(NullFormatter())


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """Render ``fig`` to a PNG file, atomically."""
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def plot_bench(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Wall time and speedup against workers, measured and projected (``bench.png``)."""
    fig = Figure(figsize=(12, 4.8))
    wall_ax, speed_ax = fig.subplots(1, 2)
    distrib = {int(k): v for k, v in report["distrib"].items()}
    ks = sorted(distrib)
    base_k = ks[0]

    walls = [distrib[k]["median_wall"] for k in ks]
    fits = [distrib[k]["median_fit"] for k in ks]
    wall_ax.plot(ks, walls, "o-", color="C0", lw=2, label="distrib, end to end")
    wall_ax.plot(ks, fits, "s-", color="C1", lw=2, label="distrib, fit phase")
    ideal = [walls[0] * base_k / k for k in ks]
    wall_ax.plot(ks, ideal, ":", color="C0", label="ideal scaling (end to end)")

    proj = report.get("projection")
    if proj:
        wall_ax.plot(
            proj["workers"],
            proj["wall"],
            "--",
            color="C0",
            alpha=0.6,
            label=f"projection (simulated), flat from {proj['saturates_at_workers']}",
        )
        speed_ax.plot(
            proj["workers"],
            proj["speedup"],
            "--",
            color="C0",
            alpha=0.6,
            label="projection (simulated)",
        )
    for i, (name, by_k) in enumerate(sorted(report.get("loky", {}).items())):
        lk = sorted(int(k) for k in by_k)
        wall_ax.plot(
            lk,
            [by_k[str(k)]["median_wall"] for k in lk],
            "^--",
            color=f"C{2 + i}",
            label=f"loky OneVsRestClassifier, fit ({name})",
        )
    if "serial" in report:
        wall_ax.axhline(
            report["serial"]["median_wall"],
            color="C4",
            ls="-.",
            label="binary fits one after another, one process",
        )
    if "notebook" in report:
        nb = report["notebook"]
        wall_ax.axhline(
            nb["median_wall"],
            color="C3",
            ls="-.",
            label=f"notebook settings, one process (acc {nb['test_accuracy']:.3f})",
        )
    wall_ax.set_xscale("log", base=2)
    wall_ax.set_yscale("log")
    wall_ax.set_xlabel("workers (1 thread each)")
    wall_ax.set_ylabel("seconds (median)")
    accuracy = distrib[ks[-1]]["test_accuracy"]
    wall_ax.set_title(f"Wall time, {report['settings']['dataset']} (test accuracy {accuracy:.4f})")
    wall_ax.grid(True, which="both", alpha=0.3)
    wall_ax.legend(fontsize=7, loc="best")

    speed = [walls[0] / w for w in walls]
    speed_ax.plot(ks, speed, "o-", color="C0", lw=2, label="distrib, end to end")
    speed_ax.plot(
        ks, [fits[0] / f for f in fits], "s-", color="C1", lw=2, label="distrib, fit phase"
    )
    top = max(proj["workers"]) if proj else max(ks)
    speed_ax.plot([base_k, top], [1, top / base_k], ":", color="gray", label="ideal")
    speed_ax.set_xscale("log", base=2)
    speed_ax.set_yscale("log", base=2)
    speed_ax.set_xlabel("workers (1 thread each)")
    speed_ax.set_ylabel(f"speedup over {base_k} worker(s)")
    speed_ax.set_title("Speedup")
    for ax, axis in ((wall_ax, "x"), (speed_ax, "x"), (speed_ax, "y")):
        _integer_log2_axis(ax, axis)
    speed_ax.grid(True, which="both", alpha=0.3)
    speed_ax.legend(fontsize=7, loc="upper left")
    machine = report.get("machine", {})
    fig.suptitle(
        f"distrib bench: {machine.get('cores')} cores, {machine.get('cpu', '')}", fontsize=9
    )
    save_png(fig, path)
