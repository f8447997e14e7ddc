"""What the cluster's events say of a fit: each class's attempts (the workers' events), why
an attempt did not finish, and where each row block was loaded."""

from __future__ import annotations

from typing import Any

from distributed import Client

from distrib.parallel.blocks.block import BLOCK_TOPIC
from distrib.parallel.cluster import worker_infos
from distrib.parallel.dispatch import ATTEMPT_TOPIC


def attempts_of_run(client: Client, run_id: str) -> dict[int, list[dict[str, Any]]]:
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
    attempts = attempts_of_run(client, run_id)
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


def block_loads(client: Any, run_id: str) -> list[dict[str, Any]]:
    """Every load of every block of fit ``run_id``, from the workers' events, oldest first."""
    try:
        events = client.get_events(BLOCK_TOPIC)
    except Exception:  # events are diagnostics; never fail a run for them
        return []
    loads = [m for _, m in events if isinstance(m, dict) and m.get("run_id") == run_id]
    return sorted(loads, key=lambda m: m["time"])
