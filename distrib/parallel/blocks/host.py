"""The host of a worker's row blocks: a Dask actor that loads them once and evaluates them
in place, answering the driver over its direct channel (`distrib.parallel.blocks.channel`)
or through distributed's RPC, and relaying an evaluation to the other hosts of its group of
the sum tree (`distrib.parallel.blocks.partial_sums`)."""

from __future__ import annotations

import contextlib
import ctypes
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distrib.linear.newton import RowSample
from distrib.parallel.blocks.block import Block, block_loss_grad, load_block
from distrib.parallel.blocks.channel import Channel, ChannelServer, pack, receive_all
from distrib.parallel.blocks.partial_sums import Node, PartialSum, SumTree, combine
from distrib.parallel.blocks.streamed import open_streamed_block
from distrib.parallel.row_store import RowStore
from distrib.parallel.rows import InMemoryArrays, TrainingData

#: How often a pending call checks that its worker is still there (the call itself returns
#: as soon as its result arrives; this only bounds how long a lost worker goes unnoticed).
WATCH_SECONDS = 0.05


def _tls_contexts(security: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A TLS worker's contexts from its dask `Security`: to accept connections (the other
    end must present a certificate of the cluster's CA) and to connect to other hosts."""
    listen = security.get_listen_args("worker")["ssl_context"]
    connect = security.get_connection_args("worker")["ssl_context"]
    if listen is None or connect is None:
        raise ValueError("the worker has no TLS certificates")
    return listen, connect


def client_tls_context(client: Any) -> ssl.SSLContext:
    """The client's TLS context (its certificate) for the hosts' channels."""
    context = client.security.get_connection_args("client")["ssl_context"]
    if context is None:
        raise ValueError("the client has no TLS certificates")
    return context


@dataclass(frozen=True)
class EvaluationRequest:
    """One evaluation, as every host receives it: the coefficients, the class weights, and
    the order of the sums (`distrib.parallel.blocks.partial_sums.SumTree`)."""

    coef: np.ndarray
    intercept: np.ndarray
    class_weight: np.ndarray | None
    tree: SumTree


@dataclass(frozen=True)
class Relay:
    """A host that a relaying host forwards an evaluation to: its worker, its channel's
    address and token, and the blocks it evaluates."""

    worker: str
    address: tuple[str, int]
    token: bytes
    indices: list[int]


@dataclass(frozen=True)
class HostReply:
    """A host's answer to one evaluation request.

    ``parts``: its blocks' results, and those of the hosts it relayed to, with every group
    held whole already summed (`distrib.parallel.blocks.partial_sums.combine`); ``lost``: relayed
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
        self.blocks: dict[int, Block] = {}
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

        ``kw`` are `distrib.parallel.blocks.block.load_block`'s (classes, run_id, offset, key).
        """
        self.blocks[index] = load_block(source, start, stop, **kw)
        release_free_memory()  # the load's temporaries: back to the system, not kept
        return self.blocks[index].n_rows

    def open_stream(self, index: int, store: RowStore, start: int, stop: int, **kw: Any) -> int:
        """Make rows ``start:stop`` of the row store ``store`` block ``index``, streamed:
        read a piece at a time by every evaluation, never held. ``kw`` as `load`'s."""
        self.blocks[index] = open_streamed_block(store, start, stop, **kw)
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

    def evaluate(self, indices: list[int], request: EvaluationRequest) -> HostReply:
        """The loss and gradient of each block in ``indices`` at the request's
        coefficients, every group of its sum tree held whole summed.

        Runs in the calling thread: one block right there (a hand-off to another thread
        costs ~0.2 ms per evaluation), several at once on the host's threads.
        """
        blocks = [self.blocks[i] for i in indices]
        args = (request.coef, request.intercept, request.class_weight, self.worker)
        if len(blocks) == 1:
            results = [block_loss_grad(blocks[0], *args)]
        else:
            results = list(self._pool.map(lambda block: block_loss_grad(block, *args), blocks))
        return HostReply(combine(request.tree, dict(zip(indices, results, strict=True))))

    def predict(
        self, indices: list[int], coef: np.ndarray, intercept: np.ndarray
    ) -> dict[int, np.ndarray]:
        """Each row's predicted class index, for each block in ``indices``."""
        return {i: self.blocks[i].predict(coef, intercept) for i in indices}

    def sample(self, indices: list[int], stride: int) -> dict[int, RowSample]:
        """The Hessian's sample of each block in ``indices`` (every ``stride``-th row)."""
        return {i: self.blocks[i].sample(stride) for i in indices}

    def _answer(
        self,
        indices: list[int],
        relayed: list[Relay],
        request: EvaluationRequest,
        *,
        upstream_open: Callable[[], bool],
    ) -> HostReply:
        """A request on the direct channel: evaluate ``indices`` at ``request``, after
        forwarding it to each relayed host; their results come back here and go up summed
        with this host's."""
        started = time.thread_time()
        sent, unreached = self._forward(relayed, request)
        cpu = time.thread_time() - started
        reply = self.evaluate(indices, request)
        if not relayed:
            return reply

        def check(pending: set[str]) -> dict[str, str]:
            if not upstream_open():  # the driver gave up on this request
                raise ConnectionError("the driver closed the channel")
            return {}

        try:
            results, lost, read_cpu = receive_all(sent, check, WATCH_SECONDS, None)
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
        parts = combine(request.tree, parts)
        cpu += read_cpu + time.thread_time() - started
        return HostReply(parts, lost, unreached, len(results), cpu)

    def _forward(
        self, relayed: list[Relay], request: EvaluationRequest
    ) -> tuple[dict[str, Channel], list[str]]:
        """Send the evaluation to each relayed host: the channels sent on, the hosts that
        could not be reached."""
        sent: dict[str, Channel] = {}
        unreached: list[str] = []
        if not relayed:
            return sent, unreached
        packed, nobody = pack(request), pack([])
        for relay in relayed:
            worker = relay.worker
            try:
                known = self._relayed.get(worker)
                if known is None or known[0] != (relay.address, relay.token):
                    self._forget_relayed(worker)
                    connect = self._tls[1] if self._tls else None
                    channel = Channel(relay.address, relay.token, ssl_context=connect)
                    self._relayed[worker] = ((relay.address, relay.token), channel)
                channel = self._relayed[worker][1]
                channel.send(pack(relay.indices), nobody, packed)
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
