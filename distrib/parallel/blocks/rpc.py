"""A fit's block hosts as Dask actors, called through distributed's RPC.

`HostActors` starts one `distrib.parallel.blocks.host.BlockHost` actor per worker and
calls its methods through the worker's ``actor_execute`` handler (the way every host is
reached before its direct channel opens, and on clusters where the driver cannot reach the
hosts' ports). A call returns its result; a worker that leaves (or that answers nothing past
the silence deadline, and is given up) comes back in `CallResults.lost`, never as a result.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distrib.parallel.blocks.host import WATCH_SECONDS, BlockHost
from distrib.parallel.blocks.sources import HostCall
from distrib.parallel.cluster import worker_infos
from distrib.parallel.deadlines import heartbeats_stale, silence_reason


class HostLost(Exception):
    """A host's worker left (or was given up) during a call."""

    def __init__(self, worker: str, why: str) -> None:
        super().__init__(f"{worker}: {why}")
        self.worker = worker
        self.why = why


@dataclass
class CallResults:
    """What calls to several hosts gave: worker -> result, and worker -> why it was lost."""

    results: dict[str, Any] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)


class HostActors:
    """The `BlockHost` actors of one fit, one per worker, called through distributed.

    Parameters
    ----------
    client : distributed.Client
    run_id : str
        Names the fit in the actors' keys.
    timeout : float, optional
        Seconds one round of calls may take before the fit fails.
    give_up : callable
        ``give_up(worker, why)``: a host silent past its deadline is given up for the fit;
        returns the reason to record.
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        timeout: float | None,
        give_up: Callable[[str, str], str],
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.timeout = timeout
        self.give_up = give_up
        self.hosts: dict[str, Any] = {}  # worker -> the future of its BlockHost actor

    def start(self, worker: str) -> Any:
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

    def key(self, worker: str) -> str:
        """The Dask key of ``worker``'s host actor."""
        return str(self.hosts[worker].key)

    def forget(self, worker: str) -> None:
        """Forget ``worker``'s host (its actor is cancelled)."""
        host = self.hosts.pop(worker, None)
        if host is not None:
            self.client.cancel([host])

    def release(self) -> list[Any]:
        """Forget every host; return their futures, to cancel."""
        hosts, self.hosts = list(self.hosts.values()), {}
        return hosts

    def call_all(self, calls: dict[str, HostCall], silence: float | None = None) -> CallResults:
        """One call per worker's host, at once. A host that answers nothing for
        ``silence`` seconds is given up."""
        answers = self.client.sync(self._call_all, calls, silence)
        outcome = CallResults()
        for worker, (result, why) in answers.items():
            if why is None:
                outcome.results[worker] = result
            else:
                outcome.lost[worker] = why
        return outcome

    async def _call_all(
        self, calls: dict[str, HostCall], silence: float | None
    ) -> dict[str, tuple[Any, str | None]]:
        workers = list(calls)
        # every call ends before an error is raised: none is left running (and failing
        # unheard when the cluster closes)
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(self._answer(w, call, silence) for w, call in calls.items()),
                return_exceptions=True,
            ),
            self.timeout,
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return dict(zip(workers, answers, strict=True))  # type: ignore[arg-type]

    async def _answer(
        self, worker: str, call: HostCall, silence: float | None
    ) -> tuple[Any, str | None]:
        try:
            return await self._call(worker, call, silence), None
        except HostLost as lost:
            return None, lost.why

    async def _call(self, worker: str, call: HostCall, silence: float | None) -> Any:
        """Run ``call`` on ``worker``'s host; raises `HostLost` if the worker leaves, or if
        it answers nothing for ``silence`` seconds (then it is given up)."""
        from distributed.protocol import to_serialize

        host = self.hosts[worker]
        await self._wait_started(worker, host)
        asked = time.monotonic()
        pending = asyncio.ensure_future(
            self.client.rpc(worker).actor_execute(
                actor=host.key,
                function=call.name,
                args=[to_serialize(a) for a in call.args],
                kwargs={k: to_serialize(v) for k, v in call.kwargs.items()},
            )
        )
        while True:
            done, _ = await asyncio.wait({pending}, timeout=WATCH_SECONDS)
            try:
                gone = self.gone({worker})
            except OSError:  # the scheduler is gone
                pending.cancel()
                raise
            if done:
                try:
                    response = pending.result()
                except OSError as exc:  # the connection broke: the worker died mid-call
                    raise HostLost(worker, f"{type(exc).__name__}: {exc}") from exc
                if response["status"] != "OK":
                    raise response["exception"]
                return response["result"]
            if gone:  # the scheduler saw it go
                pending.cancel()
                raise HostLost(worker, gone[worker])
            waited = time.monotonic() - asked
            if silence is not None and waited > silence:
                pending.cancel()
                identity = await self.client.scheduler.identity(n_workers=-1)
                info = identity.get("workers", {}).get(worker, {})
                last_seen = float(info.get("last_seen", 0.0))
                stale = heartbeats_stale(last_seen, time.time(), waited)
                why = silence_reason(waited, silence, stale=stale)
                raise HostLost(worker, self.give_up(worker, why))

    def check_scheduler(self) -> None:
        """Raise OSError if the client has lost its scheduler (the direct channels work
        without it, but nothing could replace a lost worker)."""
        if self.client.status != "running":
            raise OSError(f"the client lost its scheduler (client status: {self.client.status})")

    def gone(self, workers: set[str]) -> dict[str, str]:
        """Which of ``workers`` the scheduler saw leave (their host's task changed)."""
        self.check_scheduler()
        status = {w: self.hosts[w].status for w in workers}
        return {
            w: f"its actor's task became {s}"
            for w, s in status.items()
            if s not in ("finished", "pending")
        }

    async def _wait_started(self, worker: str, host: Any) -> None:
        """Wait for ``worker``'s host actor to start; raises `HostLost` if it cannot (its
        worker left: the actor's task, bound to that worker, would wait for it forever)."""
        checked = 0.0
        while host.status == "pending":
            await asyncio.sleep(WATCH_SECONDS / 5)
            checked += WATCH_SECONDS / 5
            if checked >= 1.0:  # about once a second, ask the scheduler
                checked = 0.0
                identity = await self.client.scheduler.identity(n_workers=-1)
                if worker not in identity.get("workers", {}):
                    raise HostLost(worker, "it left before its actor started")
        if host.status != "finished":
            raise HostLost(worker, f"its actor's task became {host.status}")
