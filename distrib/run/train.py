"""The training job, end to end: load -> split -> dispatch -> reduce -> evaluate -> write.

`train` is the Python API behind ``distrib train``; the CLI only parses flags and calls it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, KilledWorker

from distrib._version import __version__
from distrib.config import TRANSFER_MODES, TrainConfig
from distrib.data.arrays import load_arrays
from distrib.data.datasets import Dataset, data_home, load_dataset
from distrib.data.grow import check_grow
from distrib.data.split import SplitArrays, check_labels, split_arrays
from distrib.errors import ClusterError, ConfigError, DistribError, OutputError
from distrib.files import write_json
from distrib.linear.model import LinearModel
from distrib.parallel.cluster import (
    ClusterConfig,
    Connection,
    describe,
    package_versions,
    start_cluster,
    warm_workers,
    worker_infos,
)
from distrib.parallel.dispatch import ATTEMPT_TOPIC, BinaryFit
from distrib.parallel.fitting import (
    FitHooks,
    FitOutcome,
    by_class_index,
    check_class_weight_labels,
    fit_dask_rows,
    fit_training_data,
)
from distrib.parallel.memory import check_fits, matrix_bytes, worker_memory
from distrib.parallel.multinomial import block_loads
from distrib.parallel.transfer import (
    ArrayFiles,
    RowsFromHere,
    TrainingData,
    choose_layout,
    load_in_memory,
    prepare_split_arrays,
    training_density,
    workers_blind_to,
    workers_blind_to_paths,
)
from distrib.report.render import (
    MISCLASSIFIED_IMAGES,
    SAMPLE_IMAGES,
    render_report,
    save_report_images,
)
from distrib.run.checkpoint import (
    EVALUATION_LOG,
    RUN_FILES,
    Checkpoints,
    EvaluationLog,
    refuse_finished,
)
from distrib.run.evaluate import evaluate

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


class _Phases:
    """The run as named phases, one after another in the calling thread, timed in one place.

    The phases tile the run: each starts where the one before ended (the little work
    between two of them counts in the later one), so they add up to ``total``, the run's
    wall time. It starts at ``started`` (``time.time()`` of the process's start for the
    CLI, whose ``startup`` phase is then the interpreter, the imports and the parsing).
    Work another thread does meanwhile (starting the cluster, closing it) is no phase: the
    time this thread waits for it is.
    """

    def __init__(self, started: float | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._origin = self._mark = time.perf_counter()
        if started is not None:
            self._origin -= max(0.0, time.time() - started)
            self.seconds["startup"] = self._mark - self._origin

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        try:
            yield
        finally:  # a phase entered twice counts both times
            now = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
            self._mark = now

    def elapsed(self) -> float:
        return time.perf_counter() - self._origin

    def report(self) -> dict[str, float]:
        """Seconds per phase so far, and ``total``: the run's wall time up to now."""
        return {**self.seconds, "total": self.elapsed()}


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
    check_fits(worker_memory(client), config.strategy, nbytes, chunk)


def _fit(
    config: TrainConfig,
    client: Client,
    fit: Callable[[], FitOutcome],
    checkpoints: Checkpoints,
    folder: Path,
    classes: np.ndarray,
    hooks: FitHooks,
) -> FitOutcome:
    """Fit; name what went wrong in the terms of this run."""
    if config.strategy == "ovr":
        hint = (
            f"{{}} class(es) are checkpointed in {checkpoints.folder}; run "
            f"`distrib train --resume {folder}` to fit only the rest"
        )
    else:
        hint = (
            f"its evaluations are logged in {checkpoints.folder}; run `distrib train --resume "
            f"{folder}` to go on from the last one"
        )
    n_done = len(hooks.done)
    try:
        return fit()
    except KilledWorker as exc:
        if config.strategy == "ovr":
            saved = checkpoints.load()
            n_done = len(saved)
            attempts = _attempts(client, hooks.run_id)
            lost = [int(c) for c in classes if int(c) not in saved]
            tries = {label: len(attempts.get(label, [])) for label in lost}
            worst = max(lost, key=tries.__getitem__, default=None)
            if worst is not None and tries[worst] >= 2:
                together = attempts[worst][-1].get("group", [worst])
                started = f"was started {tries[worst]} times and each time its worker died"
                if len(together) > 1:  # a lockstep task: its classes live and die together
                    named = ", ".join(str(int(c)) for c in together)
                    what = f"the task fitting classes {named} together {started}"
                else:
                    what = f"class {worst} {started}"
            else:
                what = f"a worker died again and again running one of the classes {lost}"
        else:
            what = "a worker died again and again holding or evaluating a block of rows"
        raise ClusterError(
            f"{what} (dask gave up after distributed.scheduler.allowed-failures retries): "
            f"check the workers' memory limit and logs. {hint.format(n_done)}"
        ) from exc
    except ClusterError as exc:  # says what happened; and what is kept, unless it does
        if "--resume" in str(exc):
            raise
        n_done = len(checkpoints.load()) if config.strategy == "ovr" else 0
        raise ClusterError(f"{exc}; {hint.format(n_done)}") from exc
    except DistribError:  # already says what happened (OutputError is an OSError)
        raise
    except (CancelledError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        address = getattr(client.scheduler, "address", "?")
        n_done = len(checkpoints.load()) if config.strategy == "ovr" else 0
        raise ClusterError(
            f"lost the Dask scheduler at {address} during the fit ({reason}); "
            f"{hint.format(n_done)} once it is back"
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


def _retries(
    client: Client, run_id: str, fits: list[dict[str, Any]], backups: list[dict[str, Any]]
) -> dict[int, list[dict[str, Any]]]:
    """For each class that ran more than once: where the earlier attempts ran and why they
    did not finish (a worker that left, or a late one whose task got a backup attempt)."""
    alive = set(worker_infos(client))
    attempts = _attempts(client, run_id)
    late = {b["first"]: b for b in backups}
    retries: dict[int, list[dict[str, Any]]] = {}
    for fit in fits:
        if fit["from_checkpoint"]:
            continue
        earlier = attempts.get(fit["label"], [])[:-1]  # the last start is the one that finished
        if earlier:
            retries[fit["label"]] = [
                {
                    "worker": a["worker"],
                    "started": a["time"],
                    "why": _why_unfinished(a, alive, late),
                }
                for a in earlier
            ]
    return retries


def _why_unfinished(
    attempt: dict[str, Any], alive: set[str], late: dict[str, dict[str, Any]]
) -> str:
    backup = late.get(str(attempt.get("key")))
    if backup is not None:
        return (
            f"it ran {backup['ran_seconds']:.1f} s there, past the finished tasks' pace: a "
            f"backup attempt started elsewhere, and the {backup.get('winner', '?')} attempt won"
        )
    if attempt["worker"] not in alive:
        return "its worker left the cluster (died or was restarted) during the fit"
    return "the attempt did not finish on that worker"


def _add_block_loads(client: Client, run_id: str, blocks: list[dict[str, Any]]) -> None:
    """Record in each block where it was loaded; more than one load means Dask recomputed
    it from its source after losing a worker."""
    alive = set(worker_infos(client))
    loads = block_loads(client, run_id)
    for block in blocks:
        mine = [m for m in loads if m.get("key") == block.get("key")]
        block["loads"] = [
            {"worker": m["worker"], "time": m["time"], "worker_alive": m["worker"] in alive}
            for m in mine
        ]


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
        How the training arrays reach the workers (see `distrib.parallel.transfer`). ``auto`` uses
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
    phase = _Phases(started)
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
            connection = start_cluster(cluster if isinstance(cluster, ClusterConfig) else None,
                                       config.strategy, say, config.solver)  # fmt: skip
        try:
            result = _run(config, connection, client, folder, home, transfer, resume, say, phase)
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


def _load_and_split(
    config: TrainConfig,
    home: str | os.PathLike[str] | None,
    say: Callable[[str], None],
    phase: _Phases,
) -> _Prepared:
    with phase("load"):
        if config.data is not None:
            dataset = load_arrays(config.data)
        else:
            dataset = load_dataset(config.dataset, home, log=say)
    say(f"data: {dataset.name} {tuple(dataset.X.shape)} from {dataset.source}")
    with phase("split"):
        check_grow(config.grow, dataset.image_shape)
        parts = split_arrays(dataset, config.split, config.scale, config.grow)
        y_train, y_test = parts.local("y_train", "y_test")
        classes = check_labels(y_train, y_test)
    if isinstance(config.class_weight, dict):  # before anything is written
        check_class_weight_labels(config.class_weight, classes)
    grown = f" ({config.grow} variants of each training image)" if config.grow > 1 else ""
    say(
        f"split: {config.split}, {len(y_train)} train{grown} / {len(y_test)} test rows, "
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
        density = training_density(parts, data_home(home), key)
        layout = choose_layout(config.layout, density)
    say(f"layout: {layout} ({density:.1%} of training pixels non-zero)")
    return _Prepared(dataset, parts, y_train, y_test, classes, key, density, layout)


def _run(
    config: TrainConfig,
    connection: Connection | None,
    client: Client | None,
    folder: Path,
    home: str | os.PathLike[str] | None,
    transfer: str,
    resume: bool,
    say: Callable[[str], None],
    phase: _Phases,
) -> RunResult:
    ready = _load_and_split(config, home, say, phase)
    dataset, parts, classes, key = ready.dataset, ready.parts, ready.classes, ready.key
    y_train, y_test, density, layout = ready.y_train, ready.y_test, ready.density, ready.layout
    # grown rows for a multinomial fit are made on the workers, chunk by chunk, and stay
    # there as blocks: neither this process nor any one worker holds the whole matrix
    generated = config.grow > 1 and config.strategy == "multinomial"
    with phase("cluster"):  # what is left of starting it, once this process is ready
        if connection is not None:
            if connection.seconds is None:
                say("waiting for the cluster to start and its workers to load their libraries")
            client = connection.client()
        else:
            assert client is not None
            warm_workers(client, config.strategy, config.solver)
        cluster_info = describe(client)
    with phase("transfer"):
        _check_memory(client, config, parts, density, layout)  # before any file
        if generated:
            _generated_rows(client, dataset)
    with phase("prepare"):
        files, test_files, _ = prepare_split_arrays(
            parts, data_home(home), key, config.layout, write_train=not generated
        )
    with phase("transfer"):
        data: TrainingData | None = None
        if files is None:  # generated on the workers
            mode = "generated"
        else:
            mode = _choose_transfer(client, files, transfer)
            if mode == "path":
                data = files
            elif config.strategy == "multinomial":  # each block's rows alone, from here
                data = RowsFromHere(files)
            else:  # every binary fit reads all rows: the workers get them all, once
                data = load_in_memory(files)
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
    hooks = FitHooks(log=say)
    journal: EvaluationLog | None = None
    if config.strategy == "ovr":
        hooks.done = checkpoints.load() if resume else {}
        todo = [c for c in classes.tolist() if c not in hooks.done]
        if hooks.done:
            say(f"resuming: {len(hooks.done)} class(es) from checkpoints, {len(todo)} to fit")
        progress = _progress(say, len(classes), len(hooks.done))

        def on_fit(fit: BinaryFit) -> None:
            checkpoints.save(fit)
            progress(fit)

        hooks.on_binary_fit = on_fit
        say(f"fitting {len(todo)} one-vs-rest classifiers on {cluster_info['workers']} workers")
    else:
        journal = hooks.journal = EvaluationLog(checkpoints.folder / EVALUATION_LOG, resume)
        if resume:
            say(
                f"resuming: {len(journal.logged)} evaluation(s) logged; replaying them, then "
                "going on with the cluster"
            )
        say(f"fitting one multinomial model on {cluster_info['workers']} workers")

    def fit() -> FitOutcome:
        if data is not None:
            return fit_training_data(data, classes, config, client=client, hooks=hooks)
        return fit_dask_rows(
            parts.X_train,
            np.searchsorted(classes, y_train),
            len(classes),
            config,
            client=client,
            hooks=hooks,
            class_weight=by_class_index(config.class_weight, classes),
            predict_rows=True,  # the grown rows exist only as blocks: predict there
        )

    with phase("fit"):
        try:
            outcome = _fit(config, client, fit, checkpoints, folder, classes, hooks)
        finally:
            if journal is not None:
                journal.close()
    if journal is not None:
        outcome.solver["checkpoint_seconds"] = journal.append_seconds
    if journal is not None and resume:
        outcome.solver["resumed"] = {
            "logged_evaluations": len(journal.logged),
            "replayed_evaluations": journal.replayed,
            "replay_seconds": journal.replay_seconds,
        }
        say(
            f"resumed at evaluation {journal.replayed + 1}: {journal.replayed} replayed in "
            f"{journal.replay_seconds:.2f} s"
        )
    with phase("reduce"):
        records = outcome.records
        if config.strategy == "ovr":
            retries = _retries(client, hooks.run_id, records, outcome.solver["backups"])
            for record in records:
                record["retries"] = retries.get(record["label"], [])
        else:
            _add_block_loads(client, hooks.run_id, records)
    # the cluster's part is done: it closes while this process evaluates and writes
    closed = connection.close_in_background() if connection is not None else None

    model = LinearModel(outcome.coef, outcome.intercept, classes, config.strategy)
    with phase("evaluate"):
        if files is not None:
            train_pred = model.predict(files.arrays()[0])
        else:  # generated rows: predicted by the blocks that held them
            train_pred = classes[np.asarray(outcome.train_codes)]
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
        "grow": config.grow,
        "pixel_max": dataset.pixel_max,
        "n_train": len(y_train),
        "n_test": len(y_test),
    }
    model_info = {
        "settings": config.to_dict(),
        "data": data_info,
        "versions": package_versions(),
        "cluster": cluster_info,
        "transfer": {
            **(data.describe() if data is not None else {"layout": "per block"}),
            "mode": mode,
            "density": density,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with phase("write"):
        estimator = {  # what `DaskLogisticRegression.load` reads back
            "estimator": ESTIMATOR_NAME,
            "estimator_params": config.model_settings(),
            "n_iter": outcome.n_iter.tolist(),
        }
        model.save(folder, {**estimator, **model_info})
        _save_images(folder, dataset, parts, metrics)
    with phase("report"):  # metrics.json first: the report reads it (its timings end here)
        metrics = {
            **metrics,
            "fits": records,
            "solver": outcome.solver,
            "settings": config.to_dict(),
            "data": data_info,
            "cluster": cluster_info,
            "transfer": mode,
            "layout": layout,
            "timings": phase.report(),
        }
        write_json(folder / "metrics.json", metrics)  # the run is complete from here on
        checkpoints.remove()
        say(f"wrote {folder}/model.npz, model.json, metrics.json; rendering the report")
        try:
            report, _ = render_report(folder)
            say(f"report: {report}")
        except Exception as exc:  # the run itself is complete; the report can be redone
            say(f"report not written ({exc}); run `distrib report {folder}`")
    if closed is not None:
        with phase("shutdown"):  # what is left of closing the cluster
            closed.result()
    metrics["timings"] = phase.report()
    metrics["background"] = {
        "cluster_start": connection.seconds if connection is not None else None,
    }
    write_json(folder / "metrics.json", metrics)  # again, with the report and shutdown
    return RunResult(out=folder, model=model, metrics=metrics, model_info=model_info)
