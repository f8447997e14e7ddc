"""One evaluation of a fit's blocks over their hosts (`EvaluationRound`).

Requests go out on the direct channels first (to the relaying hosts, with the hosts each
relays to: `distrib.parallel.blocks.partial_sums.relay_routes`), then the other hosts are
called through distributed's RPC, then the channels' replies are read. While it waits, the
round stops waiting on hosts whose worker left, says once when the wait runs long, and past
the silence deadline (`distrib.parallel.deadlines.silence_deadline`) gives up the hosts that
answer nothing: the runner reloads their blocks elsewhere and asks again for what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from distrib.parallel.blocks.channel import Channel, pack, receive_all
from distrib.parallel.blocks.direct import DirectChannels
from distrib.parallel.blocks.host import (
    WATCH_SECONDS,
    BlockHost,
    EvaluationRequest,
    HostReply,
    Relay,
)
from distrib.parallel.blocks.partial_sums import SumTree, relay_routes
from distrib.parallel.blocks.rpc import CallResults, HostActors
from distrib.parallel.blocks.sources import HostCall
from distrib.parallel.cluster import worker_infos
from distrib.parallel.deadlines import heartbeats_stale, silence_deadline, silence_reason


class RoundRunner(Protocol):
    """What a round reads of its runner (`distrib.parallel.blocks.runner.ClusterBlocks`)."""

    client: Any
    actors: HostActors
    channels: DirectChannels
    tree: SumTree | None
    timeout: float | None
    evaluation_seconds: list[float]
    log: Callable[[str], None] | None

    def give_up(self, worker: str, why: str) -> str:
        """Give ``worker`` up for the fit; the reason recorded."""
        ...


class EvaluationRound:
    """Evaluates blocks on their hosts, one round at a time, for ``blocks``' fit.

    Parameters
    ----------
    blocks : RoundRunner
    relay : bool
        Let the first host of each group relay the evaluation to the group's others.
    """

    def __init__(self, blocks: RoundRunner, relay: bool = True) -> None:
        self.blocks = blocks
        self.relay = relay

    def routes(self, by_worker: dict[str, list[int]]) -> dict[str, list[str]]:
        """Hosts called over their channel -> the hosts each relays the evaluation to."""
        direct = [w for w in by_worker if w in self.blocks.channels]
        if not self.relay or self.blocks.tree is None:
            return {w: [] for w in direct}
        unrelayed = self.blocks.channels.unrelayed
        routes = relay_routes(
            self.blocks.tree, by_worker, [w for w in direct if w not in unrelayed]
        )
        return routes | {w: [] for w in direct if w in unrelayed}

    def run(
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
        routes = self.routes(by_worker)
        sent, lost = self._send(by_worker, routes, request, stats)
        deadline = None if self.blocks.timeout is None else time.monotonic() + self.blocks.timeout
        replies: list[HostReply] = []
        called = {w for relayed in routes.values() for w in relayed} | set(routes)
        rest = {
            w: HostCall(BlockHost.evaluate, (indices, request))
            for w, indices in by_worker.items()
            if w not in called
        }
        silence = silence_deadline(self.blocks.evaluation_seconds)
        if rest:
            outcome: CallResults = self.blocks.actors.call_all(rest, silence)
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
            self.blocks.channels.unrelayed.update(reply.unreached)
            stats["relayed"] += reply.relayed
            stats["relay_cpu"] += reply.relay_cpu
        for worker, why in unanswered.items():
            if worker not in abandoned:
                lost[worker] = why
        self.blocks.channels.reopen(abandoned - set(lost))
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
            forward = [Relay(w, *self.blocks.channels.addresses[w], by_worker[w]) for w in relayed]
            try:
                self.blocks.channels[worker].send(pack(by_worker[worker]), pack(forward), shared)
                sent[worker] = self.blocks.channels[worker]
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
        infos, now = worker_infos(self.blocks.client), time.time()
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
                stop[relaying] = lost[relaying] = self.blocks.give_up(relaying, why)
            elif behind or not stale:  # waits on a silent host, or on its slow group
                for worker in behind:
                    why = f"no heartbeat in {waited:.1f} s (deadline {deadline:.1f} s)"
                    lost[worker] = self.blocks.give_up(worker, why)
                if not behind:
                    self.blocks.channels.unrelayed.update(routes[relaying])
                abandoned.add(relaying)
                stop[relaying] = "it waits on a silent host"
        return stop


class _Watch:
    """What an evaluation does while it waits for the channels' replies (called by
    `distrib.parallel.blocks.channel.receive_all` every `WATCH_SECONDS`): stop waiting on
    hosts whose worker left, say once when the wait runs long, and give up silent hosts
    past the deadline. Returns the hosts to stop waiting on (worker -> why)."""

    def __init__(
        self,
        round_: EvaluationRound,
        routes: dict[str, list[str]],
        silence: float,
        lost: dict[str, str],
        abandoned: set[str],
    ) -> None:
        self.round = round_
        self.blocks = round_.blocks
        self.routes = routes
        self.silence = silence
        self.lost = lost
        self.abandoned = abandoned
        self.asked = time.monotonic()
        self.said = False

    def __call__(self, pending: set[str]) -> dict[str, str]:
        stop = self._gone(pending)
        waited = time.monotonic() - self.asked
        if not self.said and waited > self.silence / 4 and self.blocks.log is not None:
            self.said = True
            self._say_waiting(pending, waited)
        if waited > self.silence and pending - set(stop):
            stop |= self.round.silent(
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
        done = blocks.evaluation_seconds
        pace = f"evaluations take {np.median(done):.2f} s" if done else "the first evaluation"
        hosts = ", ".join(
            w + (f" (relaying for {', '.join(routes[w])})" if routes.get(w) else "")
            for w in sorted(pending)
        )
        assert blocks.log is not None
        blocks.log(
            f"evaluation {len(blocks.evaluation_seconds) + 1}: waiting {waited:.1f} s on "
            f"{hosts} ({pace}; giving up on a silent host "
            f"at {self.silence:.1f} s)"
        )
