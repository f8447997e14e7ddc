"""Row blocks held on a Dask cluster's workers by actors, evaluated by direct calls: the
runner a solver calls (`ClusterBlocks`).

One `distrib.parallel.blocks.host.BlockHost` actor per worker holds the row blocks placed on
that worker and evaluates them in place. At each evaluation of the objective the driver calls
every host directly: no task is scheduled and nothing waits on distributed's batching timers
(client -> scheduler 10 ms, scheduler -> worker 5 ms, ...). The call travels over a TCP
channel of the host's own (`distrib.parallel.blocks.direct`; TLS with the workers'
certificates on a ``tls://`` cluster); where the driver cannot reach a host's port, through
distributed's RPC (`distrib.parallel.blocks.rpc`: ~1.2 ms a round trip here, against
~15-18 ms for a submit/gather round).

Rows reach the hosts once, and never through the scheduler (`distrib.parallel.blocks.sources`):
prepared files are read by path on the worker, in-memory rows travel in the load call straight
to their worker, and a chunk of a Dask array is computed by Dask and adopted by the host of
the worker that holds it.

With more than two workers, hosts relay: the first host of each group of the fit's sum tree
(`distrib.parallel.blocks.partial_sums`) forwards each evaluation to the group's other hosts
over their channels and returns one sum for all of them, so the driver reads about
sqrt(workers) replies.

An actor dies with its worker. The driver watches each call; when a host's worker leaves, its
blocks are loaded again from their source on the live workers (`distrib.parallel.blocks.
placement`) and only their part of the pending evaluation runs again; a host that answers
nothing past the silence deadline (`distrib.parallel.deadlines.silence_deadline`) is given up
the same way. Each block's result is the same wherever it is computed and the sums follow the
fit's fixed tree, so the fit continues on the same path to the same model.
"""

from __future__ import annotations

import contextlib
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import dask
import numpy as np

from distrib.errors import ClusterError
from distrib.parallel.blocks.block import Evaluation
from distrib.parallel.blocks.channel import Channel, pack, receive_all
from distrib.parallel.blocks.direct import DirectChannels
from distrib.parallel.blocks.host import (
    WATCH_SECONDS,
    BlockHost,
    EvaluationRequest,
    HostReply,
    Relay,
)
from distrib.parallel.blocks.partial_sums import (
    Node,
    PartialSum,
    SumTree,
    covered,
    relay_routes,
    sum_tree,
    total,
)
from distrib.parallel.blocks.placement import Placement, slots_of
from distrib.parallel.blocks.rpc import CallResults, HostActors
from distrib.parallel.blocks.sources import (
    BlockSource,
    ChunkSource,
    HostCall,
    chunk_sources,
    rows_sources,
)
from distrib.parallel.cluster import worker_infos
from distrib.parallel.deadlines import heartbeats_stale, silence_deadline, silence_reason
from distrib.parallel.rows import TrainingData


def worker_slots(client: Any) -> list[str]:
    """One entry per worker thread of ``client``'s cluster, workers interleaved: where
    block ``i`` should live."""
    workers = worker_infos(client)
    return slots_of({address: int(info.get("nthreads", 1)) for address, info in workers.items()})


def _wait_all(client: Any, futures: list[Any], timeout: float | None) -> None:
    """`distributed.wait` on ``client``'s futures (it otherwise asks for the default client)."""
    from distributed import wait

    with client.as_current():
        wait(futures, timeout=timeout)


class ClusterBlocks:
    """Row blocks held by `BlockHost` actors on the workers of a Dask cluster.

    Build it with `from_training_data` or `from_dask_array`; `wait_loaded` loads the blocks.
    Every setting is a constructor argument (the builders pass theirs on).

    Parameters
    ----------
    client : distributed.Client
    sources : list of BlockSource
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
        Groups of the sum tree (`distrib.parallel.blocks.partial_sums.sum_tree`; default
        about the square root of the worker count).
    relay : bool
        Let the first host of each group relay evaluations to the group's other hosts
        (default); False calls every host from the driver. Same results either way.
    tree : SumTree, optional
        The order of the blocks' sums (a resumed fit keeps its first run's); default: fixed
        from where the blocks are at the first evaluation.
    log : callable, optional
        Receives a line when an evaluation waits on a host for longer than expected, and
        when a host is given up.
    """

    def __init__(
        self,
        client: Any,
        sources: list[BlockSource],
        classes: np.ndarray,
        run_id: str,
        timeout: float | None = None,
        slots: list[str] | None = None,
        *,
        direct: bool = True,
        groups: int | None = None,
        relay: bool = True,
        tree: SumTree | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.groups = groups
        self.relay = relay
        self.tree = tree
        self.sources = sources
        self.classes = np.asarray(classes)
        self.run_id = run_id
        self.timeout = timeout
        self.log = log
        self.placement = Placement(len(sources), slots)
        self.actors = HostActors(client, run_id, timeout, self._give_up)
        self.channels = DirectChannels(self.actors, enabled=direct)
        self.evaluation_seconds: list[float] = []
        self._loaded = False

    @property
    def given_up(self) -> dict[str, dict[str, Any]]:
        """Workers given up for this fit because they stopped answering."""
        return self.placement.given_up

    @property
    def losses(self) -> Counter[int]:
        """Block -> times its worker died under it."""
        return self.placement.losses

    @classmethod
    def from_training_data(
        cls,
        client: Any,
        data: TrainingData,
        classes: np.ndarray,
        *,
        n_blocks: int | None = None,
        run_id: str = "",
        **options: Any,
    ) -> ClusterBlocks:
        """One block per worker thread (or ``n_blocks``), block ``i`` on the ``i``-th
        thread's worker. `distrib.parallel.rows.ArrayFiles` are read by path on the
        workers; in-memory rows are sent to their worker directly, once. ``options``: the
        constructor's (timeout, direct, groups, relay, tree, log)."""
        slots = worker_slots(client)
        if not slots:
            raise ClusterError("the Dask cluster has no worker to hold the rows")
        sources = rows_sources(data, n_blocks or len(slots))
        return cls(client, sources, classes, run_id or uuid.uuid4().hex, slots=slots, **options)

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
        **options: Any,
    ) -> ClusterBlocks:
        """One block per chunk of rows of the Dask array ``X``, computed on the workers
        (never gathered here); ``codes`` are the rows' class indices, ``sample_weight``
        their weights (sent with each chunk's load). ``options``: the constructor's."""
        sources = chunk_sources(X, codes, sample_weight)
        return cls(client, sources, classes, run_id or uuid.uuid4().hex, **options)

    def _key(self, index: int) -> str:
        return f"distrib-rows-{self.run_id}-{index}"

    # --- loading ----------------------------------------------------------------------

    def _compute_chunks(self, indices: list[int]) -> dict[int, Any]:
        """Compute the Dask chunks of blocks ``indices``, each on the live worker with the
        fewest rows so far (Dask alone may put most chunks on one worker), and place each
        block where its chunk is."""
        if not indices:
            return {}
        workers = sorted(w for w in worker_infos(self.client) if w not in self.given_up)
        made = {i: s.n_rows for i, s in enumerate(self.sources) if s.made_on_workers}
        targets = self.placement.chunk_targets(indices, workers, made)
        futures = {}
        for index, target in targets.items():
            source = self.sources[index]
            assert isinstance(source, ChunkSource)
            where = {"workers": [target], "allow_other_workers": True} if target else {}
            futures[index] = self.client.compute(source.chunk, **where)
        _wait_all(self.client, list(futures.values()), self.timeout)
        holders = self.client.who_has(list(futures.values()))
        for index, future in futures.items():
            if future.status == "error":
                future.result()
            self.placement.place(index, sorted(holders[future.key])[0])
        return futures

    def _load_call(self, index: int, chunks: dict[int, Any]) -> HostCall:
        common = {"classes": self.classes, "run_id": self.run_id, "key": self._key(index)}
        chunk = chunks.get(index)
        return self.sources[index].load_call(index, common, "" if chunk is None else chunk.key)

    def _load(self, indices: list[int]) -> None:
        """Load blocks ``indices`` where the placement says, one per worker at a time.

        Chunks of a Dask array are computed a wave at a time (about one per live worker)
        and kept until their block adopts them: a worker holds its blocks and at most a few
        chunks on their way in, never the whole array."""
        pending = list(indices)
        computed: dict[int, Any] = {}  # block -> the future of its chunk, not yet adopted
        while pending:
            wave = max(1, len(worker_infos(self.client)) - len(computed))
            todo = [i for i in pending if self.sources[i].made_on_workers and i not in computed]
            computed.update(self._compute_chunks(todo[:wave]))
            calls: dict[str, HostCall] = {}
            started: dict[str, int] = {}
            for index in list(pending):
                if self.sources[index].made_on_workers and index not in computed:
                    continue
                worker = self.placement[index]
                if worker not in calls:
                    self.actors.start(worker)
                    calls[worker] = self._load_call(index, computed)
                    started[worker] = index
                    pending.remove(index)
            outcome = self.actors.call_all(calls)
            for index in started.values():
                computed.pop(index, None)  # adopted: the host holds those rows now
            for worker in outcome.lost:
                lost = self._lose(worker)
                for index in lost:  # computed anew where they are placed next
                    computed.pop(index, None)
                pending += [i for i in lost if i not in pending]
            self.channels.open(list(outcome.results))

    def _lose(self, worker: str) -> list[int]:
        """Forget ``worker``'s host; return its blocks, placed anew on live workers."""
        from distributed import KilledWorker

        self.actors.forget(worker)
        self.channels.close(worker)
        allowed = int(dask.config.get("distributed.scheduler.allowed-failures"))
        lost, too_often = self.placement.lose(worker, allowed)
        if too_often is not None:
            last: Any = types.SimpleNamespace(address=worker)  # what its message reads
            raise KilledWorker(self._key(too_often), last, allowed)
        live = [w for w in worker_slots(self.client) if w != worker and w not in self.given_up]
        if not live:
            raise ClusterError(
                f"the worker {worker} holding rows of the fit left, and no worker is left"
            )
        self.placement.reassign(lost, live)
        return lost

    def _reload_lost(self, lost: dict[str, str] | list[str]) -> None:
        """Load the blocks of these lost workers again, on the live ones."""
        reload: list[int] = []
        for worker in lost:
            reload += self._lose(worker)
        if reload:
            self._load(reload)

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
        # every evaluation, not only one that waits: a fit over the direct channels would
        # otherwise run to its end without the scheduler, and fail after it
        self.actors.check_scheduler()
        started = time.perf_counter()
        request = EvaluationRequest(coef, intercept, class_weight, self.fix_tree())
        parts: dict[Node, PartialSum] = {}
        stats = dict.fromkeys(("messages", "message_cpu", "relayed", "relay_cpu"), 0.0)
        while len(done := covered(parts)) < len(self.sources):
            replies, lost = self._evaluate_on(self.placement.by_worker(done), request, stats)
            for reply in replies:
                parts.update(reply.parts)
            self._reload_lost(lost)
        self.evaluation_seconds.append(time.perf_counter() - started)
        return Evaluation(
            total(request.tree, parts),
            messages=int(stats["messages"]),
            message_cpu=stats["message_cpu"],
            relayed=int(stats["relayed"]),
            relay_cpu=stats["relay_cpu"],
        )

    def fix_tree(self) -> SumTree:
        """The order of the blocks' sums for the whole fit: fixed from where the blocks are
        at the first evaluation, unless given (a resumed fit keeps its first run's)."""
        if self.tree is None:
            self.tree = sum_tree(self.placement.workers, self.groups)
        return self.tree

    def _routes(self, by_worker: dict[str, list[int]]) -> dict[str, list[str]]:
        """Hosts called over their channel -> the hosts each relays the evaluation to."""
        direct = [w for w in by_worker if w in self.channels]
        if not self.relay or self.tree is None:
            return {w: [] for w in direct}
        unrelayed = self.channels.unrelayed
        routes = relay_routes(self.tree, by_worker, [w for w in direct if w not in unrelayed])
        return routes | {w: [] for w in direct if w in unrelayed}

    def _evaluate_on(
        self,
        by_worker: dict[str, list[int]],
        request: EvaluationRequest,
        stats: dict[str, float],
    ) -> tuple[list[HostReply], dict[str, str]]:
        """Each worker's blocks evaluated at ``request``: the hosts' replies, and the workers
        lost on the way (worker -> why). Requests go out on the direct channels first (to the
        relaying hosts, `_routes`), then the other hosts are called through Dask, then the
        channels' replies are read. Blocks of a relaying host abandoned here (one of its
        relayed hosts left) are in no reply: the caller asks again."""
        routes = self._routes(by_worker)
        sent, lost = self._send(by_worker, routes, request, stats)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        replies: list[HostReply] = []
        called = {w for relayed in routes.values() for w in relayed} | set(routes)
        rest = {
            w: HostCall(BlockHost.evaluate, (indices, request))
            for w, indices in by_worker.items()
            if w not in called
        }
        silence = silence_deadline(self.evaluation_seconds)
        if rest:
            outcome: CallResults = self.actors.call_all(rest, silence)
            replies += outcome.results.values()
            lost |= outcome.lost
        abandoned: set[str] = set()
        watch = _Watch(self, routes, silence, lost, abandoned)
        results, unanswered, read_cpu = receive_all(sent, watch, WATCH_SECONDS, deadline)
        stats["message_cpu"] += read_cpu
        stats["messages"] += len(results)
        for reply in results.values():
            replies.append(reply)
            lost.update(reply.lost)
            self.channels.unrelayed.update(reply.unreached)
            stats["relayed"] += reply.relayed
            stats["relay_cpu"] += reply.relay_cpu
        for worker, why in unanswered.items():
            if worker not in abandoned:
                lost[worker] = why
        self.channels.reopen(abandoned - set(lost))
        return replies, lost

    def _send(
        self,
        by_worker: dict[str, list[int]],
        routes: dict[str, list[str]],
        request: EvaluationRequest,
        stats: dict[str, float],
    ) -> tuple[dict[str, Channel], dict[str, str]]:
        """Send the evaluation down the channels of the hosts ``routes`` names (each with
        the hosts it relays to): the channels sent on, and the hosts found lost."""
        lost: dict[str, str] = {}
        shared = pack(request)  # the coefficients, pickled once for every host
        started = time.thread_time()  # from here on, the driver's time per message
        sent: dict[str, Channel] = {}
        for worker, relayed in routes.items():
            forward = [Relay(w, *self.channels.addresses[w], by_worker[w]) for w in relayed]
            try:
                self.channels[worker].send(pack(by_worker[worker]), pack(forward), shared)
                sent[worker] = self.channels[worker]
            except OSError as exc:  # the host's worker died since the last call
                lost[worker] = f"{type(exc).__name__}: {exc}"
        stats["message_cpu"] += time.thread_time() - started
        return sent, lost

    def silent(
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
        infos, now = worker_infos(self.client), time.time()
        stale = {
            w
            for w in pending | {w for r in pending for w in routes[r]}
            if heartbeats_stale(float(infos.get(w, {}).get("last_seen", 0.0)), now, waited)
        }
        stop: dict[str, str] = {}
        for relaying in pending:
            behind = [w for w in routes[relaying] if w in stale]
            if relaying in stale or (not routes[relaying] and not stale):
                why = silence_reason(waited, deadline, stale=relaying in stale)
                stop[relaying] = lost[relaying] = self._give_up(relaying, why)
            elif behind or not stale:  # waits on a silent host, or on its slow group
                for worker in behind:
                    why = f"no heartbeat in {waited:.1f} s (deadline {deadline:.1f} s)"
                    lost[worker] = self._give_up(worker, why)
                if not behind:
                    self.channels.unrelayed.update(routes[relaying])
                abandoned.add(relaying)
                stop[relaying] = "it waits on a silent host"
        return stop

    def _give_up(self, worker: str, why: str) -> str:
        """Give ``worker`` up for this fit: its blocks go elsewhere, and it gets none again.
        Returns the reason recorded."""
        reason = f"given up: {why}"
        if self.log is not None:
            self.log(f"{worker} {reason}; its blocks load on the live workers")
        self.placement.give_up(worker, reason, len(self.evaluation_seconds) + 1, time.time())
        return reason

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Every row's predicted class index, computed where its block lives (blocks of a
        worker lost meanwhile are loaded again elsewhere first)."""
        self.wait_loaded()
        codes: dict[int, np.ndarray] = {}
        while len(codes) < len(self.sources):
            calls = {
                w: HostCall(BlockHost.predict, (indices, coef, intercept))
                for w, indices in self.placement.by_worker(codes).items()
            }
            outcome = self.actors.call_all(calls)
            for result in outcome.results.values():
                codes.update(result)
            self._reload_lost(outcome.lost)
        return np.concatenate([codes[i] for i in range(len(self.sources))])

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "key": self._key(i),
                "start": source.start,
                "rows": source.n_rows,
                "worker": self.placement[i],
                "copies": 1,
                "calls": self.channels.describe(self.placement[i]),
            }
            for i, source in enumerate(self.sources)
        ]

    def release(self) -> None:
        """Drop the blocks from the workers' memory (the host actors end)."""
        hosts = self.actors.release()
        self.channels.close_all()
        if hosts:
            with contextlib.suppress(Exception):  # best effort: the cluster may be gone
                self.client.cancel(hosts)


class _Watch:
    """What an evaluation does while it waits for the channels' replies (called by
    `distrib.parallel.blocks.channel.receive_all` every `WATCH_SECONDS`): stop waiting on
    hosts whose worker left, say once when the wait runs long, and give up silent hosts
    past the deadline. Returns the hosts to stop waiting on (worker -> why)."""

    def __init__(
        self,
        blocks: ClusterBlocks,
        routes: dict[str, list[str]],
        silence: float | None,
        lost: dict[str, str],
        abandoned: set[str],
    ) -> None:
        self.blocks = blocks
        self.routes = routes
        self.silence = silence
        self.lost = lost
        self.abandoned = abandoned
        self.asked = time.monotonic()
        self.said = False

    def __call__(self, pending: set[str]) -> dict[str, str]:
        stop = self._gone(pending)
        waited = time.monotonic() - self.asked
        if self.silence is None:
            return stop
        if not self.said and waited > self.silence / 4 and self.blocks.log is not None:
            self.said = True
            self._say_waiting(pending, waited)
        if waited > self.silence and pending - set(stop):
            stop |= self.blocks.silent(
                pending - set(stop), self.routes, waited, self.silence, self.lost, self.abandoned
            )
        return stop

    def _gone(self, pending: set[str]) -> dict[str, str]:
        """Hosts whose worker left, and relaying hosts that wait on one."""
        routes = self.routes
        gone = self.blocks.actors.gone(pending | {w for r in pending for w in routes[r]})
        stop = {r: gone[r] for r in pending if r in gone}
        for relaying in pending - set(stop):
            for worker in routes[relaying]:
                if worker in gone:  # stop waiting: its host would wait on it forever
                    self.lost[worker] = gone[worker]
                    self.abandoned.add(relaying)
                    stop[relaying] = f"{worker} left"
        return stop

    def _say_waiting(self, pending: set[str], waited: float) -> None:
        blocks, routes = self.blocks, self.routes
        typical = float(np.median(blocks.evaluation_seconds))
        hosts = ", ".join(
            w + (f" (relaying for {', '.join(routes[w])})" if routes.get(w) else "")
            for w in sorted(pending)
        )
        assert blocks.log is not None and self.silence is not None
        blocks.log(
            f"evaluation {len(blocks.evaluation_seconds) + 1}: waiting {waited:.1f} s on "
            f"{hosts} (evaluations take {typical:.2f} s; giving up on a silent host "
            f"at {self.silence:.1f} s)"
        )
