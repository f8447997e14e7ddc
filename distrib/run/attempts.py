"""A failed fit's error in the terms of its run: what failed, what is kept, how to resume."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
from distributed import Client, KilledWorker

from distrib.errors import ClusterError, DistribError
from distrib.files import is_storage_error, storage_error
from distrib.parallel.fitting import FitHooks, FitOutcome
from distrib.parallel.strategies import FitStore, Strategy


def fit_naming_failures(
    strategy: Strategy,
    client: Client,
    fit: Callable[[], FitOutcome],
    store: FitStore,
    folder: Path,
    classes: np.ndarray,
    hooks: FitHooks,
) -> FitOutcome:
    """Fit; name what went wrong in the terms of this run: what failed, what ``store``
    keeps of the fit and the command that goes on from it."""
    try:
        return fit()
    except KilledWorker as exc:
        what = strategy.repeated_deaths(client, hooks.run_id, classes, store)
        raise ClusterError(
            f"{what} (dask gave up after distributed.scheduler.allowed-failures retries): "
            f"check the workers' memory limit and logs. {strategy.kept(store, folder)}"
        ) from exc
    except ClusterError as exc:  # says what happened; and what is kept
        raise ClusterError(f"{exc}; {strategy.kept(store, folder)}") from exc
    except DistribError:  # already says what happened (OutputError is an OSError)
        raise
    except OSError as exc:
        if is_storage_error(exc):  # a write of this process, not the scheduler
            where = exc.filename or folder
            raise storage_error("to", where, exc, strategy.kept(store, folder)) from exc
        raise _scheduler_lost(client, exc, strategy.kept(store, folder)) from exc
    except CancelledError as exc:
        raise _scheduler_lost(client, exc, strategy.kept(store, folder)) from exc


def _scheduler_lost(client: Client, exc: BaseException, kept: str) -> ClusterError:
    """The error of a fit whose scheduler went away (its connection broke, or its futures
    were cancelled with it)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    address = getattr(client.scheduler, "address", "?")
    return ClusterError(
        f"lost the Dask scheduler at {address} during the fit ({reason}); {kept} once it is back"
    )
