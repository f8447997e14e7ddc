"""What the cluster says about a fit: each class's attempts (the workers' events), why an
attempt did not finish, where each row block was loaded, and a failed fit's error in the
terms of its run (what is kept, how to resume)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, KilledWorker

from distrib.config import TrainConfig
from distrib.errors import ClusterError, DistribError
from distrib.parallel.cluster import worker_infos
from distrib.parallel.dispatch import ATTEMPT_TOPIC
from distrib.parallel.fitting import FitHooks, FitOutcome
from distrib.parallel.multinomial import block_loads
from distrib.run.checkpoint import Checkpoints


def fit_naming_failures(
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


def class_retries(
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


def add_block_loads(client: Client, run_id: str, blocks: list[dict[str, Any]]) -> None:
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
