"""Figures (matplotlib, Agg backend, object API: safe in threads and without a display)."""

from __future__ import annotations

import os
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distrib.config import COEFFICIENT_ROWS, SOLVER_NAMES
from distrib.files import write_bytes
from distrib.report.bench_format import STRATEGY_KEYS


def _integer_log2_axis(ax: Any, axis: str = "x") -> None:
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator([1, 2, 4, 8, 16, 32]))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_formatter(NullFormatter())


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """Render ``fig`` to a PNG file, atomically."""
    write_bytes(path, figure_png(fig, dpi))


def _strategy_lines(
    wall_ax: Any,
    speed_ax: Any,
    runs: dict[str, Any],
    projection: dict[str, Any] | None,
    name: str,
    colors: tuple[str, str],
) -> list[int]:
    """One strategy's measured wall and fit times, speedups and projection; its worker counts."""
    by_k = {int(k): v for k, v in runs.items()}
    ks = sorted(by_k)
    walls = [by_k[k]["median_wall"] for k in ks]
    fits = [by_k[k]["median_fit"] for k in ks]
    accuracy = by_k[ks[-1]]["test_accuracy"]
    wall_ax.plot(ks, walls, "o-", color=colors[0], lw=2,
                 label=f"distrib {name}, end to end (test acc {accuracy:.4f})")  # fmt: skip
    wall_ax.plot(ks, fits, "s-", color=colors[1], lw=2, label=f"distrib {name}, fit phase")
    speed_ax.plot(ks, [walls[0] / w for w in walls], "o-", color=colors[0], lw=2,
                  label=f"distrib {name}, end to end")  # fmt: skip
    speed_ax.plot(ks, [fits[0] / f for f in fits], "s-", color=colors[1], lw=2,
                  label=f"distrib {name}, fit phase")  # fmt: skip
    if projection:
        flat = projection.get("saturates_at_workers")
        label = f"{name} projection (simulated)" + (f", flat from {flat}" if flat else "")
        wall_ax.plot(projection["workers"], projection["wall"], "--", color=colors[0],
                     alpha=0.6, label=label)  # fmt: skip
        speed_ax.plot(projection["workers"], projection["speedup"], "--", color=colors[0],
                      alpha=0.6, label=f"{name} projection (simulated)")  # fmt: skip
    return ks


def _command_lines(ax: Any, runs: dict[str, Any]) -> None:
    """Whole processes as a user times them: ``distrib train`` per strategy against
    workers, and the plain scripts (loky's against its process count)."""
    colors = {("distrib", "multinomial"): "C5", ("distrib", "ovr"): "C0",
              ("script", "multinomial"): "C6", ("script", "ovr"): "C2"}  # fmt: skip
    for (program, model), color in colors.items():
        mine = sorted((r["workers"], r) for r in runs.values()
                      if (r["program"], r["model"]) == (program, model))  # fmt: skip
        if not mine:
            continue
        accuracy = mine[0][1]["test_accuracy"]
        if program == "script" and model == "multinomial":  # one process: a level
            ax.axhline(mine[0][1]["median_wall"], color=color, ls=":", lw=1.5,
                       label="plain scikit-learn multinomial script, whole process "
                       f"(acc {accuracy:.4f})")  # fmt: skip
            continue
        what = (f"`distrib train --strategy {model}`" if program == "distrib"
                else "plain loky OneVsRestClassifier script")  # fmt: skip
        ax.plot([k for k, _ in mine], [r["median_wall"] for _, r in mine],
                "D-" if program == "distrib" else "v:", color=color,
                lw=3 if program == "distrib" else 1.5,
                label=f"{what}, whole process (acc {accuracy:.4f})")  # fmt: skip


def _peer_points(ax: Any, report: dict[str, Any]) -> None:
    """The peers' fits, at their worker (core) counts: dask-ml's one-vs-rest and each
    Spark line."""
    runs = report.get(STRATEGY_KEYS["ovr"].runs, {})
    dask_ml = sorted((int(k), run["dask_ml"]) for k, run in runs.items() if "dask_ml" in run)
    if dask_ml:
        ax.plot(
            [k for k, _ in dask_ml],
            [run["median_fit"] for _, run in dask_ml],
            "X:",
            color="C8",
            label=f"dask-ml one-vs-rest, fit (acc {dask_ml[0][1]['test_accuracy']:.4f})",
        )
    spark = sorted((int(k), peer) for k, peer in report.get("peers", {}).get("spark", {}).items())
    names = list(spark[0][1]["lines"]) if spark else []
    for i, name in enumerate(names):
        accuracy = spark[0][1]["lines"][name]["test_accuracy"]
        ax.plot(
            [k for k, _ in spark],
            [peer["lines"][name]["wall"] for _, peer in spark],
            "P:",
            color=f"C{7 + 2 * i}",
            label=f"Spark local[k], {name}, fit (acc {accuracy:.4f})",
        )


def plot_bench(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Wall time and speedup against workers, measured and projected (``bench.png``).

    One line set per strategy in the report (``distrib``: one-vs-rest, ``multinomial``), with
    the baselines measured in the same run.
    """
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    wall_ax, speed_ax = fig.subplots(1, 2)
    ks: list[int] = []
    colors = {"ovr": ("C0", "C1"), "multinomial": ("C5", "C6")}
    for strategy, keys in STRATEGY_KEYS.items():
        if keys.runs in report:
            ks += _strategy_lines(wall_ax, speed_ax, report[keys.runs],
                                  report.get(keys.projection), strategy,
                                  colors[strategy])  # fmt: skip
    base_k = min(ks)
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
            label="scikit-learn OneVsRestClassifier, one process",
        )
    if "sklearn_multinomial" in report:
        ref = report["sklearn_multinomial"]
        wall_ax.axhline(
            ref["median_wall"],
            color="C6",
            ls="-.",
            label=f"scikit-learn multinomial lbfgs, one process (acc {ref['test_accuracy']:.4f})",
        )
    if "notebook" in report:
        nb = report["notebook"]
        wall_ax.axhline(
            nb["median_wall"],
            color="C3",
            ls="-.",
            label=f"notebook settings, one process (acc {nb['test_accuracy']:.3f})",
        )
    _peer_points(wall_ax, report)
    _command_lines(wall_ax, report.get("commands", {}).get("runs", {}))
    wall_ax.set_xscale("log", base=2)
    wall_ax.set_yscale("log")
    wall_ax.set_xlabel("workers (1 thread each)")
    wall_ax.set_ylabel("seconds (median)")
    settings = report["settings"]
    grown = settings.get("grow", 1)
    rows = f"{report['n_train']:,} training rows" + (f", grown x{grown}" if grown > 1 else "")
    wall_ax.set_title(f"Wall time, {settings['dataset']} ({rows})")
    wall_ax.grid(True, which="both", alpha=0.3)
    wall_ax.legend(fontsize=7, loc="best")

    projections = [report.get(k) for k in ("projection", "multinomial_projection")]
    top = max([max(p["workers"]) for p in projections if p] + ks)
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


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A figure rendered to PNG bytes (in memory, so nothing is written before all succeed).

    Drawn once: each figure lays itself out (constrained layout, or fixed axes for the
    galleries); ``bbox_inches="tight"`` would draw it twice. Measured: the six figures'
    savefig 1.38 -> 0.91 s without the tight box; with the constrained layouts that replace
    it, ``distrib report`` as a process 2.2-2.4 -> 2.1-2.3 s.
    """
    import io

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def warm_up() -> None:
    """Load what drawing a first figure loads (the fonts, the text layout's caches), so a
    report drawn later does not: `distrib train` calls it while its workers start."""
    fig = Figure(figsize=(1, 1))
    ax = fig.subplots()
    ax.set_title("0")
    ax.text(0.5, 0.5, "1")
    figure_png(fig, dpi=20)


def _montage(
    images: Any,
    image_shape: tuple[int, int],
    columns: int,
    titles: list[str],
    size: float = 1.6,
    title_color: str = "black",
    **imshow: Any,
) -> tuple[Figure, Any, Any]:
    """Images tiled into one picture on one axes, each titled in the gap above it.

    One image artist and a text per tile instead of an axes per image: the same gallery,
    drawn ~5x faster (an axes costs ~10 ms to make and lay out). Returns the figure, its
    axes and the image (for a colorbar).
    """
    n = max(1, len(images))
    h, w = image_shape
    rows = -(-n // columns)
    gap, title_gap = max(1, w // 14), max(2, round(h * 0.3))  # between tiles, above each
    tile_h, tile_w = h + title_gap, w + gap
    canvas = np.full((rows * tile_h, columns * tile_w - gap), np.nan)
    for k, image in enumerate(images):
        top, left = (k // columns) * tile_h + title_gap, (k % columns) * tile_w
        canvas[top : top + h, left : left + w] = np.asarray(image, dtype=float).reshape(h, w)
    fig = Figure(figsize=(columns * size, rows * size * 1.15))
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.92))
    ax.set_axis_off()
    cmap = matplotlib.colormaps[imshow.pop("cmap", "gray_r")].with_extremes(bad="white")
    picture = ax.imshow(canvas, cmap=cmap, interpolation="nearest", **imshow)
    for k, title in enumerate(titles[: len(images)]):
        x = (k % columns) * tile_w + (w - 1) / 2
        y = (k // columns) * tile_h + title_gap - 1
        ax.text(x, y, title, ha="center", va="bottom", fontsize=8, color=title_color)
    return fig, ax, picture


def plot_samples(images: Any, labels: Any, image_shape: tuple[int, int]) -> Figure:
    """Training images with their labels (the notebook's first figure)."""
    titles = [f"label {label}" for label in labels]
    fig, _, _ = _montage(images, image_shape, min(max(1, len(images)), 10), titles)
    fig.suptitle("Sample training images")
    return fig


def plot_class_histograms(classes: list[int], train: list[int], test: list[int]) -> Figure:
    """Counts of each class in the train and test splits, side by side."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
    for ax, counts, name, color in ((axes[0], train, "train", "C0"), (axes[1], test, "test", "C1")):
        ax.bar([str(c) for c in classes], counts, color=color)
        ax.set_title(f"{name} split: {sum(counts):,} images")
        ax.set_xlabel("class")
        ax.set_ylabel("images")
    return fig


def plot_coefficients(
    coef: Any, classes: list[int], image_shape: tuple[int, int], strategy: str = "ovr"
) -> Figure:
    """Every class's coefficients as an image, one shared symmetric diverging scale."""
    # Shared and symmetric, but robust: a few rarely-inked edge pixels get large weights
    # that would wash every other pixel out; they are clipped to the darkest shade.
    magnitude = np.abs(np.asarray(coef))
    scale = float(np.percentile(magnitude, 99.5)) or float(magnitude.max()) or 1.0
    clipped = int(np.sum(magnitude > scale))
    titles = [f"class {label}" for label in classes]
    fig, ax, image = _montage(
        np.asarray(coef), image_shape, 5, titles, size=2.0, cmap="RdBu_r", vmin=-scale,
        vmax=scale,
    )  # fmt: skip
    ax.set_position((0.0, 0.0, 0.86, 0.9))
    if len(classes):
        fig.colorbar(
            image,
            cax=fig.add_axes((0.88, 0.1, 0.02, 0.7)),
            extend="both" if clipped else "neither",
            label="coefficient (red: votes for the class)",
        )
    note = f" ({clipped} weights beyond ±{scale:.2g} clipped)" if clipped else ""
    fig.suptitle(f"What each {COEFFICIENT_ROWS[strategy]} learned{note}")
    return fig


def plot_confusion(matrix: Any, classes: list[int], accuracy: float) -> Figure:
    """The confusion matrix as an annotated heatmap (rows true, columns predicted)."""
    import numpy as np

    matrix = np.asarray(matrix)
    n = len(classes)
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] > threshold else "black",
            )
    ax.set_xticks(range(n), [str(c) for c in classes])
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix, test accuracy {accuracy:.4f}")
    return fig


def plot_misclassified(
    images: Any, true: Any, predicted: Any, image_shape: tuple[int, int], total: int
) -> Figure:
    """A gallery of misclassified test images, titled true -> predicted."""
    titles = [f"true {t}, pred {p}" for t, p in zip(true, predicted, strict=False)]
    fig, ax, _ = _montage(images, image_shape, 10, titles, title_color="C3")
    if not len(images):
        ax.text(0.5, 0.5, "no misclassified test image", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    fig.suptitle(f"Misclassified test images: {len(images)} of {total} shown")
    return fig


def plot_timeline(fits: list[dict[str, Any]]) -> Figure:
    """One row per worker, one bar per class fit (start to end), retries hatched."""
    workers = sorted(
        {f["worker"] for f in fits} | {r["worker"] for f in fits for r in f.get("retries", [])}
    )
    fresh = [f for f in fits if not f.get("from_checkpoint")]
    t0 = min((f["started"] for f in fresh), default=0.0)
    fig = Figure(figsize=(10, 1.0 + 0.55 * max(1, len(workers))), layout="constrained")
    ax = fig.subplots()
    for f in fits:
        row = workers.index(f["worker"])
        start, width = f["started"] - t0, f["finished"] - f["started"]
        style: dict[str, Any] = {"alpha": 0.35, "hatch": "//"} if f.get("from_checkpoint") else {}
        ax.barh(
            row,
            width,
            left=start,
            height=0.6,
            color=f"C{f['label'] % 10}",
            edgecolor="black",
            **style,
        )
        ax.text(start + width / 2, row, str(f["label"]), ha="center", va="center", fontsize=8)
        for retry in f.get("retries", []):
            ax.plot(
                retry["started"] - t0,
                workers.index(retry["worker"]),
                "x",
                color="C3",
                markersize=10,
                label="lost attempt",
            )
    ax.set_yticks(range(len(workers)), workers, fontsize=7)
    ax.set_xlabel("seconds since the first fit started")
    ax.set_title("Where each class was fitted (bar = one binary fit, number = class)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def plot_convergence(solver: dict[str, Any]) -> Figure:
    """A multinomial fit: the objective per evaluation, and where each evaluation's time went."""
    per = solver.get("per_evaluation", {})
    loss = np.asarray(per.get("loss", []), dtype=float)
    wall = np.asarray(per.get("seconds", []), dtype=float)
    block = np.asarray(per.get("slowest_block_seconds", []), dtype=float)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    loss_ax, time_ax = fig.subplots(1, 2)
    steps = np.arange(1, len(loss) + 1)
    if len(loss):
        loss_ax.semilogy(steps, loss, color="C0")
    loss_ax.set_xlabel("evaluation")
    loss_ax.set_ylabel("objective (mean loss + L2 term)")
    name = SOLVER_NAMES.get(solver.get("solver", "lbfgs"), "L-BFGS")
    loss_ax.set_title(f"{name}: {solver.get('n_iter')} iterations, {len(loss)} passes")
    loss_ax.grid(True, alpha=0.3)
    if len(wall):  # bars of width 1, as two filled step outlines (two artists, not 2n bars)
        edges = np.arange(len(wall) + 1) + 0.5
        time_ax.stairs(block * 1e3, edges, fill=True, color="C1", label="busiest worker (compute)")
        time_ax.stairs(wall * 1e3, edges, baseline=block * 1e3, fill=True, color="C7",
                       label="coordination (send coefficients, return gradients)")  # fmt: skip
    time_ax.set_xlabel("evaluation")
    time_ax.set_ylabel("milliseconds")
    time_ax.set_title("Time per evaluation of loss and gradient")
    time_ax.legend(fontsize=8)
    return fig
