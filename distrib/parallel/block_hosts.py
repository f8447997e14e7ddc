"""Row blocks held on a Dask cluster's workers by actors, evaluated by direct calls.

One `BlockHost` actor per worker holds the row blocks placed on that worker and evaluates
them in place. At each evaluation of the objective the driver calls every host directly: no
task is scheduled and nothing waits on distributed's batching timers (client -> scheduler
10 ms, scheduler -> worker 5 ms, ...). The call travels over a TCP channel of the host's
own (`distrib.parallel.block_channel`: ~0.05 ms a round trip; TLS with the workers'
certificates on a ``tls://`` cluster); where the driver cannot reach a host's port, over the
worker's ``actor_execute`` handler on the client's connections (~1.2 ms a round trip here,
against ~15-18 ms for a submit/gather round).

Rows reach the hosts once, and never through the scheduler: prepared files are read by path
on the worker, in-memory rows travel in the load call straight to their worker, and a chunk
of a Dask array is computed by Dask and adopted by the host of the worker that holds it.

With more than two workers, hosts relay: the first host of each group of the fit's sum tree
(`distrib.parallel.partial_sums`) forwards each evaluation to the group's other hosts over their
channels and returns one sum for all of them, so the driver reads about sqrt(workers) replies.

An actor dies with its worker. The driver watches each call; when a host's worker leaves, its
blocks are loaded again from their source on the live workers and only their part of the
pending evaluation runs again. Each block's result is the same wherever it is computed and the
sums follow the fit's fixed tree, so the fit continues on the same path to the same model.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import ssl
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
from dask.utils import parse_timedelta

from distrib.errors import ClusterError
from distrib.linear import softmax
from distrib.linear.model import predict_codes
from distrib.parallel.block_channel import Channel, ChannelServer, pack, receive_all
from distrib.parallel.cluster import worker_infos
from distrib.parallel.multinomial import Evaluation, RowBlock, block_loss_grad, load_block
from distrib.parallel.partial_sums import (
    Node,
    PartialSum,
    SumTree,
    combine,
    covered,
    relay_routes,
    sum_tree,
    total,
)
from distrib.parallel.transfer import InMemoryArrays, RowsFromHere, TrainingData

# How often a pending call checks that its worker is still there (the call itself returns
# as soon as its result arrives; this only bounds how long a lost worker goes unnoticed).
_WATCH_SECONDS = 0.05
#: Evaluations to time before a silent host can be given up (the first ones set the pace).
SILENCE_AFTER_EVALUATIONS = 3


def silence_deadline(evaluation_seconds: list[float]) -> float | None:
    """Seconds an evaluation may wait on a host that does not answer before the fit gives
    that host up: ``factor`` times the median of the fit's evaluations so far, at least
    ``minimum`` (dask config ``distrib.silent-host.factor``, default 10, and
    ``distrib.silent-host.minimum``, default 2 s); None until `SILENCE_AFTER_EVALUATIONS`
    evaluations have been timed."""
    if len(evaluation_seconds) < SILENCE_AFTER_EVALUATIONS:
        return None
    factor = float(dask.config.get("distrib.silent-host.factor", 10))
    minimum = parse_timedelta(dask.config.get("distrib.silent-host.minimum", "2s"))
    return max(factor * float(np.median(evaluation_seconds)), float(minimum or 0.0))


def _tls_contexts(security: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A TLS worker's contexts from its dask `Security`: to accept connections (the other
    end must present a certificate of the cluster's CA) and to connect to other hosts."""
    listen = security.get_listen_args("worker")["ssl_context"]
    connect = security.get_connection_args("worker")["ssl_context"]
    if listen is None or connect is None:
        raise ValueError("the worker has no TLS certificates")
    return listen, connect


def _client_tls_context(client: Any) -> ssl.SSLContext:
    """The client's TLS context (its certificate) for the hosts' channels."""
    context = client.security.get_connection_args("client")["ssl_context"]
    if context is None:
        raise ValueError("the client has no TLS certificates")
    return context


@dataclass(frozen=True)
class HostReply:
    """A host's answer to one evaluation request.

    ``parts``: its blocks' results, and those of the hosts it relayed to, with every group
    held whole already summed (`distrib.parallel.partial_sums.combine`); ``lost``: relayed
    hosts whose channel closed before they answered (worker -> why); ``unreached``: relayed
    hosts it could not connect to; ``relayed`` and ``relay_cpu``: the replies it read from
    relayed hosts and its CPU seconds spent on them (forwarding, reading, summing).
    """

    parts: dict[Node, PartialSum]
    lost: dict[str, str] = field(default_factory=dict)
    unreached: list[str] = field(default_factory=list)
    relayed: int = 0
    relay_cpu: float = 0.0


class BlockHost:
    """Actor: the row blocks of one worker, evaluated in place (a thread per worker thread).

    Parameters
    ----------
    threads : int
        Blocks evaluated at once (the worker's thread count); the kernels release the GIL.
    """

    def __init__(self, threads: int = 1) -> None:
        from distributed import get_worker

        self.worker = str(get_worker().address)  # the actor starts in its worker's task
        self.blocks: dict[int, RowBlock] = {}
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="distrib-blocks")
        self._server: ChannelServer | None = None
        self._tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None  # (listen, connect)
        # worker -> (its channel's address and token, this host's connection to it)
        self._relayed: dict[str, tuple[tuple[Any, ...], Channel]] = {}

    def channel(self) -> tuple[str, int, bytes] | None:
        """Open the direct channel for evaluations on this worker's interface: its
        (host, port, token), or None for a worker that speaks neither ``tcp://`` nor
        ``tls://`` or a port that cannot open (evaluations then go through distributed).
        On a TLS cluster the channel speaks TLS with the worker's certificate, and the
        other end must present one of the cluster's CA."""
        from distributed import get_worker
        from distributed.comm import get_address_host, parse_address

        worker = get_worker()
        scheme = parse_address(worker.address)[0]
        if scheme not in ("tcp", "tls"):
            return None
        try:
            self._tls = _tls_contexts(worker.security) if scheme == "tls" else None
            listen = self._tls[0] if self._tls else None
            self._server = ChannelServer(get_address_host(worker.address), self._answer, listen)
        except (OSError, ValueError):
            return None
        return (*self._server.address, self._server.token)

    def load(self, index: int, source: TrainingData, start: int, stop: int, **kw: Any) -> int:
        """Read rows ``start:stop`` of ``source`` as block ``index``; return its row count.

        ``kw`` are `distrib.parallel.multinomial.load_block`'s (classes, run_id, offset, key).
        """
        self.blocks[index] = load_block(source, start, stop, **kw)
        release_free_memory()  # the load's temporaries: back to the system, not kept
        return self.blocks[index].n_rows

    def adopt(
        self,
        index: int,
        data_key: str,
        codes: np.ndarray,
        weights: np.ndarray | None = None,
        **kw: Any,
    ) -> int:
        """Make the Dask result ``data_key`` held by this worker (a chunk of rows) block
        ``index``; ``codes`` are its rows' class indices, ``weights`` their sample weights."""
        from distributed import get_worker

        X = get_worker().data[data_key]
        rows = InMemoryArrays(X, kw["classes"][codes], weights)
        return self.load(index, rows, 0, len(codes), **kw)

    def evaluate(
        self,
        indices: list[int],
        coef: np.ndarray,
        intercept: np.ndarray,
        class_weight: np.ndarray | None,
        tree: SumTree,
    ) -> HostReply:
        """The loss and gradient of each block in ``indices`` at these coefficients, every
        group of ``tree`` held whole summed.

        Runs in the calling thread: one block right there (a hand-off to another thread
        costs ~0.2 ms per evaluation), several at once on the host's threads.
        """
        blocks = [self.blocks[i] for i in indices]
        args = (coef, intercept, class_weight, self.worker)
        if len(blocks) == 1:
            results = [block_loss_grad(blocks[0], *args)]
        else:
            results = list(self._pool.map(lambda block: block_loss_grad(block, *args), blocks))
        return HostReply(combine(tree, dict(zip(indices, results, strict=True))))

    def predict(
        self, indices: list[int], coef: np.ndarray, intercept: np.ndarray
    ) -> dict[int, np.ndarray]:
        """Each row's predicted class index, for each block in ``indices``."""
        return {i: predict_codes(self.blocks[i].X, coef, intercept) for i in indices}

    def _answer(
        self,
        indices: list[int],
        relayed: list[tuple[str, tuple[str, int], bytes, list[int]]],
        args: tuple[Any, ...],
        *,
        upstream_open: Callable[[], bool],
    ) -> HostReply:
        """A request on the direct channel: evaluate ``indices`` at ``args`` (`evaluate`'s),
        after forwarding the evaluation to each relayed (worker, address, token, indices);
        their results come back here and go up summed with this host's."""
        started = time.thread_time()
        sent, unreached = self._forward(relayed, args)
        cpu = time.thread_time() - started
        reply = self.evaluate(indices, *args)
        if not relayed:
            return reply

        def check(pending: set[str]) -> dict[str, str]:
            if not upstream_open():  # the driver gave up on this request
                raise ConnectionError("the driver closed the channel")
            return {}

        try:
            results, lost, read_cpu = receive_all(sent, check, _WATCH_SECONDS, None)
        except BaseException:  # replies may still come on these: never read one as the next
            for worker in sent:
                self._forget_relayed(worker)
            raise
        started = time.thread_time()
        parts = dict(reply.parts)
        for result in results.values():
            parts.update(result.parts)
        for worker in lost:
            self._forget_relayed(worker)
        parts = combine(args[-1], parts)
        cpu += read_cpu + time.thread_time() - started
        return HostReply(parts, lost, unreached, len(results), cpu)

    def _forward(
        self,
        relayed: list[tuple[str, tuple[str, int], bytes, list[int]]],
        args: tuple[Any, ...],
    ) -> tuple[dict[str, Channel], list[str]]:
        """Send the evaluation to each relayed host: the channels sent on, the hosts that
        could not be reached."""
        sent: dict[str, Channel] = {}
        unreached: list[str] = []
        if not relayed:
            return sent, unreached
        request, nobody = pack(args), pack([])
        for worker, address, token, indices in relayed:
            try:
                known = self._relayed.get(worker)
                if known is None or known[0] != (address, token):
                    self._forget_relayed(worker)
                    connect = self._tls[1] if self._tls else None
                    channel = Channel(address, token, ssl_context=connect)
                    self._relayed[worker] = ((address, token), channel)
                channel = self._relayed[worker][1]
                channel.send(pack(indices), nobody, request)
                sent[worker] = channel
            except (OSError, ssl.SSLError):
                self._forget_relayed(worker)
                unreached.append(worker)
        return sent, unreached

    def _forget_relayed(self, worker: str) -> None:
        known = self._relayed.pop(worker, None)
        if known is not None:
            known[1].close()


def release_free_memory() -> None:
    """Give the memory this process has freed back to the system (glibc's ``malloc_trim``;
    nothing elsewhere). Local workers keep glibc's adaptive mmap threshold (see
    `distrib.parallel.cluster.LOCAL_WORKER_CONFIG`), so a block's temporaries (the chunk
    it came from, ~30 MB each) stay in the heap once freed, and count against the worker's
    memory limit, until trimmed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass(frozen=True)
class _Lost:
    """A call whose worker left the cluster."""

    worker: str
    why: str


@dataclass
class _Source:
    """Where block rows come from: rows of training data, or a chunk of a Dask array."""

    start: int
    stop: int
    data: TrainingData | None = None
    chunk: Any = None  # a Delayed computing the rows
    codes: np.ndarray | None = None
    weights: np.ndarray | None = None  # the chunk's sample weights


def _wait_all(client: Any, futures: list[Any], timeout: float | None) -> None:
    """`distributed.wait` on ``client``'s futures (it otherwise asks for the default client)."""
    from distributed import wait

    with client.as_current():
        wait(futures, timeout=timeout)


def _block_bounds(n_rows: int, n_blocks: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n_rows, max(1, min(n_blocks, n_rows)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def worker_slots(client: Any) -> list[str]:
    """One entry per worker thread, workers interleaved: where block ``i`` should live."""
    workers = worker_infos(client)
    threads = {address: int(info.get("nthreads", 1)) for address, info in workers.items()}
    slots: list[str] = []
    for round_ in range(max(threads.values(), default=0)):
        slots += [a for a in sorted(threads) if threads[a] > round_]
    return slots


class ClusterBlocks:
    """Row blocks held by `BlockHost` actors on the workers of a Dask cluster.

    Build it with `from_training_data` or `from_dask_array`; `wait_loaded` loads the blocks.

    Parameters
    ----------
    client : distributed.Client
    sources : list
        Where each block's rows come from, in row order.
    classes : ndarray
        The sorted labels (rows hold their index into them).
    run_id : str
        Names this fit in actor keys and block-load events.
    timeout : float, optional
        Seconds a load or one evaluation may take before the fit fails.
    slots : list of str
        The worker meant for each block (`worker_slots`); chunks of a Dask array stay where
        Dask computed them.
    direct : bool
        Evaluate over direct channels where the hosts can open one (default); False sends
        every evaluation through distributed's RPC.
    groups : int, optional
        Groups of the sum tree (`distrib.parallel.partial_sums.sum_tree`; default about
        the square root of the worker count).
    relay : bool
        Let the first host of each group relay evaluations to the group's other hosts
        (default); False calls every host from the driver. Same results either way.
    """

    def __init__(
        self,
        client: Any,
        sources: list[_Source],
        classes: np.ndarray,
        run_id: str,
        timeout: float | None = None,
        slots: list[str] | None = None,
        direct: bool = True,
        groups: int | None = None,
        relay: bool = True,
    ) -> None:
        self.client = client
        self.direct = direct
        self.groups = groups
        self.relay = relay
        self.tree: SumTree | None = None  # fixed at the first evaluation
        self.sources = sources
        self.classes = np.asarray(classes)
        self.run_id = run_id
        self.timeout = timeout
        self.placement: list[str] = [
            slots[i % len(slots)] if slots else "" for i in range(len(sources))
        ]
        self.hosts: dict[str, Any] = {}  # worker -> the future of its BlockHost actor
        self.channels: dict[str, Channel] = {}  # worker -> its host's direct channel
        self.addresses: dict[str, tuple[tuple[str, int], bytes]] = {}  # ... its address, token
        self._unrelayed: set[str] = set()  # hosts a relaying host could not reach
        self._no_channel: set[str] = set()  # hosts (keys) that could not open one
        self.losses: Counter[int] = Counter()  # block -> times its worker died under it
        #: Workers given up for this fit because they stopped answering (worker -> when,
        #: why, at which evaluation): they get no block of it again.
        self.given_up: dict[str, dict[str, Any]] = {}
        self.evaluation_seconds: list[float] = []
        #: Receives a line when an evaluation waits on a host for longer than expected.
        self.log: Callable[[str], None] | None = None
        self._loaded = False

    @classmethod
    def from_training_data(
        cls,
        client: Any,
        data: TrainingData,
        classes: np.ndarray,
        *,
        n_blocks: int | None = None,
        run_id: str = "",
        timeout: float | None = None,
    ) -> ClusterBlocks:
        """One block per worker thread (or ``n_blocks``), block ``i`` on the ``i``-th
        thread's worker. `distrib.parallel.transfer.ArrayFiles` are read by path on the workers;
        in-memory rows are sent to their worker directly, once."""
        slots = worker_slots(client)
        if not slots:
            raise ClusterError("the Dask cluster has no worker to hold the rows")
        bounds = _block_bounds(data.shape[0], n_blocks or len(slots))
        sources = [_Source(a, b, data=data) for a, b in bounds]
        return cls(client, sources, classes, run_id or uuid.uuid4().hex, timeout, slots)

    @classmethod
    def from_dask_array(
        cls,
        client: Any,
        X: Any,
        codes: np.ndarray,
        classes: np.ndarray,
        *,
        sample_weight: np.ndarray | None = None,
        run_id: str = "",
        timeout: float | None = None,
    ) -> ClusterBlocks:
        """One block per chunk of rows of the Dask array ``X``, computed on the workers
        (never gathered here); ``codes`` are the rows' class indices, ``sample_weight``
        their weights (sent with each chunk's load)."""
        X = X.rechunk({1: -1})
        edges = np.cumsum((0, *X.chunks[0]))
        # each chunk as its block keeps it (CSR where sparse), made where it is computed
        chunks = [
            dask.delayed(softmax.prepare, pure=True)(chunk) for chunk in X.to_delayed().ravel()
        ]
        sources = [
            _Source(
                int(a),
                int(b),
                chunk=chunk,
                codes=np.asarray(codes[a:b]),
                weights=None if sample_weight is None else np.asarray(sample_weight[a:b]),
            )
            for chunk, (a, b) in zip(chunks, itertools.pairwise(edges), strict=True)
        ]
        return cls(client, sources, classes, run_id or uuid.uuid4().hex, timeout)

    # --- calls to the hosts -----------------------------------------------------------

    def _key(self, index: int) -> str:
        return f"distrib-rows-{self.run_id}-{index}"

    def _host(self, worker: str) -> Any:
        """The future of ``worker``'s host actor, started there if it has none."""
        if worker not in self.hosts:
            threads = int(worker_infos(self.client).get(worker, {}).get("nthreads", 1))
            self.hosts[worker] = self.client.submit(
                BlockHost,
                threads,
                actor=True,
                workers=[worker],
                allow_other_workers=False,
                key=f"distrib-host-{self.run_id}-{len(self.hosts)}-{uuid.uuid4().hex[:8]}",
            )
        return self.hosts[worker]

    async def _call(
        self,
        worker: str,
        function: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        silence: float | None = None,
    ) -> Any:
        """Run ``function`` of ``worker``'s host there; a `_Lost` if the worker leaves, or
        if it answers nothing for ``silence`` seconds (then it is given up, as a silent
        host on a direct channel is: `_silent`)."""
        from distributed.protocol import to_serialize

        host = self.hosts[worker]
        lost = await self._wait_started(worker, host)
        if lost is not None:
            return lost
        asked = time.monotonic()
        call = asyncio.ensure_future(
            self.client.rpc(worker).actor_execute(
                actor=host.key,
                function=function,
                args=[to_serialize(a) for a in args],
                kwargs={k: to_serialize(v) for k, v in kwargs.items()},
            )
        )
        while True:
            done, _ = await asyncio.wait({call}, timeout=_WATCH_SECONDS)
            try:
                gone = self._gone({worker})
            except OSError:  # the scheduler is gone
                call.cancel()
                raise
            if done:
                try:
                    response = call.result()
                except OSError as exc:  # the connection broke: the worker died mid-call
                    return _Lost(worker, f"{type(exc).__name__}: {exc}")
                if response["status"] != "OK":
                    raise response["exception"]
                return response["result"]
            if gone:  # the scheduler saw it go
                call.cancel()
                return _Lost(worker, gone[worker])
            waited = time.monotonic() - asked
            if silence is not None and waited > silence:
                call.cancel()
                identity = await self.client.scheduler.identity(n_workers=-1)
                info = identity.get("workers", {}).get(worker, {})
                stale = time.time() - float(info.get("last_seen", 0.0)) > waited / 2
                how = "nor its heartbeats" if stale else "though its heartbeats came"
                why = f"no answer in {waited:.1f} s, {how} (deadline {silence:.1f} s)"
                return _Lost(worker, self._give_up(worker, why, {}))

    def _scheduler_lost(self) -> OSError:
        return OSError(f"the client lost its scheduler (client status: {self.client.status})")

    def _gone(self, workers: set[str]) -> dict[str, str]:
        """Which of ``workers`` the scheduler saw leave (their host's task changed)."""
        if self.client.status != "running":
            raise self._scheduler_lost()
        status = {w: self.hosts[w].status for w in workers}
        return {
            w: f"its actor's task became {s}"
            for w, s in status.items()
            if s not in ("finished", "pending")
        }

    async def _wait_started(self, worker: str, host: Any) -> _Lost | None:
        """Wait for ``worker``'s host actor to start; a `_Lost` if it cannot (its worker
        left: the actor's task, bound to that worker, would wait for it forever)."""
        checked = 0.0
        while host.status == "pending":
            await asyncio.sleep(_WATCH_SECONDS / 5)
            checked += _WATCH_SECONDS / 5
            if checked >= 1.0:  # about once a second, ask the scheduler
                checked = 0.0
                identity = await self.client.scheduler.identity(n_workers=-1)
                if worker not in identity.get("workers", {}):
                    return _Lost(worker, "it left before its actor started")
        if host.status != "finished":
            return _Lost(worker, f"its actor's task became {host.status}")
        return None

    async def _call_all(
        self,
        calls: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]],
        silence: float | None = None,
    ) -> dict[str, Any]:
        """One host call per worker, at once: worker -> result, or a `_Lost` (a host that
        answers nothing for ``silence`` seconds is given up)."""
        workers = list(calls)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(self._call(w, name, args, kw, silence) for w, (name, args, kw) in calls.items())
            ),
            self.timeout,
        )
        return dict(zip(workers, results, strict=True))

    # --- loading ----------------------------------------------------------------------

    def _load_call(
        self, index: int, chunks: dict[int, Any]
    ) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """The host call that loads block ``index``."""
        source = self.sources[index]
        kw = {"classes": self.classes, "run_id": self.run_id, "key": self._key(index)}
        if source.data is None:  # a chunk of a Dask array, computed on its worker: adopt it
            args = (index, chunks[index].key, source.codes, source.weights)
            return "adopt", args, dict(kw, offset=source.start)
        data, start, stop = source.data, source.start, source.stop
        if isinstance(data, (InMemoryArrays, RowsFromHere)):  # only these rows travel
            data, start, stop = data.row_block(start, stop), 0, stop - start
        return "load", (index, data, start, stop), dict(kw, offset=source.start)

    def _compute_chunks(self, indices: list[int]) -> dict[int, Any]:
        """Compute the Dask chunks of blocks ``indices``, each on the live worker with the
        fewest rows so far (Dask alone may put most chunks on one worker), and place each
        block where its chunk is."""
        if not indices:
            return {}
        workers = sorted(w for w in worker_infos(self.client) if w not in self.given_up)
        rows = Counter({w: 0 for w in workers})
        for i, w in enumerate(self.placement):
            if i not in indices and w in rows and self.sources[i].data is None:
                rows[w] += self.sources[i].stop - self.sources[i].start
        futures = {}
        for index in indices:
            target = min(workers, key=lambda w: (rows[w], workers.index(w))) if workers else None
            source = self.sources[index]
            if target is not None:
                rows[target] += source.stop - source.start
            where = {"workers": [target], "allow_other_workers": True} if target else {}
            futures[index] = self.client.compute(source.chunk, **where)
        _wait_all(self.client, list(futures.values()), self.timeout)
        holders = self.client.who_has(list(futures.values()))
        for index, future in futures.items():
            if future.status == "error":
                future.result()
            self.placement[index] = sorted(holders[future.key])[0]
        return futures

    def _load(self, indices: list[int]) -> None:
        """Load blocks ``indices`` where `placement` says, one per worker at a time.

        Chunks of a Dask array are computed a wave at a time (about one per live worker)
        and kept until their block adopts them: a worker holds its blocks and at most a few
        chunks on their way in, never the whole array."""
        pending = list(indices)
        computed: dict[int, Any] = {}  # block -> the future of its chunk, not yet adopted
        while pending:
            wave = max(1, len(worker_infos(self.client)) - len(computed))
            todo = [i for i in pending if self.sources[i].data is None and i not in computed]
            computed.update(self._compute_chunks(todo[:wave]))
            calls: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {}
            started: dict[str, int] = {}
            for index in list(pending):
                if self.sources[index].data is None and index not in computed:
                    continue
                worker = self.placement[index]
                if worker not in calls:
                    self._host(worker)
                    calls[worker] = self._load_call(index, computed)
                    started[worker] = index
                    pending.remove(index)
            outcome = self.client.sync(self._call_all, calls)
            for index in started.values():
                computed.pop(index, None)  # adopted: the host holds those rows now
            for worker, result in outcome.items():
                if isinstance(result, _Lost):
                    lost = self._lose(worker)
                    for index in lost:  # computed anew where they are placed next
                        computed.pop(index, None)
                    pending += [i for i in lost if i not in pending]
            self._open_channels([w for w, r in outcome.items() if not isinstance(r, _Lost)])

    def _open_channels(self, workers: list[str]) -> None:
        """Connect to the direct channel of each of these workers' hosts that has none yet
        (a host that cannot open one, or cannot be reached, is called through Dask)."""
        if not self.direct:
            return
        tried = set(self.channels)
        todo = [w for w in workers if w not in tried and self.hosts[w].key not in self._no_channel]
        if not todo:
            return
        opened = self.client.sync(self._call_all, {w: ("channel", (), {}) for w in todo})
        for worker, answer in opened.items():
            if isinstance(answer, _Lost):
                continue  # the next call finds it lost
            try:
                if answer is None:
                    raise OSError("no channel")
                host, port, token = answer
                tls = worker.startswith("tls://")
                context = _client_tls_context(self.client) if tls else None
                self.channels[worker] = Channel((host, port), token, ssl_context=context)
                self.addresses[worker] = ((host, port), token)
            except (OSError, ValueError):
                self._no_channel.add(self.hosts[worker].key)

    def _lose(self, worker: str) -> list[int]:
        """Forget ``worker``'s host; return its blocks, placed anew on live workers."""
        from distributed import KilledWorker

        host = self.hosts.pop(worker, None)
        if host is not None:
            self.client.cancel([host])
        channel = self.channels.pop(worker, None)
        if channel is not None:
            channel.close()
        self.addresses.pop(worker, None)
        lost = [i for i, w in enumerate(self.placement) if w == worker]
        allowed = int(dask.config.get("distributed.scheduler.allowed-failures"))
        for index in lost:
            self.losses[index] += 1
            if self.losses[index] > allowed:
                last: Any = types.SimpleNamespace(address=worker)  # what its message reads
                raise KilledWorker(self._key(index), last, allowed)
        live = [w for w in worker_slots(self.client) if w != worker and w not in self.given_up]
        if not live:
            raise ClusterError(
                f"the worker {worker} holding rows of the fit left, and no worker is left"
            )
        for index in lost:
            counts = Counter(w for i, w in enumerate(self.placement) if i not in lost)
            self.placement[index] = min(live, key=lambda w: (counts[w], live.index(w)))
        return lost

    def wait_loaded(self) -> None:
        """Load every block onto its worker (raises a load error here)."""
        if not self._loaded:
            self._load(list(range(len(self.sources))))
            self._loaded = True

    # --- the runner interface ---------------------------------------------------------

    def evaluate(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> Evaluation:
        self.wait_loaded()
        started = time.perf_counter()
        tree = self.fix_tree()
        args = (coef, intercept, class_weight, tree)
        parts: dict[Node, PartialSum] = {}
        stats = dict.fromkeys(("messages", "message_cpu", "relayed", "relay_cpu"), 0.0)
        while len(done := covered(parts)) < len(self.sources):
            by_worker: dict[str, list[int]] = {}
            for index, worker in enumerate(self.placement):
                if index not in done:
                    by_worker.setdefault(worker, []).append(index)
            replies, lost = self._evaluate_on(by_worker, args, stats)
            for reply in replies:
                parts.update(reply.parts)
            reload: list[int] = []
            for worker in lost:
                reload += self._lose(worker)
            if reload:
                self._load(reload)
        self.evaluation_seconds.append(time.perf_counter() - started)
        return Evaluation(
            total(tree, parts),
            messages=int(stats["messages"]),
            message_cpu=stats["message_cpu"],
            relayed=int(stats["relayed"]),
            relay_cpu=stats["relay_cpu"],
        )

    def fix_tree(self) -> SumTree:
        """The order of the blocks' sums for the whole fit: fixed from where the blocks are
        at the first evaluation, unless given (a resumed fit keeps its first run's)."""
        if self.tree is None:
            self.tree = sum_tree(self.placement, self.groups)
        return self.tree

    def _routes(self, by_worker: dict[str, list[int]]) -> dict[str, list[str]]:
        """Hosts called over their channel -> the hosts each relays the evaluation to."""
        direct = [w for w in by_worker if w in self.channels]
        if not self.relay or self.tree is None:
            return {w: [] for w in direct}
        reachable = [w for w in direct if w not in self._unrelayed]
        routes = relay_routes(self.tree, by_worker, reachable)
        return routes | {w: [] for w in direct if w in self._unrelayed}

    def _evaluate_on(
        self, by_worker: dict[str, list[int]], args: tuple[Any, ...], stats: dict[str, float]
    ) -> tuple[list[HostReply], dict[str, str]]:
        """Each worker's blocks evaluated at ``args``: the hosts' replies, and the workers
        lost on the way (worker -> why). Requests go out on the direct channels first (to the
        relaying hosts, `_routes`), then the other hosts are called through Dask, then the
        channels' replies are read. Blocks of a relaying host abandoned here (one of its
        relayed hosts left) are in no reply: the caller asks again."""
        replies: list[HostReply] = []
        lost: dict[str, str] = {}
        routes = self._routes(by_worker)
        shared = pack(args)  # the coefficients, pickled once for every host
        started = time.thread_time()  # from here on, the driver's time per message
        sent: dict[str, Channel] = {}
        for worker, relayed in routes.items():
            forward = [(w, *self.addresses[w], by_worker[w]) for w in relayed]
            try:
                self.channels[worker].send(pack(by_worker[worker]), pack(forward), shared)
                sent[worker] = self.channels[worker]
            except OSError as exc:  # the host's worker died since the last call
                lost[worker] = f"{type(exc).__name__}: {exc}"
        stats["message_cpu"] += time.thread_time() - started
        called = {w for relayed in routes.values() for w in relayed} | set(routes)
        rest: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
            w: ("evaluate", (indices, *args), {})
            for w, indices in by_worker.items()
            if w not in called
        }
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        silence = silence_deadline(self.evaluation_seconds)
        if rest:
            for worker, result in self.client.sync(self._call_all, rest, silence).items():
                if isinstance(result, _Lost):
                    lost[worker] = result.why
                else:
                    replies.append(result)
        abandoned: set[str] = set()

        def check(pending: set[str]) -> dict[str, str]:
            gone = self._gone(pending | {w for r in pending for w in routes[r]})
            stop = {r: gone[r] for r in pending if r in gone}
            for relaying in pending - set(stop):
                for worker in routes[relaying]:
                    if worker in gone:  # stop waiting: its host would wait on it forever
                        lost[worker] = gone[worker]
                        abandoned.add(relaying)
                        stop[relaying] = f"{worker} left"
            return stop

        asked = time.monotonic()
        said = False

        def watch(pending: set[str]) -> dict[str, str]:
            nonlocal said
            stop = check(pending)
            waited = time.monotonic() - asked
            if silence is not None and not said and waited > silence / 4 and self.log:
                said = True
                typical = float(np.median(self.evaluation_seconds))
                hosts = ", ".join(
                    w + (f" (relaying for {', '.join(routes[w])})" if routes.get(w) else "")
                    for w in sorted(pending)
                )
                self.log(
                    f"evaluation {len(self.evaluation_seconds) + 1}: waiting {waited:.1f} s on "
                    f"{hosts} (evaluations take {typical:.2f} s; giving up on a silent host "
                    f"at {silence:.1f} s)"
                )
            if silence is not None and waited > silence and pending - set(stop):
                stop |= self._silent(pending - set(stop), routes, waited, silence, lost, abandoned)
            return stop

        results, unanswered, read_cpu = receive_all(sent, watch, _WATCH_SECONDS, deadline)
        stats["message_cpu"] += read_cpu
        stats["messages"] += len(results)
        for reply in results.values():
            replies.append(reply)
            lost.update(reply.lost)
            self._unrelayed.update(reply.unreached)
            stats["relayed"] += reply.relayed
            stats["relay_cpu"] += reply.relay_cpu
        for worker, why in unanswered.items():
            if worker not in abandoned:
                lost[worker] = why
        self._reopen(abandoned - set(lost))
        return replies, lost

    def _silent(
        self,
        pending: set[str],
        routes: dict[str, list[str]],
        waited: float,
        deadline: float,
        lost: dict[str, str],
        abandoned: set[str],
    ) -> dict[str, str]:
        """The hosts an evaluation has waited on past its silence deadline: give up those
        whose worker has also stopped its heartbeats (paused, cut off), and any that answer
        nothing while their worker still beats (slow). A relaying host that waits on a
        given-up host is not waited on either; one whose group is merely slow is asked
        again with its group called directly, so the slow host shows itself."""
        stale = self._stale_heartbeats(pending | {w for r in pending for w in routes[r]}, waited)
        stop: dict[str, str] = {}
        for relaying in pending:
            behind = [w for w in routes[relaying] if w in stale]
            if relaying in stale or (not routes[relaying] and not stale):
                how = "nor its heartbeats" if relaying in stale else "though its heartbeats came"
                why = f"no answer in {waited:.1f} s, {how} (deadline {deadline:.1f} s)"
                stop[relaying] = self._give_up(relaying, why, lost)
            elif behind or not stale:  # waits on a silent host, or on its slow group
                for worker in behind:
                    why = f"no heartbeat in {waited:.1f} s (deadline {deadline:.1f} s)"
                    self._give_up(worker, why, lost)
                if not behind:
                    self._unrelayed.update(routes[relaying])
                abandoned.add(relaying)
                stop[relaying] = "it waits on a silent host"
        return stop

    def _stale_heartbeats(self, workers: set[str], waited: float) -> set[str]:
        """Which of ``workers`` the scheduler has not heard from for half of ``waited``."""
        infos = worker_infos(self.client)
        now = time.time()
        return {
            w for w in workers if now - float(infos.get(w, {}).get("last_seen", 0.0)) > waited / 2
        }

    def _give_up(self, worker: str, why: str, lost: dict[str, str]) -> str:
        """Give ``worker`` up for this fit: its blocks go elsewhere, and it gets none again."""
        reason = f"given up: {why}"
        if self.log is not None:
            self.log(f"{worker} {reason}; its blocks load on the live workers")
        self.given_up[worker] = {
            "worker": worker,
            "time": time.time(),
            "evaluation": len(self.evaluation_seconds) + 1,
            "why": reason,
        }
        lost[worker] = reason
        return reason

    def _reopen(self, workers: set[str]) -> None:
        """A new channel to each of these hosts (the old one was closed mid-request)."""
        for worker in workers:
            self.channels.pop(worker).close()
            self.addresses.pop(worker, None)
        self._open_channels(sorted(workers))

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Every row's predicted class index, computed where its block lives (blocks of a
        worker lost meanwhile are loaded again elsewhere first)."""
        self.wait_loaded()
        codes: dict[int, np.ndarray] = {}
        while len(codes) < len(self.sources):
            by_worker: dict[str, list[int]] = {}
            for index, worker in enumerate(self.placement):
                if index not in codes:
                    by_worker.setdefault(worker, []).append(index)
            calls: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
                w: ("predict", (ix, coef, intercept), {}) for w, ix in by_worker.items()
            }
            reload: list[int] = []
            for worker, result in self.client.sync(self._call_all, calls).items():
                if isinstance(result, _Lost):
                    reload += self._lose(worker)
                else:
                    codes.update(result)
            if reload:
                self._load(reload)
        return np.concatenate([codes[i] for i in range(len(self.sources))])

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "key": self._key(i),
                "start": source.start,
                "rows": source.stop - source.start,
                "worker": self.placement[i],
                "copies": 1,
                "calls": "direct channel" if self.placement[i] in self.channels else "dask rpc",
            }
            for i, source in enumerate(self.sources)
        ]

    def release(self) -> None:
        """Drop the blocks from the workers' memory (the host actors end)."""
        hosts = list(self.hosts.values())
        self.hosts = {}
        for channel in self.channels.values():
            channel.close()  # the host's channel threads end
        self.channels = {}
        self.addresses = {}
        if hosts:
            with contextlib.suppress(Exception):  # best effort: the cluster may be gone
                self.client.cancel(hosts)
