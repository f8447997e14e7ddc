"""The training job, end to end: load -> split -> dispatch -> reduce -> evaluate -> write.

`train` is the Python API behind ``distrib train``; the CLI only parses flags and calls it.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, KilledWorker
from joblib import parallel_config

from distrib import __version__
from distrib.checkpoint import RUN_FILES, Checkpoints, refuse_finished
from distrib.cluster import ClusterConfig, connect, describe, package_versions
from distrib.config import TrainConfig
from distrib.data import Dataset, data_home, load_dataset
from distrib.dispatch import ATTEMPT_TOPIC, BinaryFit, cluster_backend, fit_binary_classifiers
from distrib.errors import ClusterError, ConfigError, DistribError, OutputError
from distrib.evaluate import evaluate
from distrib.files import write_json
from distrib.model import LinearModel
from distrib.reduce import reduce_fits
from distrib.report import MISCLASSIFIED_IMAGES, SAMPLE_IMAGES, render_report, save_report_images
from distrib.split import SplitArrays, check_labels, split_arrays
from distrib.transfer import (
    TRANSFER_MODES,
    ArrayFiles,
    InMemoryArrays,
    TrainingData,
    file_signatures,
    load_in_memory,
    prepare_split_arrays,
    release_aligned,
)


@dataclass
class RunResult:
    """What a training run produced (all of it is also in ``out``)."""

    out: Path
    model: LinearModel
    metrics: dict[str, Any]
    model_info: dict[str, Any] = field(repr=False)


class _Phases:
    """Wall time per phase, in the order the phases ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - t0

    def report(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._start}


def default_out_dir() -> Path:
    """``runs/<timestamp>`` in the current folder."""
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def prepare_out_dir(out: str | os.PathLike[str] | None, resume: bool = False) -> tuple[Path, bool]:
    """Create (or accept) the run folder and prove it is writable, before any work.

    With ``resume``, the folder must hold the checkpoints of an unfinished run.
    Returns the folder and whether this call created it.
    """
    folder = Path(out) if out is not None else default_out_dir()
    existed = folder.exists()
    if existed and not folder.is_dir():
        raise OutputError(f"--out {folder} is a file, not a folder: choose another path")
    if resume:
        refuse_finished(folder)
    taken = [name for name in RUN_FILES if (folder / name).exists()]
    if taken:
        raise OutputError(
            f"{folder} already holds a run ({', '.join(taken)}): choose another --out "
            "or remove that folder"
        )
    if resume and not Checkpoints(folder).exists():
        Checkpoints(folder).manifest()  # raises, naming the missing file
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to the output folder {folder} ({exc.strerror or exc}): "
            "choose a writable --out"
        ) from exc
    return folder, not existed


def _choose_transfer(client: Client, files: ArrayFiles, mode: str) -> str:
    """``path`` where every worker sees the prepared files as they are here, else ``scatter``.

    ``mode`` was validated by `train`.
    """
    if mode == "scatter":
        return mode
    paths = files.paths()
    here = file_signatures(paths)
    seen = client.run(file_signatures, paths)
    blind = sorted(worker for worker, sigs in seen.items() if list(sigs) != here)
    if not blind:
        return "path"
    if mode == "path":
        raise ConfigError(
            f"--transfer path: worker(s) {', '.join(blind[:3])} cannot see the files in "
            f"{files.folder} as this client does: mount the data folder at the same path on "
            "every worker, or use --transfer scatter"
        )
    return "scatter"


def _save_images(
    folder: Path, dataset: Dataset, parts: SplitArrays, metrics: dict[str, Any]
) -> None:
    """The raw images the report shows: the first training images, the first mistakes."""
    wrong = metrics["misclassified"]
    shown = slice(0, MISCLASSIFIED_IMAGES)
    samples = parts.split.train_index[:SAMPLE_IMAGES]
    wrong_rows = np.asarray(wrong["dataset_index"][shown], dtype=np.int64)
    save_report_images(
        folder,
        samples=dataset.X[samples].compute(scheduler="threads"),
        sample_labels=dataset.y[samples].compute(scheduler="threads"),
        wrong=dataset.X[wrong_rows].compute(scheduler="threads"),
        wrong_true=np.asarray(wrong["true"][shown]),
        wrong_pred=np.asarray(wrong["predicted"][shown]),
    )


def _warm_up() -> None:
    """Import what the fits need on a worker, so the first fit does not pay for it."""
    import sklearn.linear_model  # noqa: F401


def _fit_classes(
    client: Client,
    data: TrainingData,
    labels: list[int],
    config: TrainConfig,
    run_id: str,
    checkpoints: Checkpoints,
    folder: Path,
    already: int,
    say: Callable[[str], None],
) -> list[BinaryFit]:
    """Dispatch the classes; checkpoint each as it arrives; name what went wrong."""
    progress = _progress(say, already + len(labels), already)
    finished: list[int] = []

    def on_fit(fit: BinaryFit) -> None:
        checkpoints.save(fit)
        finished.append(fit.label)
        progress(fit)

    resume_hint = (
        f"{already + len(finished)} class(es) are checkpointed in {checkpoints.folder}; "
        f"run `distrib train --resume {folder}` to fit only the rest"
    )
    if not labels:
        return []
    try:
        return fit_binary_classifiers(
            data, labels, config.estimator_params(), on_fit=on_fit, run_id=run_id
        )
    except KilledWorker as exc:
        attempts = _attempts(client, run_id)
        lost = [label for label in labels if label not in finished]
        tries = {label: len(attempts.get(label, [])) for label in lost}
        worst = max(lost, key=tries.__getitem__, default=None)
        if worst is not None and tries[worst] >= 2:
            what = f"class {worst} was started {tries[worst]} times and each time its worker died"
        else:
            what = f"a worker died again and again running one of the classes {lost}"
        raise DistribError(
            f"{what} (dask gave up after distributed.scheduler.allowed-failures retries): "
            f"check the workers' memory limit and logs. {resume_hint}"
        ) from exc
    except (CancelledError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        address = getattr(client.scheduler, "address", "?")
        raise ClusterError(
            f"lost the Dask scheduler at {address} during the fit ({reason}); "
            f"{resume_hint} once it is back"
        ) from exc


def _attempts(client: Client, run_id: str) -> dict[int, list[dict[str, Any]]]:
    """Every start of every class in this run, from the workers' events, oldest first."""
    by_label: dict[int, list[dict[str, Any]]] = {}
    try:
        events = client.get_events(ATTEMPT_TOPIC)
    except Exception:  # events are diagnostics; never fail a run for them
        return by_label
    for _, message in events:
        if isinstance(message, dict) and message.get("run_id") == run_id:
            by_label.setdefault(int(message["label"]), []).append(message)
    for attempts in by_label.values():
        attempts.sort(key=lambda m: m["time"])
    return by_label


def _retries(client: Client, run_id: str, fits: list[BinaryFit]) -> dict[int, list[dict[str, Any]]]:
    """For each class that ran more than once: where the earlier attempts ran and why they
    did not finish."""
    alive = set(client.scheduler_info(n_workers=-1).get("workers", {}))
    attempts = _attempts(client, run_id)
    retries: dict[int, list[dict[str, Any]]] = {}
    for fit in fits:
        earlier = attempts.get(fit.label, [])[:-1]  # the last start is the one that finished
        if earlier:
            retries[fit.label] = [
                {
                    "worker": a["worker"],
                    "started": a["time"],
                    "why": "its worker left the cluster (died or was restarted) during the fit"
                    if a["worker"] not in alive
                    else "the attempt did not finish on that worker",
                }
                for a in earlier
            ]
    return retries


def _progress(
    log: Callable[[str], None], total: int, already: int = 0
) -> Callable[[BinaryFit], None]:
    done = already

    def on_fit(fit: BinaryFit) -> None:
        nonlocal done
        done += 1
        status = "" if fit.converged else ", NOT converged (raise --max-iter)"
        log(
            f"[{done:>{len(str(total))}}/{total}] class {fit.label} fitted on {fit.worker} "
            f"in {fit.seconds:.2f} s ({fit.n_iter} iterations{status})"
        )

    return on_fit


def train(
    config: TrainConfig | None = None,
    *,
    cluster: ClusterConfig | None = None,
    client: Client | None = None,
    out: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    transfer: str = "auto",
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train one binary logistic regression per class on a Dask cluster and save the run.

    Parameters
    ----------
    config : TrainConfig, optional
        Data set, split, scaling and the binary fits' settings (defaults: MNIST, notebook
        split, unit scale, ``C=0.1``, lbfgs).
    cluster : ClusterConfig, optional
        Where to run when no ``client`` is given: an address, ``DASK_SCHEDULER_ADDRESS``, or a
        new `LocalCluster` (closed at the end).
    client : distributed.Client, optional
        An existing client to use (left open).
    out : path, optional
        The run folder (default ``runs/<timestamp>``). It must not hold a run already.
    home : path, optional
        The data cache folder (see `distrib.data.data_home`).
    transfer : {"auto", "path", "scatter"}
        How the training arrays reach the workers (see `distrib.transfer`). ``auto`` uses
        ``path`` when every worker sees the prepared files, else ``scatter``.
    resume : bool
        ``out`` holds an interrupted run: fit only the classes it has no checkpoint for.
        ``config`` must equal the run's settings (see `distrib.checkpoint.resume_config`).
    log : callable, optional
        Receives one-line progress messages.

    Returns
    -------
    RunResult
        The model and metrics; ``model.npz``, ``model.json`` and ``metrics.json`` are in
        ``out``.
    """
    config = config or TrainConfig()
    if transfer not in TRANSFER_MODES:
        raise ConfigError(f"unknown transfer mode {transfer!r}: expected one of {TRANSFER_MODES}")
    say = log or (lambda _msg: None)
    folder, created = prepare_out_dir(out, resume)
    try:
        return _run(config, cluster, client, folder, home, transfer, resume, say)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _run(
    config: TrainConfig,
    cluster: ClusterConfig | None,
    client: Client | None,
    folder: Path,
    home: str | os.PathLike[str] | None,
    transfer: str,
    resume: bool,
    say: Callable[[str], None],
) -> RunResult:
    phase = _Phases()
    with phase("load"):
        dataset = load_dataset(config.dataset, home, log=say)
    say(f"data: {dataset.name} {tuple(dataset.X.shape)} from {dataset.source}")
    with phase("split"):
        parts = split_arrays(dataset, config.split, config.scale)
        y_train = parts.y_train.compute(scheduler="threads")
        y_test = parts.y_test.compute(scheduler="threads")
        classes = check_labels(y_train, y_test)
    say(
        f"split: {config.split}, {len(y_train)} train / {len(y_test)} test rows, "
        f"{len(classes)} classes, pixels {config.scale}"
    )
    with phase("prepare"):
        key = {
            "dataset": dataset.name,
            "X_sha256": dataset.X_sha256,
            "y_sha256": dataset.y_sha256,
            "split": config.split,
            "scale": config.scale,
        }
        files, test_files, density = prepare_split_arrays(
            parts, data_home(home), key, config.layout
        )
        layout = files.layout
    say(f"layout: {layout} ({density:.1%} of training pixels non-zero)")

    with contextlib.ExitStack() as stack:
        if client is None:
            with phase("connect"):
                client = stack.enter_context(connect(cluster, log=say))
        cluster_info = describe(client)
        with phase("transfer"):
            client.run(_warm_up)
            mode = _choose_transfer(client, files, transfer)
            data: TrainingData = files if mode == "path" else load_in_memory(files)
            scatter = [data] if isinstance(data, InMemoryArrays) else None
            backend = parallel_config(backend=cluster_backend(client, scatter))
        say(f"transfer: {mode} ({phase.seconds['transfer']:.2f} s)")
        checkpoints = Checkpoints(folder)
        manifest = {
            "settings": {k: v for k, v in config.to_dict().items() if k != "preset"},
            "data": key,
            "layout": layout,
            "classes": classes.tolist(),
            "distrib_version": __version__,
        }
        checkpoints.begin(manifest, resume)
        done = checkpoints.load() if resume else {}
        todo = [c for c in classes.tolist() if c not in done]
        if done:
            say(f"resuming: {len(done)} class(es) from checkpoints, {len(todo)} to fit")
        say(f"fitting {len(todo)} one-vs-rest classifiers on {cluster_info['workers']} workers")
        run_id = uuid.uuid4().hex
        try:
            with phase("fit"), backend:
                fits = _fit_classes(
                    client, data, todo, config, run_id, checkpoints, folder, len(done), say
                )
        finally:
            if isinstance(data, InMemoryArrays):
                with contextlib.suppress(Exception):
                    client.run(release_aligned, data.token)
        retries = _retries(client, run_id, fits)

    with phase("reduce"):
        model, records = reduce_fits([*done.values(), *fits], classes)
        for record in records:
            record["from_checkpoint"] = record["label"] in done
            record["retries"] = retries.get(record["label"], [])
    with phase("evaluate"):
        train_pred = model.predict(files.arrays()[0])
        test_pred = model.predict(test_files.arrays()[0])
        metrics = evaluate(classes, y_train, train_pred, y_test, test_pred, parts.split.test_index)
    say(
        f"train accuracy {metrics['train_accuracy']:.4f}, "
        f"test accuracy {metrics['test_accuracy']:.4f}"
    )
    data_info = {
        **dataset.describe(),
        "split": config.split,
        "scale": config.scale,
        "pixel_max": dataset.pixel_max,
        "n_train": len(y_train),
        "n_test": len(y_test),
    }
    model_info = {
        "settings": config.to_dict(),
        "data": data_info,
        "versions": package_versions(),
        "cluster": cluster_info,
        "transfer": {**data.describe(), "mode": mode, "density": density},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with phase("write"):
        model.save(folder, model_info)
        _save_images(folder, dataset, parts, metrics)
    metrics = {
        **metrics,
        "fits": records,
        "settings": config.to_dict(),
        "data": data_info,
        "cluster": cluster_info,
        "transfer": mode,
        "layout": layout,
        "timings": phase.report(),
    }
    write_json(folder / "metrics.json", metrics)
    checkpoints.remove()
    say(f"wrote {folder}/model.npz, model.json, metrics.json ({metrics['timings']['total']:.1f} s)")
    try:
        report, _ = render_report(folder)
        say(f"report: {report}")
    except Exception as exc:  # the run itself is complete; the report can be redone
        say(f"report not written ({exc}); run `distrib report {folder}`")
    return RunResult(out=folder, model=model, metrics=metrics, model_info=model_info)
