"""The driver's direct channels to a fit's block hosts.

Each host opens a TCP channel of its own (`distrib.parallel.blocks.channel`: ~0.05 ms a
round trip, against ~1.2 ms through distributed's RPC); the driver connects to it once, and
calls the host over it at every evaluation. A host that cannot open one, or whose channel
the driver cannot reach, is called through distributed's RPC instead
(`distrib.parallel.blocks.rpc`), and so is every host when the channels are switched off.
"""

from __future__ import annotations

from distrib.parallel.blocks.channel import Channel
from distrib.parallel.blocks.host import BlockHost, client_tls_context
from distrib.parallel.blocks.rpc import HostActors
from distrib.parallel.blocks.sources import HostCall


class DirectChannels:
    """The open channels to a fit's hosts, and the hosts that have none.

    Parameters
    ----------
    actors : HostActors
        The hosts (asked, through distributed, to open their channels).
    enabled : bool
        False: no channel is opened; every host is called through distributed's RPC.
    """

    def __init__(self, actors: HostActors, enabled: bool = True) -> None:
        self.actors = actors
        self.enabled = enabled
        self.channels: dict[str, Channel] = {}  # worker -> its host's direct channel
        self.addresses: dict[str, tuple[tuple[str, int], bytes]] = {}  # ... its address, token
        #: Hosts that a relaying host could not reach (called by the driver itself).
        self.unrelayed: set[str] = set()
        self._no_channel: set[str] = set()  # hosts (actor keys) that could not open one

    def __len__(self) -> int:
        return len(self.channels)

    def __contains__(self, worker: str) -> bool:
        return worker in self.channels

    def __getitem__(self, worker: str) -> Channel:
        return self.channels[worker]

    def open(self, workers: list[str]) -> None:
        """Connect to the channel of each of these workers' hosts that has none yet (a host
        that cannot open one, or cannot be reached, is called through Dask)."""
        if not self.enabled:
            return
        tried = set(self.channels)
        todo = [w for w in workers if w not in tried and self.actors.key(w) not in self._no_channel]
        if not todo:
            return
        opened = self.actors.call_all({w: HostCall(BlockHost.channel) for w in todo})
        for worker, answer in opened.results.items():  # a lost one: the next call finds it
            try:
                if answer is None:
                    raise OSError("no channel")
                host, port, token = answer
                tls = worker.startswith("tls://")
                context = client_tls_context(self.actors.client) if tls else None
                self.channels[worker] = Channel((host, port), token, ssl_context=context)
                self.addresses[worker] = ((host, port), token)
            except (OSError, ValueError):
                self._no_channel.add(self.actors.key(worker))

    def close(self, worker: str) -> None:
        """Close ``worker``'s channel, if it has one."""
        channel = self.channels.pop(worker, None)
        if channel is not None:
            channel.close()
        self.addresses.pop(worker, None)

    def reopen(self, workers: set[str]) -> None:
        """A new channel to each of these hosts (the old one was closed mid-request)."""
        for worker in workers:
            self.close(worker)
        self.open(sorted(workers))

    def close_all(self) -> None:
        """Close every channel (the hosts' channel threads end)."""
        for channel in self.channels.values():
            channel.close()
        self.channels = {}
        self.addresses = {}

    def describe(self, worker: str) -> str:
        """How ``worker``'s host is called."""
        return "direct channel" if worker in self.channels else "dask rpc"
