"""Connect to a Dask cluster: an address, ``DASK_SCHEDULER_ADDRESS``, or a new LocalCluster.

Every wait is bounded: an unreachable scheduler fails after ``connect_timeout`` seconds, a
cluster without enough workers after ``worker_timeout`` seconds, each with a message that
names the address and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster

from distrib.config import ClusterConfig
from distrib.errors import ClusterError, ConfigError
from distrib.parallel.tls import client_security, handshake_hint

# Packages whose versions must agree between the client and the workers: a model fitted
# with one scikit-learn and evaluated with another is not the model you asked for.
CHECKED_PACKAGES = (
    "distrib",
    "numpy",
    "scipy",
    "scikit-learn",
    "joblib",
    "dask",
    "distributed",
)


# Worker settings of the local clusters distrib starts (measured on MNIST, 2 cores):
# - dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers, which fixes glibc's mmap
#   threshold at 128 KiB: every per-iteration temporary of a fit (60,000 floats) is then a
#   fresh mmap, page-faulted and unmapped again; the binary fits run ~10 % slower;
# - the statistical profiler samples every task thread every 10 ms (~5 % of a fit).
# BLAS/OpenMP stay at one thread per worker, as dask's default.
LOCAL_WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "OPENBLAS_NUM_THREADS": 1,
    },
    "distributed.worker.profile.enabled": False,
}


def start_local_cluster(
    workers: int,
    threads_per_worker: int = 1,
    dashboard_address: str | None = ":0",
    memory_limit: str | None = None,
) -> LocalCluster:
    """A `LocalCluster` of worker processes with `LOCAL_WORKER_CONFIG` applied; each
    worker may use ``memory_limit`` (dask's spelling; None: dask's default, "auto")."""
    with dask.config.set(LOCAL_WORKER_CONFIG):
        return LocalCluster(
            host="127.0.0.1",  # this machine only; its dashboard too by default
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
            silence_logs=logging.ERROR,
            memory_limit=memory_limit if memory_limit is not None else "auto",
        )


def scheduler_address(explicit: str | None) -> str | None:
    """The scheduler to use: the explicit one, else ``DASK_SCHEDULER_ADDRESS``, else None."""
    if explicit:
        return explicit
    configured = dask.config.get("scheduler-address", None) or os.environ.get(
        "DASK_SCHEDULER_ADDRESS"
    )
    return configured or None


def package_versions() -> dict[str, str]:
    """Versions of `CHECKED_PACKAGES` in this process (runs on workers too)."""
    from importlib import metadata

    versions = {}
    for name in CHECKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def check_versions(client: Client) -> None:
    """Refuse a cluster whose workers run other versions of the packages that matter."""
    mine = package_versions()
    theirs: dict[str, dict[str, str]] = client.run(package_versions)
    problems = [
        f"{worker} has {name} {found}"
        for worker, versions in sorted(theirs.items())
        for name, found in versions.items()
        if mine.get(name) != found
    ]
    if problems:
        expected = ", ".join(f"{k} {v}" for k, v in mine.items())
        raise ClusterError(
            "workers run other library versions than this client "
            f"({'; '.join(problems[:4])}; client has {expected}): install the same versions "
            "on the workers (one image for client and workers)"
        )


def scheduler_identity(client: Client) -> dict[str, Any]:
    """The scheduler's identity, every worker included, asked of the scheduler now.

    Not ``Client.scheduler_info(n_workers=-1)``: that returns a copy the client shares with a
    periodic refresh which asks for no workers (distributed 2026.8), so under load it can come
    back with none (seen in CI).
    """
    if client.scheduler is None:
        raise ClusterError("the Dask client is not connected to a scheduler")
    return dict(client.sync(client.scheduler.identity, n_workers=-1))


def worker_infos(client: Client) -> dict[str, dict[str, Any]]:
    """Address -> info (threads, memory limit, ...) of every worker the scheduler knows."""
    return dict(scheduler_identity(client).get("workers", {}))


def describe(client: Client) -> dict[str, Any]:
    """Workers, threads and memory of the cluster, for ``model.json`` and reports."""
    info = scheduler_identity(client)
    workers = info.get("workers", {})
    return {
        "scheduler": info.get("address"),
        "dashboard": client.dashboard_link,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_limit_bytes": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
        "worker_addresses": sorted(workers),
    }


def _check_address(address: str) -> None:
    """Refuse what is no scheduler address before a client is made of it (a client that
    fails to connect hangs ~20 s in its finalizer, then prints a traceback)."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise ConfigError(
            f"{address!r} is not a Dask scheduler address ({exc}): give one as host:port or "
            "tcp://host:port (tls://host:port with certificates), as `dask scheduler` prints it"
        ) from exc


def _connect_to(address: str, timeout: float, security: Any = None) -> Client:
    _check_address(address)
    try:
        return Client(address, timeout=timeout, set_as_default=False, security=security)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(
            f"could not reach the Dask scheduler at {address} within {timeout:g} s ({reason}): "
            + handshake_hint(address, reason, security)
        ) from exc


def _wait_for_workers(client: Client, address: str, wanted: int, timeout: float) -> None:
    try:
        client.wait_for_workers(wanted, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        seen = len(worker_infos(client))
        raise ClusterError(
            f"the Dask scheduler at {address} has {seen} worker(s) after {timeout:g} s, "
            f"{wanted} needed: start workers with `dask worker {address}`, or lower "
            "--wait-workers / raise --worker-timeout"
        ) from exc


@contextlib.contextmanager
def connect(
    config: ClusterConfig | None = None, log: Callable[[str], None] | None = None
) -> Iterator[Client]:
    """A connected `Client`, closed (with any cluster it started) on exit.

    Parameters
    ----------
    config : ClusterConfig, optional
        Where to connect and how long to wait.
    log : callable, optional
        Receives one-line messages (the dashboard link among them).
    """
    config = config or ClusterConfig()
    say = log or (lambda _msg: None)
    address = scheduler_address(config.scheduler)
    cluster: LocalCluster | None = None
    client: Client | None = None
    try:
        if address is None:
            if config.tls_ca_file or config.tls_cert or config.tls_key:
                raise ConfigError(
                    "TLS certificates were given but no scheduler: a local cluster needs "
                    "none; pass --scheduler tls://HOST:PORT to use them"
                )
            n_workers = config.workers or os.cpu_count() or 1
            cluster = start_local_cluster(
                n_workers,
                config.threads_per_worker,
                config.dashboard_address,
                config.memory_limit,
            )
            address = cluster.scheduler_address
            client = Client(cluster, set_as_default=False)
            say(
                f"started a local cluster: {n_workers} worker(s) x "
                f"{config.threads_per_worker} thread(s) at {address}"
            )
        else:
            if config.memory_limit is not None:
                raise ConfigError(
                    f"--memory-limit sets the workers of the local cluster distrib starts; "
                    f"the workers of {address} have their own: start them with "
                    "`dask worker --memory-limit ...`"
                )
            security = client_security(config, address)
            client = _connect_to(address, config.connect_timeout, security)
            say(f"connected to the Dask scheduler at {address}")
        _wait_for_workers(client, address, config.wait_workers, config.worker_timeout)
        if config.check_versions:
            check_versions(client)
        say(f"dashboard: {client.dashboard_link}")
        yield client
    finally:
        if client is not None:
            client.close(timeout=10)
        if cluster is not None:
            cluster.close(timeout=10)


@dataclass(frozen=True)
class WorkerLibraries:
    """What a worker loads before its first fit (`load_fit_libraries`): the modules it
    imports, and the kernels it compiles (or loads from numba's cache): names of
    `distrib.linear.softmax.warm_up`'s losses, for float32 rows as `distrib train` prepares
    them (others load when first used). A strategy says which it needs
    (`distrib.parallel.strategies.Strategy.worker_libraries`)."""

    modules: tuple[str, ...] = ()
    losses: tuple[str, ...] = ()

    def __or__(self, other: WorkerLibraries) -> WorkerLibraries:
        return WorkerLibraries(
            tuple(dict.fromkeys(self.modules + other.modules)),
            tuple(dict.fromkeys(self.losses + other.losses)),
        )


#: What a fit of any strategy and solver may load (`distrib bench` warms them all).
EVERY_FIT_LIBRARY = WorkerLibraries(
    ("sklearn.linear_model", "distrib.linear.binary", "distrib.parallel.blocks.host"),
    ("binary", "softmax"),
)


def load_fit_libraries(libraries: WorkerLibraries = EVERY_FIT_LIBRARY) -> None:
    """Import ``libraries``' modules and warm its kernels, so that the first fit does not
    pay for them. Runs on workers."""
    import numpy as np

    from distrib.linear.softmax import warm_up

    for module in libraries.modules:
        importlib.import_module(module)
    warm_up(libraries.losses, dtypes=(np.float32,))


def warm_workers(client: Client, libraries: WorkerLibraries = EVERY_FIT_LIBRARY) -> None:
    """`load_fit_libraries` on every worker; a worker that dies of it names the memory
    limit."""
    try:
        client.run(load_fit_libraries, libraries)
    except OSError as exc:  # distributed's CommClosedError: the worker process is gone
        limits = {int(w.get("memory_limit") or 0) for w in worker_infos(client).values()}
        limit = f" (memory limit {max(limits) / 1e6:,.0f} MB)" if max(limits, default=0) else ""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(
            f"lost a worker while it loaded distrib's libraries (scikit-learn, numba){limit}: "
            f"{reason}. A worker needs ~350 MB before any data: if the workers have a memory "
            "limit, raise it (--memory-limit, or the workers' own)"
        ) from exc


#: This process's loggers silenced while a failed run's cluster closes: the scheduler's
#: (``distributed``), and the client loop's callbacks (``tornado.application``, ``asyncio``).
QUIET_ON_FAILURE = ("distributed", "tornado.application", "asyncio")


def _silence_distributed_logs() -> None:
    """Only distributed's critical messages from here on (runs on workers)."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


class Connection:
    """`connect` run in a background thread, then ``prepare(client)`` (e.g. the workers
    loading their libraries): a local cluster starts while this process imports, loads and
    splits the data, on the cores those steps leave idle.

    `client` waits for it and raises what connecting raised; `close` (or leaving a ``with``
    block) waits for the start to end, then closes the client and any cluster it started;
    `close_in_background` does that in the background thread, for a caller with other work.

    Parameters
    ----------
    config : ClusterConfig, optional
        Where to connect and how long to wait (every wait is bounded, as in `connect`).
    log : callable, optional
        Receives one-line messages, from the background thread.
    prepare : callable, optional
        Called with the connected client, in the background thread.
    """

    def __init__(
        self,
        config: ClusterConfig | None = None,
        log: Callable[[str], None] | None = None,
        prepare: Callable[[Client], None] | None = None,
    ) -> None:
        self._stack = contextlib.ExitStack()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="distrib-connect")
        self._started = time.perf_counter()
        #: Seconds from the start to a prepared client (None until then).
        self.seconds: float | None = None
        self._client = self._pool.submit(self._open, config, log, prepare)
        self._closed: Future[None] | None = None

    def _open(
        self,
        config: ClusterConfig | None,
        log: Callable[[str], None] | None,
        prepare: Callable[[Client], None] | None,
    ) -> Client:
        client = self._stack.enter_context(connect(config, log))
        if prepare is not None:
            prepare(client)
        self.seconds = time.perf_counter() - self._started
        return client

    def client(self) -> Client:
        """The connected, prepared client (waits for it)."""
        return self._client.result()

    def _close(self, quiet: bool) -> None:
        try:
            client = self._client.result()
        except BaseException:  # raised by `client` already, or nobody asked: nothing opened
            client = None
        if client is None:  # what failed was said (raised) already: closing adds nothing
            with contextlib.suppress(Exception):  # e.g. a worker that died as it started
                self._stack.close()
            return
        if not quiet:
            self._stack.close()
            return
        # a worker that was still starting (or sending a heartbeat) as its cluster closes
        # logs a traceback, as does the client's loop for a result it was still gathering
        # (another task's, when one task's failure ended the run): after a failed run the
        # error already said what went wrong
        loggers = [logging.getLogger(name) for name in QUIET_ON_FAILURE]
        levels = [logger.level for logger in loggers]
        with contextlib.suppress(Exception):
            client.run(_silence_distributed_logs)
        try:
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
            self._stack.close()
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)

    def close_in_background(self, quiet: bool = False) -> Future[None]:
        """Start closing; the returned future ends when the client and cluster are closed.
        ``quiet``: without the logs of workers closed while busy (after a failed run)."""
        if self._closed is None:
            self._closed = self._pool.submit(self._close, quiet)
            self._pool.shutdown(wait=False)
        return self._closed

    def close(self, quiet: bool = False) -> None:
        """Close the client and any cluster started for it; wait until they are closed."""
        self.close_in_background(quiet).result()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_cluster(
    config: ClusterConfig | None,
    libraries: WorkerLibraries = EVERY_FIT_LIBRARY,
    log: Callable[[str], None] | None = None,
) -> Connection:
    """Start connecting (a local cluster, or the scheduler ``config`` names) in the
    background, the workers loading ``libraries`` (what the fit needs) once connected: pass
    it to `train` as ``cluster``, which closes it."""
    warm = functools.partial(warm_workers, libraries=libraries)
    return Connection(config, log, prepare=warm)
