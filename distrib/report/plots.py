"""Figures (matplotlib, Agg backend, object API: safe in threads and without a display)."""

from __future__ import annotations

import itertools
import math
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


_DISTRIB_COLORS = {"ovr": "C0", "multinomial": "C3"}
#: A peer: its worker (or process) counts, seconds there, label, color and marker.
Peer = tuple[list[int], list[float], str, str, str]


def _measured_lines(
    wall_ax: Any, speed_ax: Any, report: dict[str, Any], labelled: list[Any]
) -> list[int]:
    """distrib's measured lines per strategy (the fit phase, the bench run end to end and,
    where measured, ``distrib train`` as a process), their speedups and, from the first
    measured count on, the simulated ones; each line's last point added to ``labelled``.
    Returns the measured worker counts."""
    counts: list[int] = []
    commands = report.get("commands", {}).get("runs", {})
    for strategy, keys in STRATEGY_KEYS.items():
        if keys.runs not in report:
            continue
        by_k = {int(k): v for k, v in report[keys.runs].items()}
        ks = sorted(by_k)
        counts += ks
        color = _DISTRIB_COLORS[strategy]
        accuracy = by_k[ks[-1]]["test_accuracy"]
        fits = [by_k[k]["median_fit"] for k in ks]
        walls = [by_k[k]["median_wall"] for k in ks]
        wall_ax.plot(ks, fits, "s--", color=color, lw=1.5, label=f"distrib {strategy}: fit phase")
        wall_ax.plot(ks, walls, "o-", color=color, lw=1.5, alpha=0.6,
                     label=f"distrib {strategy}: end to end")  # fmt: skip
        labelled.append((ks[-1], fits[-1], f"distrib {strategy} fit ({accuracy:.4f})", color))
        labelled.append((ks[-1], walls[-1], f"distrib {strategy} end to end", color))
        mine = sorted((r["workers"], r["median_wall"]) for r in commands.values()
                      if (r["program"], r["model"]) == ("distrib", strategy))  # fmt: skip
        if mine:
            wall_ax.plot([k for k, _ in mine], [w for _, w in mine], "D-", color=color, lw=2.5,
                         label=f"distrib {strategy}: `distrib train`, whole process")  # fmt: skip
            labelled.append((*mine[-1], f"`distrib train --strategy {strategy}`", color))
        speed_ax.plot(ks, [fits[0] / f for f in fits], "s--", color=color, lw=1.5,
                      label=f"distrib {strategy}: fit phase")  # fmt: skip
        speed_ax.plot(ks, [walls[0] / w for w in walls], "o-", color=color, lw=1.5, alpha=0.6,
                      label=f"distrib {strategy}: end to end")  # fmt: skip
        projection = report.get(keys.projection)
        at = {int(k): s for k, s in zip(projection["workers"], projection["speedup"],
                                        strict=True)} if projection else {}  # fmt: skip
        if ks[0] in at:  # as a speedup over the first measured count, from it on
            shown = [k for k in sorted(at) if k >= ks[0]]
            speed_ax.plot(shown, [at[k] / at[ks[0]] for k in shown], ":", color=color,
                          alpha=0.7, label=f"distrib {strategy}: simulated past this "
                          "machine")  # fmt: skip
    return counts


def bench_peers(report: dict[str, Any]) -> list[Peer]:
    """Everything a bench run measured beside distrib, each a point (a dotted line where
    measured at several counts): loky's fits at their process counts, scikit-learn's and
    the notebook's one-process fits at 1, dask-ml's and Spark's fits at their worker
    (core) counts, the plain scripts as processes."""
    peers: list[Peer] = []

    def at(by_k: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
        ks = sorted(int(k) for k in by_k)
        return ks, [float(by_k[str(k)][key]) for k in ks]

    for name, by_k in sorted(report.get("loky", {}).items()):
        peers.append((*at(by_k, "median_wall"), f"loky one-vs-rest fit, {name}", "C2", "^"))
    one_process = (
        ("serial", "scikit-learn one-vs-rest fit", "C4"),
        ("sklearn_multinomial", "scikit-learn multinomial fit", "C6"),
        ("notebook", "the notebook's fit", "C5"),
    )
    for key, label, color in one_process:
        if key in report:
            accuracy = report[key].get("test_accuracy")
            text = label + (f" ({accuracy:.4f})" if accuracy is not None else "")
            peers.append(([1], [float(report[key]["median_wall"])], text, color, "<"))
    runs = report.get(STRATEGY_KEYS["ovr"].runs, {})
    dask_ml = {k: run["dask_ml"] for k, run in runs.items() if "dask_ml" in run}
    if dask_ml:
        accuracy = dask_ml[min(dask_ml, key=int)]["test_accuracy"]
        peers.append((*at(dask_ml, "median_fit"), f"dask-ml one-vs-rest fit ({accuracy:.4f})",
                      "C8", "X"))  # fmt: skip
    spark = report.get("peers", {}).get("spark", {})
    if spark:
        ks = sorted(int(k) for k in spark)
        for name, line in spark[str(ks[0])]["lines"].items():
            seconds = [float(spark[str(k)]["lines"][name]["wall"]) for k in ks]
            peers.append((ks, seconds, f"Spark fit, {name} ({line['test_accuracy']:.4f})",
                          "C9", "P"))  # fmt: skip
    for run in report.get("commands", {}).get("runs", {}).values():
        if run["program"] == "script":
            what = "loky one-vs-rest" if run["model"] == "ovr" else "scikit-learn multinomial"
            peers.append(([int(run["workers"])], [float(run["median_wall"])],
                          f"plain {what} script, whole process ({run['test_accuracy']:.4f})",
                          "C7", "v"))  # fmt: skip
    return peers


def _label_points(ax: Any, points: list[tuple[float, float, str, str]]) -> None:
    """Each point's label and seconds beside it (left of the leftmost points, right of the
    others), moved apart where labels would overlap on the log axis, a thin line to its
    point."""
    low, high = ax.get_ylim()
    height = ax.get_window_extent().height * 72 / ax.figure.dpi  # in points
    gap = math.log10(high / low) * 8.5 / max(height, 1.0)  # a 6.5-point line, in decades
    by_x: dict[float, list[tuple[float, str, str]]] = {}
    for x, y, text, color in points:
        by_x.setdefault(x, []).append((y, text, color))
    for x, group in by_x.items():
        group.sort()
        wanted = [math.log10(y) for y, _, _ in group]
        placed = list(itertools.accumulate(wanted, lambda last, w: max(w, last + gap)))
        shift = max((sum(wanted) - sum(placed)) / len(group), math.log10(low) + gap - placed[0])
        left = x == min(by_x)
        for (y, text, color), where in zip(group, placed, strict=True):
            ax.annotate(f"{text}: {y:.2f} s", (x, y),
                        xytext=(x / 1.25 if left else x * 1.25, 10 ** (where + shift)),
                        textcoords="data", fontsize=6.5, color=color, va="center",
                        ha="right" if left else "left",
                        arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.6,
                                    "shrinkA": 0, "shrinkB": 2})  # fmt: skip


def _seconds_axis(ax: Any) -> None:
    """A log axis of seconds labelled 1, 2, 5, 10, 20, 50, ... (not 2 x 10^1)."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _: Any) -> str:
        lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
        return f"{value:g}" if round(lead, 6) in (1.0, 2.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))


def bench_figure(report: dict[str, Any]) -> Figure:
    """Wall time against workers (distrib's measured lines; every peer a labelled point, at
    its worker or process count) and distrib's speedup (measured, and simulated from the
    first measured count on), the legend below both; the rest is in the report's JSON."""
    fig = Figure(figsize=(13, 5.6), layout="constrained")
    wall_ax, speed_ax = fig.subplots(1, 2, width_ratios=(1.6, 1))
    points: list[tuple[float, float, str, str]] = []
    counts = _measured_lines(wall_ax, speed_ax, report, points)
    peers = bench_peers(report)
    for ks, seconds, label, color, marker in peers:
        wall_ax.plot(ks, seconds, marker=marker, ls=":" if len(ks) > 1 else "", color=color,
                     ms=6, lw=1)  # fmt: skip
        points.append((float(ks[-1]), seconds[-1], label, color))
    every = [float(y) for line in wall_ax.get_lines() for y in line.get_ydata()]
    wall_ax.set_yscale("log")
    wall_ax.set_ylim(min(every) / 1.6, max(every) * 1.6)
    top = max(counts + [k for ks, *_ in peers for k in ks])
    wall_ax.set_xscale("log", base=2)
    wall_ax.set_xlim(0.07, top * 8)
    _integer_log2_axis(wall_ax, "x")
    _seconds_axis(wall_ax)
    _label_points(wall_ax, points)
    settings = report["settings"]
    grown = settings.get("grow", 1)
    rows = f"{report['n_train']:,} training rows" + (f", grown x{grown}" if grown > 1 else "")
    wall_ax.set_title(f"Wall time against workers, {settings['dataset']} ({rows})", fontsize=10)
    wall_ax.set_xlabel("workers (1 thread each); one-process runs at 1, loky's at its processes")
    wall_ax.set_ylabel("seconds (median)")
    wall_ax.grid(True, which="both", alpha=0.25)

    base = min(counts)
    projected = [max(p["workers"]) for key in ("projection", "multinomial_projection")
                 if (p := report.get(key))]  # fmt: skip
    far = max([top, *projected])
    speed_ax.plot([base, far], [1, far / base], color="gray", lw=0.8, label="ideal")
    speed_ax.set_xscale("log", base=2)
    speed_ax.set_yscale("log", base=2)
    speed_ax.set_xlabel("workers (1 thread each)")
    speed_ax.set_ylabel(f"speedup over {base} worker(s)")
    speed_ax.set_title("distrib's speedup", fontsize=10)
    _integer_log2_axis(speed_ax, "x")
    _integer_log2_axis(speed_ax, "y")
    speed_ax.grid(True, which="both", alpha=0.25)
    handles: dict[str, Any] = {}
    for ax in (wall_ax, speed_ax):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=3,
               fontsize=7, frameon=False)  # fmt: skip
    machine = report.get("machine", {})
    fig.suptitle(f"distrib bench: {machine.get('cores')} cores, {machine.get('cpu', '')}",
                 fontsize=9)  # fmt: skip
    return fig


def plot_bench(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """`bench_figure` as a PNG (``bench.png``), written atomically."""
    save_png(bench_figure(report), path)


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
