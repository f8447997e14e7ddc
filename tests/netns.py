"""Hosts as Linux network namespaces on this machine, for tests of network failures.

A switch namespace holds a bridge; each host is a namespace with one veth pair, its end
``eth0`` in the host with an address of a private range used inside these namespaces only,
the other end a port of the bridge. Setting a host's port down in the switch cuts the host
off silently (its packets dropped: no FIN, no RST), as a failed link or a partition would;
setting it up heals it. Processes run in a host with ``ip netns exec``, which also gives
them a mount namespace of their own, where folders can be hidden under a tmpfs (a host that
cannot see the driver's files). Everything made is removed by `close`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: The subnet of the hosts (10.231.0.0/24): it exists only inside these namespaces.
SUBNET = "10.231.0"


def available() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Hosts:
    """Named hosts on one bridge; see the module docstring.

    Parameters
    ----------
    workdir : path
        Where the processes' logs go.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = f"dt{os.getpid() % 100000}"  # interface names hold 15 characters at most
        self.switch = f"{self.tag}-sw"
        self.addresses: dict[str, str] = {}
        self._namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        _ip("netns", "add", self.switch)
        self._namespaces.append(self.switch)
        self._in(self.switch, "ip", "link", "set", "lo", "up")
        self._in(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "ip", "link", "set", "br0", "up")

    def _in(self, namespace: str, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", namespace, *argv], check=True,
                       capture_output=True, timeout=30)  # fmt: skip

    def _port(self, name: str) -> str:
        return f"{self.tag}p{list(self.addresses).index(name)}"

    def add(self, name: str) -> str:
        """A new host named ``name`` on the bridge; its address."""
        index = len(self.addresses)
        namespace, address = f"{self.tag}-{name}", f"{SUBNET}.{index + 1}"
        inside, port = f"{self.tag}h{index}", f"{self.tag}p{index}"
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("link", "add", inside, "type", "veth", "peer", "name", port)
        _ip("link", "set", inside, "netns", namespace)
        _ip("link", "set", port, "netns", self.switch)
        self._in(namespace, "ip", "link", "set", inside, "name", "eth0")
        self._in(namespace, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        self._in(namespace, "ip", "link", "set", "eth0", "up")
        self._in(namespace, "ip", "link", "set", "lo", "up")
        self._in(self.switch, "ip", "link", "set", port, "master", "br0")
        self._in(self.switch, "ip", "link", "set", port, "up")
        self.addresses[name] = address
        return address

    def command(self, host: str, argv: list[str], hide: tuple[Path, ...] = ()) -> list[str]:
        """``argv`` as run in ``host``, with the folders ``hide`` covered by empty tmpfs."""
        mounts = "".join(f"mount -t tmpfs distrib-hidden {p} && " for p in hide)
        script = f'{mounts}exec "$@"'
        return ["ip", "netns", "exec", f"{self.tag}-{host}", "sh", "-c", script, "sh", *argv]

    def start(
        self, host: str, argv: list[str], hide: tuple[Path, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """A process in ``host``, in a session of its own (its output in ``workdir``),
        stopped with its children by `close`."""
        log = open(self.workdir / f"{host}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(self.command(host, argv, hide), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def python(self, *args: str) -> list[str]:
        """This interpreter with ``args`` (``-m dask scheduler ...``)."""
        return [sys.executable, *args]

    def cut(self, host: str) -> None:
        """Drop every packet to and from ``host`` from now on (its switch port down)."""
        self._in(self.switch, "ip", "link", "set", self._port(host), "down")

    def heal(self, host: str) -> None:
        self._in(self.switch, "ip", "link", "set", self._port(host), "up")

    def close(self) -> None:
        """Stop every process started here and remove every namespace and link."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the process and its children
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for namespace in reversed(self._namespaces):  # the veth pairs go with them
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self._namespaces.clear()
