"""The two ways distrib fits, each one object: what the run, the estimator and the benchmark
ask of a strategy, answered in one place per strategy.

* `OneVsRest` (``ovr``): a binary problem per class, dispatched as joblib tasks (lockstep
  groups of classes by default), every task reading all the training rows;
* `Multinomial` (``multinomial``): one softmax model over row blocks held by the workers,
  a driver-side Newton-CG or L-BFGS over their summed losses and gradients.

`strategy_for` is the one place that turns a strategy's name (a setting, ``--strategy``)
into its object; nothing else compares the name. A new strategy is a new subclass of
`Strategy` added to `STRATEGY_OBJECTS`. `fit_training_data` is the fit's entry for both
callers (the estimator and ``distrib train``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from distrib.config import LOCKSTEP_SOLVERS, TrainConfig
from distrib.errors import ConfigError
from distrib.parallel.cluster import WorkerLibraries
from distrib.parallel.memory import OVR_COPIES, WorkerMemory

if TYPE_CHECKING:
    from distributed import Client

    from distrib.linear.multinomial import Journal
    from distrib.parallel.dispatch import BinaryFit
    from distrib.parallel.fitting import FitHooks, FitOutcome
    from distrib.parallel.rows import ArrayFiles, TrainingData

# The fits' machinery (numba's kernels, joblib, scikit-learn) is imported by the methods
# that run it, not here: ``distrib train`` asks its strategy what the workers load before
# it starts the cluster, and that must not wait for the driver's imports.

_MB = 1e6


class FitStore(Protocol):
    """Where a run keeps what a resumed fit starts from (`distrib.run.checkpoint`)."""

    folder: Path

    def load(self) -> dict[int, BinaryFit]:
        """The binary fits checkpointed so far, by class."""
        ...

    def save(self, fit: BinaryFit) -> None:
        """Checkpoint one binary fit."""
        ...

    def evaluation_log(self, resume: bool) -> Journal:
        """The multinomial fit's evaluation log, kept (``resume``) or begun anew."""
        ...


class Strategy(ABC):
    """What every part of distrib asks of a strategy."""

    #: The name a setting gives (``TrainConfig.strategy``, ``--strategy``).
    name: ClassVar[str]
    #: The training rows are cut into blocks that the workers keep and every evaluation
    #: sums over: rows grown with ``--grow`` are made on the workers as blocks, a Dask array
    #: ``X`` is fitted where its chunks are made (never gathered), and the fit's records
    #: are its blocks. Otherwise every task reads all the rows, and the records are classes.
    holds_row_blocks: ClassVar[bool]

    @abstractmethod
    def worker_libraries(self, solver: str | None) -> WorkerLibraries:
        """What a worker imports and compiles before the first fit with ``solver``."""

    @abstractmethod
    def memory_refusal(self, worker: WorkerMemory, nbytes: int, share: float) -> str | None:
        """Why ``worker`` cannot hold what this strategy puts on it (None if it can), given
        the training matrix's ``nbytes`` and the worker's ``share`` of the rows in bytes."""

    @abstractmethod
    def rows_by_value(self, files: ArrayFiles) -> TrainingData:
        """The training rows for workers that cannot open ``files`` by path."""

    @abstractmethod
    def fit(
        self,
        data: TrainingData,
        labels: np.ndarray,
        config: TrainConfig,
        client: Any,
        hooks: FitHooks,
        class_weight: str | dict[Any, float] | None,
    ) -> FitOutcome:
        """Fit ``config``'s model on ``data`` (see `fit_training_data`)."""

    @abstractmethod
    def follow(
        self,
        hooks: FitHooks,
        store: FitStore,
        resume: bool,
        classes: np.ndarray,
        n_workers: int,
    ) -> None:
        """Set ``hooks`` up to keep the fit's progress in ``store`` (and to start from what
        it holds if ``resume``), and say what the fit is about to do."""

    @abstractmethod
    def kept(self, store: FitStore, run_folder: Path) -> str:
        """What ``store`` keeps of an interrupted fit, and the command that goes on."""

    @abstractmethod
    def repeated_deaths(self, client: Client, run_id: str, classes: np.ndarray,
                        store: FitStore) -> str:  # fmt: skip
        """What died again and again, when Dask gave up on a task (``KilledWorker``)."""

    @abstractmethod
    def add_cluster_records(self, client: Client, run_id: str, outcome: FitOutcome) -> None:
        """Add to the fit's records what the workers' events say of it."""


class OneVsRest(Strategy):
    """One binary problem per class, as joblib tasks on the dask backend."""

    name = "ovr"
    holds_row_blocks = False

    def worker_libraries(self, solver: str | None) -> WorkerLibraries:
        if solver in (None, *LOCKSTEP_SOLVERS):
            return WorkerLibraries(("distrib.linear.binary",), ("binary",))
        return WorkerLibraries(("sklearn.linear_model",), ())

    def memory_refusal(self, worker: WorkerMemory, nbytes: int, share: float) -> str | None:
        need = OVR_COPIES * nbytes
        if need <= worker.available:
            return None
        return (
            f"one-vs-rest needs the whole training matrix ({nbytes / _MB:,.0f} MB) and "
            f"the solver's copy on every worker, ~{need / _MB:,.0f} MB, and worker "
            f"{worker.address} has {max(worker.available, 0) / _MB:,.0f} MB left under its "
            f"memory limit ({worker.limit / _MB:,.0f} MB): use --strategy "
            f"multinomial (each worker holds only its share of the rows, "
            f"~{share / _MB:,.0f} MB here), or raise --memory-limit"
        )

    def rows_by_value(self, files: ArrayFiles) -> TrainingData:
        from distrib.parallel.rows import load_in_memory

        return load_in_memory(files)  # every binary fit reads all rows: all of them, once

    def fit(
        self,
        data: TrainingData,
        labels: np.ndarray,
        config: TrainConfig,
        client: Any,
        hooks: FitHooks,
        class_weight: str | dict[Any, float] | None,
    ) -> FitOutcome:
        from distrib.parallel.fitting import fit_ovr

        return fit_ovr(data, labels, config, client, hooks, class_weight)

    def follow(
        self,
        hooks: FitHooks,
        store: FitStore,
        resume: bool,
        classes: np.ndarray,
        n_workers: int,
    ) -> None:
        hooks.done = store.load() if resume else {}
        todo = [c for c in classes.tolist() if c not in hooks.done]
        if hooks.done:
            hooks.say(f"resuming: {len(hooks.done)} class(es) from checkpoints, {len(todo)} to fit")
        progress = _progress(hooks.say, len(classes), len(hooks.done))

        def on_fit(fit: BinaryFit) -> None:
            store.save(fit)
            progress(fit)

        hooks.on_binary_fit = on_fit
        hooks.say(f"fitting {len(todo)} one-vs-rest classifiers on {n_workers} worker(s)")

    def kept(self, store: FitStore, run_folder: Path) -> str:
        return (
            f"{len(store.load())} class(es) are checkpointed in {store.folder}; run "
            f"`distrib train --resume {run_folder}` to fit only the rest"
        )

    def repeated_deaths(self, client: Client, run_id: str, classes: np.ndarray,
                        store: FitStore) -> str:  # fmt: skip
        from distrib.parallel.fit_events import attempts_of_run

        saved = store.load()
        attempts = attempts_of_run(client, run_id)
        lost = [int(c) for c in classes if int(c) not in saved]
        tries = {label: len(attempts.get(label, [])) for label in lost}
        worst = max(lost, key=tries.__getitem__, default=None)
        if worst is None or tries[worst] < 2:
            return f"a worker died again and again running one of the classes {lost}"
        together = attempts[worst][-1].get("group", [worst])
        started = f"was started {tries[worst]} times and each time its worker died"
        if len(together) > 1:  # a lockstep task: its classes live and die together
            named = ", ".join(str(int(c)) for c in together)
            return f"the task fitting classes {named} together {started}"
        return f"class {worst} {started}"

    def add_cluster_records(self, client: Client, run_id: str, outcome: FitOutcome) -> None:
        from distrib.parallel.fit_events import class_retries

        retries = class_retries(client, run_id, outcome.records, outcome.solver["backups"])
        for record in outcome.records:
            record["retries"] = retries.get(record["label"], [])


class Multinomial(Strategy):
    """One softmax model over row blocks held by the workers."""

    name = "multinomial"
    holds_row_blocks = True

    def worker_libraries(self, solver: str | None) -> WorkerLibraries:
        return WorkerLibraries(("distrib.parallel.blocks.host",), ("softmax",))

    def memory_refusal(self, worker: WorkerMemory, nbytes: int, share: float) -> str | None:
        if share <= worker.available:
            return None
        return (
            f"the multinomial fit puts ~{share / _MB:,.0f} MB of rows on worker "
            f"{worker.address}, which has {max(worker.available, 0) / _MB:,.0f} MB left under "
            f"its memory limit ({worker.limit / _MB:,.0f} MB): stream the rows from disk "
            "(--rows disk, or --rows auto), add workers or raise --memory-limit"
        )

    def rows_by_value(self, files: ArrayFiles) -> TrainingData:
        from distrib.parallel.rows import RowsFromHere

        return RowsFromHere(files)  # each block's rows alone, from here

    def fit(
        self,
        data: TrainingData,
        labels: np.ndarray,
        config: TrainConfig,
        client: Any,
        hooks: FitHooks,
        class_weight: str | dict[Any, float] | None,
    ) -> FitOutcome:
        from distrib.parallel.fitting import fit_multinomial_rows

        return fit_multinomial_rows(data, labels, config, client, hooks, class_weight)

    def follow(
        self,
        hooks: FitHooks,
        store: FitStore,
        resume: bool,
        classes: np.ndarray,
        n_workers: int,
    ) -> None:
        journal = hooks.journal = store.evaluation_log(resume)
        if resume:
            hooks.say(
                f"resuming: {len(journal.logged)} evaluation(s) logged; replaying them, then "
                "going on with the cluster"
            )
        hooks.say(f"fitting one multinomial model on {n_workers} worker(s)")

    def kept(self, store: FitStore, run_folder: Path) -> str:
        return (
            f"its evaluations are logged in {store.folder}; run `distrib train --resume "
            f"{run_folder}` to go on from the last one"
        )

    def repeated_deaths(self, client: Client, run_id: str, classes: np.ndarray,
                        store: FitStore) -> str:  # fmt: skip
        return "a worker died again and again holding or evaluating a block of rows"

    def add_cluster_records(self, client: Client, run_id: str, outcome: FitOutcome) -> None:
        from distrib.parallel.fit_events import add_block_loads

        add_block_loads(client, run_id, outcome.records)


#: Every strategy, by the name a setting gives it.
STRATEGY_OBJECTS: dict[str, Strategy] = {s.name: s for s in (OneVsRest(), Multinomial())}


def strategy_for(name: str) -> Strategy:
    """The strategy a setting names (``ovr`` or ``multinomial``).

    Raises
    ------
    ConfigError
        For a name no strategy has.
    """
    try:
        return STRATEGY_OBJECTS[name]
    except KeyError:
        raise ConfigError(
            f"strategy must be one of {sorted(STRATEGY_OBJECTS)}, got {name!r}"
        ) from None


def fit_training_data(
    data: TrainingData,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    client: Any = None,
    hooks: FitHooks | None = None,
    class_weight: str | dict[Any, float] | None = None,
) -> FitOutcome:
    """Fit ``config``'s model on ``data``, with ``config.strategy``'s strategy.

    Parameters
    ----------
    data : TrainingData
        `distrib.parallel.rows.ArrayFiles` (workers open the files by path) or
        `distrib.parallel.rows.InMemoryArrays` (sent by value).
    labels : ndarray
        The sorted values found in ``data``'s labels.
    config : TrainConfig
        The model's settings (strategy, C, tol, ...).
    client : distributed.Client, optional
        Default: the caller's joblib dask backend, else the current client, else none
        (``ovr`` then runs on joblib's active backend, ``multinomial`` in this process).
    hooks : FitHooks, optional
        Progress, per-class checkpoints and resume.
    class_weight : "balanced" or dict, optional
        Overrides ``config.class_weight``; a dict keyed by ``labels``' values.
    """
    from distrib.parallel.fitting import FitHooks, check_class_weight_labels, current_client

    hooks = hooks or FitHooks()
    client = client if client is not None else current_client()
    labels = np.asarray(labels)
    class_weight = class_weight if class_weight is not None else config.class_weight
    if isinstance(class_weight, dict):
        check_class_weight_labels(class_weight, labels)
    strategy = strategy_for(config.strategy)
    return strategy.fit(data, labels, config, client, hooks, class_weight)


def _progress(
    log: Callable[[str], None], total: int, already: int = 0
) -> Callable[[BinaryFit], None]:
    """A progress line per binary fit as it arrives."""
    done = already

    def on_fit(fit: BinaryFit) -> None:
        nonlocal done
        done += 1
        status = "" if fit.converged else ", NOT converged (raise --max-iter)"
        shared = "" if fit.passes is None else f", {fit.passes} passes shared by its task"
        log(
            f"[{done:>{len(str(total))}}/{total}] class {fit.label} fitted on {fit.worker} "
            f"in {fit.seconds:.2f} s ({fit.n_iter} iterations{shared}{status})"
        )

    return on_fit
