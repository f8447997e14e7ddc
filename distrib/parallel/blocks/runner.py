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
from distrib.linear.newton import RowSample, joined
from distrib.parallel.blocks.block import Evaluation
from distrib.parallel.blocks.direct import DirectChannels
from distrib.parallel.blocks.host import (
    BlockHost,
    EvaluationRequest,
)
from distrib.parallel.blocks.partial_sums import (
    Node,
    PartialSum,
    SumTree,
    covered,
    sum_tree,
    total,
)
from distrib.parallel.blocks.placement import Placement, slots_of
from distrib.parallel.blocks.rounds import EvaluationRound
from distrib.parallel.blocks.rpc import HostActors
from distrib.parallel.blocks.sources import (
    BlockSource,
    ChunkSource,
    HostCall,
    chunk_sources,
    rows_sources,
)
from distrib.parallel.cluster import worker_infos
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

    Build it with `from_training_data` or `from_dask_array` (they pass every setting on);
    `wait_loaded` loads the blocks.

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
        Told when an evaluation waits on a host for longer than expected, or gives it up.
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
        self.tree = tree
        self.sources = sources
        self.classes = np.asarray(classes)
        self.run_id = run_id
        self.timeout = timeout
        self.log = log
        self.placement = Placement(len(sources), slots)
        self.actors = HostActors(client, run_id, timeout, self.give_up)
        self.channels = DirectChannels(self.actors, enabled=direct)
        self.evaluation_seconds: list[float] = []
        self._round = EvaluationRound(self, relay=relay)
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
            replies, lost = self._round.run(self.placement.by_worker(done), request, stats)
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

    def give_up(self, worker: str, why: str) -> str:
        """Give ``worker`` up for this fit: its blocks go elsewhere, and it gets none again.
        Returns the reason recorded."""
        reason = f"given up: {why}"
        if self.log is not None:
            self.log(f"{worker} {reason}; its blocks load on the live workers")
        self.placement.give_up(worker, reason, len(self.evaluation_seconds) + 1, time.time())
        return reason

    def _per_block(self, method: Callable[..., dict[int, Any]], *args: Any) -> list[Any]:
        """Each block's answer to ``method(indices, *args)`` of its host, in block order
        (blocks of a lost worker are loaded again elsewhere first)."""
        self.wait_loaded()
        found: dict[int, Any] = {}
        while len(found) < len(self.sources):
            calls = {
                w: HostCall(method, (indices, *args))
                for w, indices in self.placement.by_worker(found).items()
            }
            outcome = self.actors.call_all(calls)
            for result in outcome.results.values():
                found.update(result)
            self._reload_lost(outcome.lost)
        return [found[i] for i in range(len(self.sources))]

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Every row's predicted class index, computed where its block lives."""
        return np.concatenate(self._per_block(BlockHost.predict, coef, intercept))

    def sample(self, stride: int) -> RowSample:  # every stride-th row, taken where it lives
        return joined(self._per_block(BlockHost.sample, stride))

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
