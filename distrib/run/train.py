"""The training job, end to end: load -> split -> dispatch -> reduce -> evaluate -> write.

`train` is the Python API behind ``distrib train``; the CLI only parses flags and calls it.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from distrib._version import __version__
from distrib.config import TRANSFER_MODES, TrainConfig
from distrib.data.arrays import load_arrays
from distrib.data.datasets import Dataset, data_home, load_dataset
from distrib.data.grow import check_grow
from distrib.data.split import SplitArrays, check_labels, compact_labels, split_arrays
from distrib.errors import ClusterError, ConfigError, OutputError
from distrib.files import storage_error, write_json
from distrib.linear.model import SCORE_ROWS, LinearModel
from distrib.parallel.cluster import (
    ClusterConfig,
    Connection,
    describe,
    package_versions,
    start_cluster,
    warm_workers,
)
from distrib.parallel.fitting import (
    FitHooks,
    FitOutcome,
    by_class_index,
    check_class_weight_labels,
    fit_dask_rows,
)
from distrib.parallel.memory import check_fits, matrix_bytes, worker_memory
from distrib.parallel.prepared import (
    choose_layout,
    prepare_row_store,
    prepare_split_arrays,
    split_key,
    training_density,
    workers_blind_to,
    workers_blind_to_paths,
)
from distrib.parallel.row_store import RowStore
from distrib.parallel.rows import ArrayFiles, TrainingData
from distrib.parallel.strategies import Strategy, fit_training_data, strategy_for
from distrib.report.render import (
    MISCLASSIFIED_IMAGES,
    SAMPLE_IMAGES,
    render_report,
    save_report_images,
)
from distrib.run.attempts import fit_naming_failures
from distrib.run.checkpoint import RUN_FILES, Checkpoints, EvaluationLog, refuse_finished
from distrib.run.evaluate import evaluate
from distrib.run.phases import Phases

#: The estimator whose `load` reads a run folder back (`distrib.estimator`; not imported
#: here: it loads scikit-learn, which a multinomial run's driver does without).
ESTIMATOR_NAME = "DaskLogisticRegression"


@dataclass
class RunResult:
    """What a training run produced (all of it is also in ``out``)."""

    out: Path
    model: LinearModel
    metrics: dict[str, Any]
    model_info: dict[str, Any] = field(repr=False)


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
        refuse_finished(folder)  # a model written before a stop is written again
    taken = [name for name in RUN_FILES if (folder / name).exists()]
    if taken and not resume:
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
    blind = workers_blind_to(client, files)
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


def _generated_rows(client: Client, dataset: Dataset) -> None:
    """Refuse to make grown rows on workers that cannot read the data set's files."""
    blind = workers_blind_to_paths(client, list(dataset.files))
    if blind:
        folder = os.path.dirname(dataset.files[0])
        raise ConfigError(
            f"--grow makes the training rows on the workers from {folder}, which worker(s) "
            f"{', '.join(blind[:3])} cannot see as this client does: mount that folder at the "
            "same path on every worker (docker-compose.yml mounts its data volume at /data)"
        )


def _check_memory(
    client: Client, config: TrainConfig, parts: SplitArrays, density: float, layout: str
) -> None:
    """Refuse a strategy whose rows cannot fit in the workers' memory limits."""
    n_rows, n_features = (int(n) for n in parts.X_train.shape)
    nbytes = matrix_bytes(n_rows, n_features, density, layout)
    # a grown chunk arrives dense (float32) and is copied once as it becomes a block
    chunk = 2 * max(parts.X_train.chunks[0]) * n_features * 4 if parts.grow > 1 else 0
    check_fits(worker_memory(client), strategy_for(config.strategy), nbytes, chunk)


def _streams_rows(job: _Job, client: Client, ready: _Prepared) -> bool:
    """Whether the fit streams its training rows from disk (``--rows``): asked, or (auto)
    where a multinomial fit's rows do not fit in the workers' memory. Otherwise the
    memory check stands: a strategy that cannot fit is refused."""
    config = job.config
    if config.rows == "disk":
        return True
    try:
        _check_memory(client, config, ready.parts, ready.density, ready.layout)
    except ClusterError as exc:
        if config.rows == "memory" or not job.strategy.holds_row_blocks:
            raise
        why = str(exc).split(": stream the rows from disk", 1)[0]  # the numbers, not the fix
        job.say(f"rows: streamed from disk: {why}")
        return True
    return False


def _streamed_rows(job: _Job, client: Client, ready: _Prepared) -> RowStore:
    """The training rows as a row store that every worker reads by path."""
    store = prepare_row_store(ready.parts, ready.y_train, data_home(job.home), ready.key,
                              client=client, log=job.say)  # fmt: skip
    blind = workers_blind_to_paths(client, store.paths())
    if blind:
        raise ConfigError(
            f"rows streamed from disk are read by path, and worker(s) {', '.join(blind[:3])} "
            f"cannot see {store.folder} as this client does: mount the data folder at the "
            "same path on every worker, or use --rows memory"
        )
    return store


def train(
    config: TrainConfig | None = None,
    *,
    cluster: ClusterConfig | Connection | None = None,
    client: Client | None = None,
    out: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    transfer: str = "auto",
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    started: float | None = None,
) -> RunResult:
    """Fit logistic regression (one-vs-rest or multinomial) on a Dask cluster; save the run.

    Parameters
    ----------
    config : TrainConfig, optional
        Data set, split, scaling and the fit's settings (defaults: MNIST, notebook split,
        unit scale, ``C=0.1``, lbfgs, one-vs-rest).
    cluster : ClusterConfig or Connection, optional
        Where to run when no ``client`` is given: an address, ``DASK_SCHEDULER_ADDRESS``, or a
        new `LocalCluster`, connected in the background while the data is loaded and split;
        or a connection already started (`start_cluster`). Closed at the end.
    client : distributed.Client, optional
        An existing client to use (left open).
    out : path, optional
        The run folder (default ``runs/<timestamp>``). It must not hold a run already.
    home : path, optional
        The data cache folder (see `distrib.data.datasets.data_home`).
    transfer : {"auto", "path", "scatter"}
        How the training arrays reach the workers (see `distrib.parallel.rows`). ``auto`` uses
        ``path`` when every worker sees the prepared files, else ``scatter``.
    resume : bool
        ``out`` holds an interrupted run: fit only the classes it has no checkpoint for.
        ``config`` must equal the run's settings (see `distrib.run.checkpoint.resume_config`).
    log : callable, optional
        Receives one-line progress messages.
    started : float, optional
        ``time.time()`` when the work began (the CLI passes its process's start): the
        timings then hold a ``startup`` phase and their ``total`` is the process's wall time.

    Returns
    -------
    RunResult
        The model and metrics; ``model.npz``, ``model.json`` and ``metrics.json`` are in
        ``out``.
    """
    phase = Phases(started)
    config = config or TrainConfig()
    say = log or (lambda _msg: None)
    connection = cluster if isinstance(cluster, Connection) else None
    failed = True
    try:
        if transfer not in TRANSFER_MODES:
            raise ConfigError(
                f"unknown transfer mode {transfer!r}: expected one of {TRANSFER_MODES}"
            )
        if client is not None and connection is not None:
            raise ConfigError("pass a client or a started connection as cluster, not both")
        folder, created = prepare_out_dir(out, resume)
        if client is None and connection is None:  # after the cheap checks
            libraries = strategy_for(config.strategy).worker_libraries(config.fit_solver)
            connection = start_cluster(cluster if isinstance(cluster, ClusterConfig) else None,
                                       libraries, say)  # fmt: skip
        try:
            job = _Job(config, folder, home, transfer, resume, say, phase)
            result = _run(job, connection, client)
        except BaseException:
            if created and not any(folder.iterdir()):
                folder.rmdir()
            raise
        failed = False
        return result
    finally:
        if connection is not None:
            connection.close(quiet=failed)  # done already, unless the run failed


@dataclass
class _Job:
    """What every phase of one run reads: its settings, its folder, and where it reports."""

    config: TrainConfig
    folder: Path
    home: str | os.PathLike[str] | None
    transfer: str
    resume: bool
    say: Callable[[str], None]
    phase: Phases

    @property
    def strategy(self) -> Strategy:
        return strategy_for(self.config.strategy)


@dataclass
class _Prepared:
    """The data of a run once loaded and split, and how its training rows are laid out."""

    dataset: Dataset
    parts: SplitArrays
    y_train: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray
    key: dict[str, Any]
    density: float
    layout: str
    # grown rows for a multinomial fit are made on the workers, chunk by chunk, and stay
    # there as blocks: neither this process nor any one worker holds the whole matrix
    generated: bool


@dataclass
class _Placed:
    """Where the rows are: the prepared files (``files`` None for rows made on the
    workers) and how the training rows reach the workers (``data`` None: made there)."""

    files: ArrayFiles | None
    test_files: ArrayFiles
    data: TrainingData | None
    mode: str


@dataclass
class _Fitted:
    """The fit's outcome, and the hooks that followed it (its run id, what was resumed)."""

    outcome: FitOutcome
    hooks: FitHooks


def _run(job: _Job, connection: Connection | None, client: Client | None) -> RunResult:
    """The phases of a run, one after another; each is timed by ``job.phase``. The cluster
    starts beside the first three (``connection``) and closes beside the last four."""
    ready = _load_and_split(job)
    client, cluster_info = _connect(job, connection, client)
    placed = _place_rows(job, client, ready)
    fitted = _fit(job, client, ready, placed, cluster_info["workers"])
    _reduce(job, client, fitted)
    closed = connection.close_in_background() if connection is not None else None
    model, metrics = _evaluate(job, ready, placed, fitted.outcome)
    model_info = _describe(job, ready, placed, cluster_info)
    _write(job, ready, model, model_info, fitted.outcome, metrics)
    metrics = _report(job, ready, placed, metrics, fitted.outcome, model_info)
    if closed is not None:
        with job.phase("shutdown"):  # what is left of closing the cluster
            closed.result()
    metrics["timings"] = job.phase.report()
    metrics["background"] = {
        "cluster_start": connection.seconds if connection is not None else None,
    }
    # this process's own peak (the workers' are theirs): what a larger training set costs it
    metrics["driver_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_json(job.folder / "metrics.json", metrics)  # again, with the report and shutdown
    return RunResult(out=job.folder, model=model, metrics=metrics, model_info=model_info)


def _load_and_split(job: _Job) -> _Prepared:
    """Phases ``load``, ``split`` and ``prepare``: the data set, the split, the layout."""
    config, say, phase = job.config, job.say, job.phase
    with phase("load"):
        if config.data is not None:
            dataset = load_arrays(config.data)
        else:
            dataset = load_dataset(config.dataset, job.home, log=say)
    say(f"data: {dataset.name} {tuple(dataset.X.shape)} from {dataset.source}")
    with phase("split"):
        check_grow(config.grow, dataset.image_shape, config.deform)
        parts = split_arrays(dataset, config.split, config.scale, config.grow, config.deform)
        y_train, y_test = (compact_labels(y) for y in parts.local("y_train", "y_test"))
        classes = check_labels(y_train, y_test)
    if isinstance(config.class_weight, dict):  # before anything is written
        check_class_weight_labels(config.class_weight, classes)
    grown = f" ({config.grow} variants of each training image)" if config.grow > 1 else ""
    in_order = ", in the data set's row order" if parts.split.order == "data" else ""
    say(
        f"split: {config.split}, {len(y_train)} train{grown} / {len(y_test)} test rows"
        f"{in_order}, {len(classes)} classes, pixels {config.scale}"
    )
    with phase("prepare"):
        key = split_key(dataset, config.split, config.scale)
        density = training_density(parts, data_home(job.home), key)
        layout = choose_layout(config.layout, density)
    say(f"layout: {layout} ({density:.1%} of training pixels non-zero)")
    generated = config.grow > 1 and strategy_for(config.strategy).holds_row_blocks
    return _Prepared(dataset, parts, y_train, y_test, classes, key, density, layout, generated)


def _connect(
    job: _Job, connection: Connection | None, client: Client | None
) -> tuple[Client, dict[str, Any]]:
    """Phase ``cluster``: what is left of starting it, once this process is ready."""
    with job.phase("cluster"):
        if connection is not None:
            if connection.seconds is None:
                job.say("waiting for the cluster to start and its workers to load their libraries")
                _warm_report()
            client = connection.client()
        else:
            assert client is not None
            warm_workers(client, job.strategy.worker_libraries(job.config.fit_solver))
        return client, describe(client)


def _warm_report() -> None:
    """Import matplotlib and draw a first figure while the workers start: the report, drawn
    after the fit, then does not wait for them (~0.3 s of a second's report). A failure
    here is the report's, said when it is drawn."""
    try:
        from distrib.report import plots

        plots.warm_up()
    except Exception:  # the report names it, where it is drawn
        return


def _place_rows(job: _Job, client: Client, ready: _Prepared) -> _Placed:
    """Phases ``transfer`` and ``prepare``: the memory check, the prepared files, and how
    the training rows reach the workers."""
    config, phase = job.config, job.phase
    with phase("transfer"):
        streamed = _streams_rows(job, client, ready)  # the memory check: before any file
        if ready.generated and not streamed:
            _generated_rows(client, ready.dataset)
    with phase("prepare"):
        files, test_files, _ = prepare_split_arrays(
            ready.parts, data_home(job.home), ready.key, config.layout,
            write_train=not (ready.generated or streamed),
        )  # fmt: skip
        store = _streamed_rows(job, client, ready) if streamed else None
    with phase("transfer"):
        data: TrainingData | None = None
        if store is not None:
            mode, data = "streamed", store
        elif files is None:  # generated on the workers
            mode = "generated"
        else:
            mode = _choose_transfer(client, files, job.transfer)
            data = files if mode == "path" else job.strategy.rows_by_value(files)
    job.say(f"transfer: {mode} ({phase.seconds['transfer']:.2f} s)")
    return _Placed(files, test_files, data, mode)


def _fit(job: _Job, client: Client, ready: _Prepared, placed: _Placed, n_workers: int) -> _Fitted:
    """Phase ``fit``: checkpoints begun (or resumed), the fit, its progress."""
    config, say, classes = job.config, job.say, ready.classes
    checkpoints = Checkpoints(job.folder)
    manifest = {
        "settings": {k: v for k, v in config.to_dict().items() if k != "preset"},
        "data": ready.key,
        "layout": ready.layout,
        "classes": classes.tolist(),
        "distrib_version": __version__,
    }
    checkpoints.begin(manifest, job.resume)
    hooks = FitHooks(log=say)
    job.strategy.follow(hooks, checkpoints, job.resume, classes, n_workers)
    journal = hooks.journal if isinstance(hooks.journal, EvaluationLog) else None

    def fit() -> FitOutcome:
        if placed.data is not None:
            return fit_training_data(placed.data, classes, config, client=client, hooks=hooks)
        return fit_dask_rows(
            ready.parts.X_train,
            np.searchsorted(classes, ready.y_train),
            len(classes),
            config,
            client=client,
            hooks=hooks,
            class_weight=by_class_index(config.class_weight, classes),
            predict_rows=True,  # the grown rows exist only as blocks: predict there
        )

    with job.phase("fit"):
        try:
            outcome = fit_naming_failures(job.strategy, client, fit, checkpoints, job.folder,
                                           classes, hooks)  # fmt: skip
        finally:
            if journal is not None:
                journal.close()
    if journal is not None:
        outcome.solver["checkpoint_seconds"] = journal.append_seconds
    if journal is not None and job.resume:
        outcome.solver["resumed"] = {
            "logged_evaluations": len(journal.logged),
            "replayed_evaluations": journal.replayed,
            "replay_seconds": journal.replay_seconds,
        }
        say(
            f"resumed at evaluation {journal.replayed + 1}: {journal.replayed} replayed in "
            f"{journal.replay_seconds:.2f} s"
        )
    return _Fitted(outcome, hooks)


def _reduce(job: _Job, client: Client, fitted: _Fitted) -> None:
    """Phase ``reduce``: what the cluster's events say of each fit record (retries of a
    class, loads of a block)."""
    with job.phase("reduce"):
        try:
            job.strategy.add_cluster_records(client, fitted.hooks.run_id, fitted.outcome)
        except OSError as exc:  # the scheduler left after the fit: the model is whole
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            job.say(f"the cluster's events could not be read ({reason}): the records of the "
                    "fit say nothing of retries or reloads")  # fmt: skip


def _evaluate(
    job: _Job, ready: _Prepared, placed: _Placed, outcome: FitOutcome
) -> tuple[LinearModel, dict[str, Any]]:
    """Phase ``evaluate``: the model's predictions and scores on both parts of the split."""
    classes = ready.classes
    model = LinearModel(outcome.coef, outcome.intercept, classes, job.config.strategy)
    with job.phase("evaluate"):
        if outcome.train_codes is not None:  # predicted by the blocks that held the rows
            train_pred = classes[np.asarray(outcome.train_codes)]
        else:
            assert placed.files is not None
            train_pred = _predicted(model, placed.files)
        test_pred = _predicted(model, placed.test_files)
        metrics = evaluate(classes, ready.y_train, train_pred, ready.y_test, test_pred,
                           ready.parts.split.test_index)  # fmt: skip
    job.say(
        f"train accuracy {metrics['train_accuracy']:.4f}, "
        f"test accuracy {metrics['test_accuracy']:.4f}"
    )
    return model, metrics


def _predicted(model: LinearModel, files: ArrayFiles) -> np.ndarray:
    """The model's predictions of the rows in ``files``, read `SCORE_ROWS` at a time: this
    process holds a slice of them, whatever their number (`ArrayFiles.rows`)."""
    n_rows = files.shape[0]
    return np.concatenate([
        model.predict(files.rows(start, min(start + SCORE_ROWS, n_rows))[0])
        for start in range(0, n_rows, SCORE_ROWS)
    ])  # fmt: skip


def _describe(
    job: _Job, ready: _Prepared, placed: _Placed, cluster_info: dict[str, Any]
) -> dict[str, Any]:
    """What ``model.json`` says of the run: settings, data, versions, cluster, transfer."""
    config = job.config
    return {
        "settings": config.to_dict(),
        "data": {
            **ready.dataset.describe(),
            "split": config.split,
            "row_order": ready.parts.split.order,
            "scale": config.scale,
            "grow": config.grow,
            "pixel_max": ready.dataset.pixel_max,
            "n_train": len(ready.y_train),
            "n_test": len(ready.y_test),
        },
        "versions": package_versions(),
        "cluster": cluster_info,
        "transfer": {
            **(placed.data.describe() if placed.data is not None else {"layout": "per block"}),
            "mode": placed.mode,
            "density": ready.density,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write(
    job: _Job,
    ready: _Prepared,
    model: LinearModel,
    model_info: dict[str, Any],
    outcome: FitOutcome,
    metrics: dict[str, Any],
) -> None:
    """Phase ``write``: ``model.npz``, ``model.json`` and the images the report shows."""
    with job.phase("write"):
        estimator = {  # what `DaskLogisticRegression.load` reads back
            "estimator": ESTIMATOR_NAME,
            "estimator_params": job.config.model_settings(),
            "n_iter": outcome.n_iter.tolist(),
        }
        model.save(job.folder, {**estimator, **model_info})
        _save_images(job.folder, ready.dataset, ready.parts, metrics)


def _report(
    job: _Job,
    ready: _Prepared,
    placed: _Placed,
    metrics: dict[str, Any],
    outcome: FitOutcome,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    """Phase ``report``: ``metrics.json`` (the run is complete from here on), then the
    report drawn from the folder. Returns the metrics as written."""
    folder, say = job.folder, job.say
    with job.phase("report"):  # metrics.json first: the report reads it (its timings end here)
        metrics = {
            **metrics,
            "fits": outcome.records,
            "solver": outcome.solver,
            "settings": model_info["settings"],
            "data": model_info["data"],
            "cluster": model_info["cluster"],
            "transfer": placed.mode,
            "layout": ready.layout,
            "timings": job.phase.report(),
        }
        try:
            write_json(folder / "metrics.json", metrics)
        except OSError as exc:
            fix = "free space there, or train into another --out"
            raise storage_error("the metrics in", folder / "metrics.json", exc, fix) from exc
        Checkpoints(folder).remove()
        say(f"wrote {folder}/model.npz, model.json, metrics.json; rendering the report")
        try:
            report, _ = render_report(folder)
            say(f"report: {report}")
        except Exception as exc:  # the run itself is complete; the report can be redone
            say(f"report not written ({exc}); run `distrib report {folder}`")
    return metrics
