"""A direct TCP channel from the driver to one block host, for the evaluations of a fit.

distributed's RPC (``actor_execute``) costs ~1.2 ms per call and worker here: messages go
through msgpack, the worker's event loop and a hop to the actor's thread, and the driver
waits on its own event loop thread. A multinomial fit makes ~100 such rounds of one small
request (the coefficients, 63 KB) and one small reply (a gradient) per worker, so that cost
was most of its coordination. Over this channel a round trip costs ~0.05 ms: the host's
thread reads the request from its socket, evaluates its blocks and writes the reply.

The host opens the channel on its worker's own address (when the driver cannot reach the
port, evaluations go through distributed as before) and hands its address and a random token
to the driver through Dask (`BlockHost.channel`). On a TLS cluster the channel speaks TLS
with the worker's certificate and requires the other end to present one of the cluster's CA;
the token follows, inside TLS. The
first thing a connection sends is the token; the host drops a connection that does not
within `TOKEN_SECONDS`. Each new connection proves itself (handshake, token) in a thread of
its own, so idle or hostile connections hold up no other. The first connection to present
the token is the driver's; hosts the driver asks to relay evaluations to this one
(`distrib.parallel.blocks.partial_sums`) connect with the same token while it stays. The channel
lives as long as the driver's connection: when the driver closes it or goes away, the host's
threads end.

Frames are an 8-byte length, then one or more pickles back to back. A request's pickles are
the arguments of the host's handler (the driver pickles the coefficients once per evaluation
for all hosts, `pack`); a reply is one pickle, ``(True, result)`` or ``(False, exception)``.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import itertools
import pickle
import secrets
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

TOKEN_BYTES = 32
_LENGTH = struct.Struct("!Q")
#: Seconds a host waits for its driver to connect before it closes the channel.
ACCEPT_SECONDS = 120.0
#: Seconds a new connection has to present the token (after its TLS handshake, if any).
TOKEN_SECONDS = 5.0
#: Connections proving themselves at once; more are closed as they come.
MAX_PENDING = 64


def pack(value: Any) -> bytes:
    """``value`` as one pickle of a frame (`Channel.send`)."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _frame(*pickles: bytes) -> bytes:
    return _LENGTH.pack(sum(map(len, pickles))) + b"".join(pickles)


def _send_parts(sock: socket.socket, parts: list[bytes]) -> None:
    """Send ``parts`` back to back without joining them (a 63 KB copy per host; TLS
    sockets have no ``sendmsg``: joined there)."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def _unpack_all(body: bytes) -> list[Any]:
    """Every pickle of a frame's body, in order."""
    stream = io.BytesIO(body)
    values = []
    while stream.tell() < len(body):
        values.append(pickle.load(stream))
    return values


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from ``conn``; None if it closes first."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = conn.recv_into(view[got:])
        if not n:
            return None
        got += n
    return bytes(buffer)


class ChannelServer:
    """The host's end: answers the requests of its driver, and of the hosts the driver asks
    to relay evaluations to this one.

    The first connection accepted of those that present the token is the owner's (the
    driver's; the connections prove themselves at once, each in its own thread, so the
    order they finish in is not the order they came in); more may join while it stays
    (hosts relaying for the driver, given the token by it). When the owner's connection
    closes, the server and every other connection close.

    Parameters
    ----------
    host : str
        The interface to listen on (the worker's own address).
    handler : callable
        Called with each request's values, and ``upstream_open``: a function telling
        whether the requesting connection is still open (a handler that waits on others
        checks it). Its result (or exception) is the reply.
    ssl_context : ssl.SSLContext, optional
        Speak TLS with it (a TLS cluster's worker context: the connecting party must
        present a certificate of the cluster's CA), before the token.
    """

    def __init__(
        self,
        host: str,
        handler: Callable[..., Any],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ssl = ssl_context
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._handler: Callable[..., Any] | None = handler
        self._listener = socket.create_server((host, 0))
        self.address: tuple[str, int] = (host, self._listener.getsockname()[1])
        self._connections: list[socket.socket] = []
        self._owner: int | None = None  # the owner's place in the order of arrival
        self._lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._closed = threading.Event()
        threading.Thread(target=self._accept_all, name="distrib-channel", daemon=True).start()

    def _authenticated(self, conn: socket.socket) -> socket.socket | None:
        """The connection (over TLS where the server speaks it) if it presents the token
        within `TOKEN_SECONDS`."""
        try:
            conn.settimeout(TOKEN_SECONDS)
            if self._ssl is not None:
                conn = self._ssl.wrap_socket(conn, server_side=True)
            token = _recv_exact(conn, TOKEN_BYTES)
            conn.settimeout(None)
        except (OSError, ssl.SSLError):
            conn.close()
            return None
        if token is not None and hmac.compare_digest(token, self.token):
            return conn
        conn.close()
        return None

    def _accept_all(self) -> None:
        """Accept connections while the server is open; the owner must come within
        `ACCEPT_SECONDS`. Each connection proves itself in a thread of its own (TLS
        handshake, token), so none can hold up another: at most `MAX_PENDING` at once, more
        are closed at once."""
        deadline = time.monotonic() + ACCEPT_SECONDS
        arrivals = itertools.count()
        with self._listener:
            self._listener.settimeout(0.25)
            while not self._closed.is_set():
                with self._lock:
                    if self._owner is None and time.monotonic() > deadline:
                        break  # nobody came: close (under the lock: no owner joins now)
                try:
                    accepted, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not self._pending.acquire(blocking=False):
                    accepted.close()
                    continue
                arrival = next(arrivals)
                threading.Thread(
                    target=self._admit,
                    args=(accepted, arrival),
                    name="distrib-channel",
                    daemon=True,
                ).start()
        with self._lock:
            nobody = self._owner is None
        if nobody:
            self.close()

    def _admit(self, accepted: socket.socket, arrival: int) -> None:
        """Authenticate one connection (``arrival``: its place in the order they came in);
        serve it if it proves itself (the earliest to come of those that do is the
        owner's)."""
        try:
            conn = self._authenticated(accepted)
        finally:
            self._pending.release()
        if conn is None:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed.is_set():
                conn.close()
                return
            if self._owner is None or arrival < self._owner:
                self._owner = arrival
            self._connections.append(conn)
        self._serve(conn, arrival)

    def _serve(self, conn: socket.socket, arrival: int) -> None:
        def upstream_open() -> bool:
            return _is_open(conn)

        with conn:
            while (handler := self._handler) is not None:
                try:
                    header = _recv_exact(conn, _LENGTH.size)
                    body = header and _recv_exact(conn, _LENGTH.unpack(header)[0])
                except OSError:
                    break
                if not body:
                    break
                try:
                    reply: tuple[bool, Any] = (
                        True,
                        handler(*_unpack_all(body), upstream_open=upstream_open),
                    )
                except Exception as exc:  # the caller raises it
                    reply = (False, exc)
                try:
                    conn.sendall(_frame(pack(reply)))
                except OSError:
                    break
        with self._lock:
            owner = arrival == self._owner
        if owner:
            self.close()

    def close(self) -> None:
        """Stop accepting and close every connection (their threads end)."""
        with self._lock:
            self._closed.set()
            self._handler = None  # nothing of the host stays referenced by the threads
            connections = list(self._connections)
        for conn in connections:
            _shut(conn)


def _shut(sock: socket.socket) -> None:
    """Shut a socket down: a thread blocked reading it (or selecting on it) wakes up."""
    with contextlib.suppress(OSError):  # not connected any more
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _is_open(conn: socket.socket) -> bool:
    """Whether the peer of ``conn`` has not closed it, asked while it waits for a reply (so
    anything readable means it closed; over plain TCP a pending request counts as open)."""
    try:
        if not select.select([conn], [], [], 0)[0]:
            return True
        if isinstance(conn, ssl.SSLSocket):  # no peeking through TLS
            return False
        return bool(conn.recv(1, socket.MSG_PEEK))
    except (OSError, ValueError):
        return False


class Channel:
    """The driver's end of one host's channel.

    Parameters
    ----------
    address : (str, int)
        Where the host listens.
    token : bytes
        The host's token (`ChannelServer.token`).
    timeout : float
        Seconds to connect, and to send one request.
    ssl_context : ssl.SSLContext, optional
        For a host that speaks TLS: a context with this party's certificate.
    """

    def __init__(
        self,
        address: tuple[str, int],
        token: bytes,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock)
            except ssl.SSLError:
                sock.close()
                raise
        self.sock = sock
        self.sock.sendall(token)
        self._buffer = bytearray(1 << 17)  # a reply is read into this, grown as needed
        self._got = 0

    def send(self, *pickles: bytes) -> None:
        """Send one request: the handler's arguments, each a `pack` (raises OSError if the
        host is gone)."""
        self._got = 0
        _send_parts(self.sock, [_LENGTH.pack(sum(map(len, pickles))), *pickles])

    def read_some(self) -> tuple[bool, Any] | None:
        """Read what has arrived (call when the socket is readable): the reply once
        whole, else None. Raises ConnectionError if the host closed the channel."""
        while True:
            reply = self._read_once()
            # TLS may hold decrypted bytes the socket no longer signals: read them now
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
            if reply is not None or not pending:
                return reply

    def _read_once(self) -> tuple[bool, Any] | None:
        if self._got >= _LENGTH.size:
            needed = _LENGTH.size + _LENGTH.unpack_from(self._buffer)[0]
            if len(self._buffer) < needed:
                self._buffer.extend(bytes(needed - len(self._buffer)))
        n = self.sock.recv_into(memoryview(self._buffer)[self._got :])
        if not n:
            raise ConnectionError("the block host closed its channel")
        self._got += n
        if self._got < _LENGTH.size:
            return None
        size = _LENGTH.unpack_from(self._buffer)[0]
        if self._got < _LENGTH.size + size:
            return None
        with memoryview(self._buffer) as view:
            reply: tuple[bool, Any] = pickle.loads(view[_LENGTH.size : _LENGTH.size + size])
        self._got = 0
        return reply

    def close(self) -> None:
        _shut(self.sock)


def receive_all(
    channels: dict[str, Channel],
    check: Callable[[set[str]], dict[str, str]],
    every: float,
    deadline: float | None,
) -> tuple[dict[str, Any], dict[str, str], float]:
    """Wait for one reply on each channel (keyed by worker).

    Every ``every`` seconds, ``check(pending)`` names the pending workers known lost
    (worker -> why). Returns (worker -> result, worker -> why lost, this thread's CPU
    seconds spent reading the replies); a host's exception is raised here; TimeoutError
    after ``deadline`` (`time.monotonic`).
    """
    results: dict[str, Any] = {}
    lost: dict[str, str] = {}
    cpu = 0.0
    checked = time.monotonic()
    with selectors.DefaultSelector() as selector:
        for worker, channel in channels.items():
            selector.register(channel.sock, selectors.EVENT_READ, worker)
        while len(results) + len(lost) < len(channels):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("a block evaluation took longer than the fit's timeout")
            for key, _ in selector.select(timeout=every):
                worker = key.data
                started = time.thread_time()
                try:
                    reply = channels[worker].read_some()
                except OSError as exc:
                    lost[worker] = f"{type(exc).__name__}: {exc}"
                    selector.unregister(key.fileobj)
                    continue
                finally:
                    cpu += time.thread_time() - started
                if reply is not None:
                    selector.unregister(key.fileobj)
                    ok, value = reply
                    if not ok:
                        raise value
                    results[worker] = value
            if time.monotonic() - checked >= every:
                checked = time.monotonic()
                pending = set(channels) - set(results) - set(lost)
                for worker, why in check(pending).items():
                    lost[worker] = why
                    selector.unregister(channels[worker].sock)
    return results, lost, cpu
