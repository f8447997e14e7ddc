"""The run report: every figure of the notebook plus the cluster's story, in one page.

`render_report` reads a run folder (``model.npz``, ``model.json``, ``metrics.json``,
``images.npz``), renders every figure in memory, and only then writes ``figures/*.png``,
``report.html`` (figures embedded, opens from disk) and ``report.md`` (links the PNGs), each
atomically. A missing or corrupt input is named and nothing is written.
"""

from __future__ import annotations

import base64
import html
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distrib.config import SOLVER_NAMES
from distrib.errors import OutputError
from distrib.files import write_bytes
from distrib.linear.model import LinearModel

IMAGES_FILE = "images.npz"
#: Phases of `metrics.json`'s timings that end after the report is drawn (and the total).
_AFTER_THE_REPORT = ("report", "shutdown", "total")
SAMPLE_IMAGES = 10
MISCLASSIFIED_IMAGES = 30
_METRICS_KEYS = (
    "train_accuracy",
    "test_accuracy",
    "confusion_matrix",
    "per_class",
    "misclassified",
    "timings",
    "fits",
    "classes",
    "class_counts",
)


def save_report_images(
    folder: Path,
    samples: np.ndarray,
    sample_labels: np.ndarray,
    wrong: np.ndarray,
    wrong_true: np.ndarray,
    wrong_pred: np.ndarray,
) -> None:
    """Keep the few images the report shows, so it renders without the data cache."""
    from distrib.files import write_npz

    write_npz(
        folder / IMAGES_FILE,
        samples=samples,
        sample_labels=sample_labels,
        wrong=wrong,
        wrong_true=wrong_true,
        wrong_pred=wrong_pred,
    )


def _load_run(run_dir: Path) -> tuple[LinearModel, dict[str, Any], dict[str, Any], Any]:
    metrics_path = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise OutputError(f"{run_dir} is not a folder: pass a run folder of `distrib train`")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OutputError(f"{metrics_path} is missing: {run_dir} is not a finished run") from exc
    except (OSError, ValueError) as exc:
        raise OutputError(f"{metrics_path} is not valid JSON ({exc})") from exc
    missing = [k for k in _METRICS_KEYS if not isinstance(metrics, dict) or k not in metrics]
    if missing:
        raise OutputError(f"{metrics_path} lacks {', '.join(missing)}: it is not a distrib run")
    model, meta = LinearModel.load(run_dir)
    images_path = run_dir / IMAGES_FILE
    try:
        with np.load(images_path, allow_pickle=False) as npz:
            images = {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise OutputError(f"{images_path} is missing: re-run `distrib train`") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise OutputError(f"{images_path} is corrupt ({exc})") from exc
    return model, meta, metrics, images


def _table(header: list[str], rows: list[list[Any]]) -> tuple[str, str]:
    """The same table as HTML and as Markdown."""
    cells = [[str(c) for c in row] for row in rows]
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(row) + " |\n" for row in cells)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", md


def _is_multinomial(metrics: dict[str, Any]) -> bool:
    return bool(metrics.get("solver", {}).get("strategy") == "multinomial")


def _fit_tables(metrics: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Per class (with each binary fit for ``ovr``), and the solver and blocks of a
    multinomial fit."""
    scores = ["class", "precision", "recall", "F1", "support"]

    def score_cells(c: dict[str, Any]) -> list[Any]:
        return [c["class"], f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}",
                c["support"]]  # fmt: skip

    if _is_multinomial(metrics):
        solver = metrics["solver"]
        name = SOLVER_NAMES.get(solver.get("solver", "lbfgs"), "L-BFGS")
        solver_rows = [
            [f"{name} iterations", solver["n_iter"]],
            ["passes over the rows (loss and gradient evaluations)", solver["n_evaluations"]],
            ["converged", "yes" if solver["converged"] else f"NO ({solver['message']})"],
            ["fit seconds", f"{solver['seconds']:.2f}"],
            ["median seconds per evaluation", f"{solver['median_evaluation_seconds']:.4f}"],
            ["of which the busiest worker", f"{solver['median_block_compute_seconds']:.4f}"],
            ["of which coordination", f"{solver['median_coordination_seconds']:.4f}"],
        ]
        if "hessian_rows" in solver:  # Newton-CG's work on its sample of the rows
            solver_rows += [
                ["Hessian's sample (rows)", f"{solver['hessian_rows']:,}"],
                ["products on the sample (passes' worth of rows)",
                 f"{solver['hessian_products']} ({solver.get('hessian_passes_worth', 0):.1f})"],
                ["seconds on the sample", f"{solver['hessian_seconds']:.2f}"],
            ]  # fmt: skip
        blocks = [
            [b["start"], b["rows"], b["worker"], len(b.get("loads", [])) or 1]
            for b in metrics["fits"]
        ]
        return {
            "per_class": _table(scores, [score_cells(c) for c in metrics["per_class"]]),
            "solver": _table(["", ""], solver_rows),
            "blocks": _table(["first row", "rows", "worker", "times loaded"], blocks),
        }
    fits = {f["label"]: f for f in metrics["fits"]}
    per_class = [
        [
            *score_cells(c),
            fits[c["class"]]["n_iter"],
            "yes" if fits[c["class"]]["converged"] else "NO",
            f"{fits[c['class']]['seconds']:.2f}",
            fits[c["class"]]["worker"],
            len(fits[c["class"]].get("retries", [])),
        ]
        for c in metrics["per_class"]
    ]
    header = [*scores, "iterations", "converged", "fit seconds", "worker", "lost attempts"]
    return {"per_class": _table(header, per_class)}


def _tables(metrics: dict[str, Any], meta: dict[str, Any]) -> dict[str, tuple[str, str]]:
    settings = [[k, v] for k, v in meta.get("settings", {}).items()]
    data = meta.get("data", {})
    cluster = meta.get("cluster", {})
    run = [
        [
            "data set",
            f"{data.get('dataset')} {data.get('image_shape')}, {data.get('n_train')} "
            f"train / {data.get('n_test')} test ({data.get('split')} split)",
        ],
        ["source", data.get("source")],
        ["X sha256", data.get("X_sha256")],
        ["y sha256", data.get("y_sha256")],
        [
            "cluster",
            f"{cluster.get('workers')} workers, {cluster.get('threads')} threads, "
            f"scheduler {cluster.get('scheduler')}",
        ],
        ["data transfer", f"{metrics.get('transfer')}, layout {metrics.get('layout')}"],
        ["train accuracy", f"{metrics['train_accuracy']:.4f}"],
        ["test accuracy", f"{metrics['test_accuracy']:.4f}"],
    ]
    versions = [[k, v] for k, v in meta.get("versions", {}).items()]
    # the phases that had ended when the run drew its report: the same table whenever it is
    # drawn again (metrics.json's `timings` go on with the report, the shutdown and the total)
    before = {k: v for k, v in metrics["timings"].items() if k not in _AFTER_THE_REPORT}
    timings = [[k, f"{v:.3f}"] for k, v in before.items()]
    timings.append(["total before the report", f"{sum(before.values()):.3f}"])
    return {
        "run": _table(["", ""], run),
        **_fit_tables(metrics),
        "settings": _table(["setting", "value"], settings),
        "timings": _table(["phase", "seconds"], timings),
        "versions": _table(["library", "version"], versions),
    }


def render_report(run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Render ``report.html`` and ``report.md`` (and ``figures/``) for a finished run.

    Returns
    -------
    html_path, md_path : Path
    """
    from distrib.report import plots  # matplotlib loads when a report is drawn, not on import

    run_dir = Path(run_dir)
    model, meta, metrics, images = _load_run(run_dir)
    data = meta.get("data", {})
    shape = tuple(data.get("image_shape") or ())
    # figures that show rows as pictures only where the features form a square image
    square = len(shape) == 2 and shape[0] * shape[1] == model.n_features
    image_shape = (int(shape[0]), int(shape[1])) if square else None
    classes = [int(c) for c in metrics["classes"]]
    counts = metrics["class_counts"]
    n_wrong = len(metrics["misclassified"]["test_position"])
    figures: dict[str, tuple[str, Any]] = {}
    if image_shape is not None:
        figures["samples"] = (
            "Sample training images",
            plots.plot_samples(images["samples"], images["sample_labels"], image_shape),
        )
    figures["class_histograms"] = (
        "Classes in the train and test splits",
        plots.plot_class_histograms(classes, counts["train"], counts["test"]),
    )
    if image_shape is not None:
        figures["coefficients"] = (
            "Coefficients of each class",
            plots.plot_coefficients(model.coef, classes, image_shape, model.strategy),
        )
    figures["confusion_matrix"] = (
        "Confusion matrix",
        plots.plot_confusion(metrics["confusion_matrix"], classes, metrics["test_accuracy"]),
    )
    if image_shape is not None:
        figures["misclassified"] = (
            "Misclassified test images",
            plots.plot_misclassified(
                images["wrong"], images["wrong_true"], images["wrong_pred"], image_shape, n_wrong
            ),
        )
    figures["timeline"] = (
        ("Convergence and time per evaluation", plots.plot_convergence(metrics["solver"]))
        if _is_multinomial(metrics)
        else ("Timeline of the fits on the cluster", plots.plot_timeline(metrics["fits"]))
    )
    pngs = {name: plots.figure_png(fig) for name, (_, fig) in figures.items()}
    tables = _tables(metrics, meta)

    title = (
        f"distrib run {run_dir.name}: {data.get('dataset')}, test accuracy "
        f"{metrics['test_accuracy']:.4f}"
    )
    shown = ["samples", "class_histograms", "coefficients", "confusion_matrix", "misclassified"]
    order = [name for name in shown if name in figures]
    html_parts = [f"<h1>{html.escape(title)}</h1>", tables["run"][0]]
    md_parts = [f"# {title}\n", tables["run"][1]]
    for name in order:
        caption = figures[name][0]
        encoded = base64.b64encode(pngs[name]).decode("ascii")
        html_parts += [
            f"<h2>{caption}</h2>",
            f'<img alt="{caption}" src="data:image/png;base64,{encoded}">',
        ]
        md_parts += [f"## {caption}\n", f"![{caption}](figures/{name}.png)\n"]
    html_parts += ["<h2>Per class</h2>", tables["per_class"][0]]
    md_parts += ["## Per class\n", tables["per_class"][1]]
    for name, caption in (("solver", "Multinomial solver"), ("blocks", "Row blocks")):
        if name in tables:
            html_parts += [f"<h2>{caption}</h2>", tables[name][0]]
            md_parts += [f"## {caption}\n", tables[name][1]]
    encoded = base64.b64encode(pngs["timeline"]).decode("ascii")
    html_parts += [
        f"<h2>{figures['timeline'][0]}</h2>",
        f'<img alt="timeline" src="data:image/png;base64,{encoded}">',
    ]
    md_parts += [f"## {figures['timeline'][0]}\n", "![timeline](figures/timeline.png)\n"]
    for name, caption in (
        ("timings", "Wall time per phase"),
        ("settings", "Settings"),
        ("versions", "Library versions"),
    ):
        html_parts += [f"<h2>{caption}</h2>", tables[name][0]]
        md_parts += [f"## {caption}\n", tables[name][1]]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left;font-size:13px}img{max-width:100%}"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>{style}</style></head><body>"
        + "\n".join(html_parts)
        + "</body></html>\n"
    )

    figures_dir = run_dir / "figures"
    try:
        figures_dir.mkdir(exist_ok=True)
        for name, png in pngs.items():
            write_bytes(figures_dir / f"{name}.png", png)
        write_bytes(run_dir / "report.md", "\n".join(md_parts).encode("utf-8"))
        write_bytes(run_dir / "report.html", page.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write the report into {run_dir}: {exc}") from exc
    return run_dir / "report.html", run_dir / "report.md"
