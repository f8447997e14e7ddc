"""The direct channel between the driver and a block host: real sockets, a real host process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distrib.parallel.blocks.channel import (
    TOKEN_SECONDS,
    Channel,
    ChannelServer,
    pack,
    receive_all,
)

from .conftest import REPO


def _never_lost(pending: set[str]) -> dict[str, str]:
    return {}


def _double(request: np.ndarray, **_: object) -> np.ndarray:
    if request.size == 0:
        raise ValueError("an empty request")
    return 2 * request


def test_requests_and_replies_round_trip_on_each_channel() -> None:
    servers = [ChannelServer("127.0.0.1", _double) for _ in range(2)]
    servers.append(ChannelServer("127.0.0.1", lambda a, b, **_: np.concatenate([a, b])))
    channels = {f"w{i}": Channel(s.address, s.token) for i, s in enumerate(servers)}
    try:
        for round_ in range(3):
            for i in range(2):
                channels[f"w{i}"].send(pack(np.full((10, 784), float(i + round_))))
            shared = pack(np.arange(3.0))  # one pickle, sent to a host beside its own
            channels["w2"].send(pack(np.full(4, round_)), shared)
            results, lost, cpu = receive_all(channels, _never_lost, 0.05, time.monotonic() + 10)
            assert lost == {} and 0 < cpu < 10
            for i in range(2):
                expected = np.full((10, 784), 2.0 * (i + round_))
                np.testing.assert_array_equal(results[f"w{i}"], expected)
            np.testing.assert_array_equal(results["w2"], [round_] * 4 + [0.0, 1.0, 2.0])
            # a reply larger than the driver's first buffer arrives whole
            channels["w0"].send(pack(np.full((100, 785), float(round_))))
            results, _, _ = receive_all({"w0": channels["w0"]}, _never_lost, 0.05, None)
            np.testing.assert_array_equal(results["w0"], np.full((100, 785), 2.0 * round_))
    finally:
        for channel in channels.values():
            channel.close()


def test_a_hosts_exception_is_raised_by_the_driver_and_the_channel_goes_on() -> None:
    server = ChannelServer("127.0.0.1", _double)
    channels = {"w": Channel(server.address, server.token)}
    try:
        channels["w"].send(pack(np.zeros(0)))
        with pytest.raises(ValueError, match="an empty request"):
            receive_all(channels, _never_lost, 0.05, time.monotonic() + 10)
        channels["w"].send(pack(np.ones(3)))
        results, _, _ = receive_all(channels, _never_lost, 0.05, time.monotonic() + 10)
        np.testing.assert_array_equal(results["w"], [2.0, 2.0, 2.0])
    finally:
        channels["w"].close()


def test_a_connection_without_the_token_is_dropped_and_the_driver_still_gets_in() -> None:
    server = ChannelServer("127.0.0.1", _double)
    with socket.create_connection(server.address, timeout=5) as intruder:
        intruder.sendall(b"x" * 32)
        assert intruder.recv(1) == b"", "the host closes a connection with a wrong token"
    channels = {"w": Channel(server.address, server.token)}
    try:
        channels["w"].send(pack(np.ones(2)))
        results, _, _ = receive_all(channels, _never_lost, 0.05, time.monotonic() + 10)
        np.testing.assert_array_equal(results["w"], [2.0, 2.0])
    finally:
        channels["w"].close()


def test_idle_connections_hold_up_neither_the_driver_nor_each_other() -> None:
    """Twenty connections that never send their token delayed the driver's by 10 s each
    (one accept thread, a 10 s token timeout): 200 s of silence before a fit's first
    evaluation. Each proves itself in a thread of its own now."""
    server = ChannelServer("127.0.0.1", _double)
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(20)]
    try:
        started = time.monotonic()
        channels = {"w": Channel(server.address, server.token)}
        channels["w"].send(pack(np.ones(2)))
        results, _, _ = receive_all(channels, _never_lost, 0.05, time.monotonic() + 10)
        assert time.monotonic() - started < 2.0, "the driver waited on idle connections"
        np.testing.assert_array_equal(results["w"], [2.0, 2.0])
        for conn in idle[:3]:  # dropped once their time to present the token is up
            conn.settimeout(TOKEN_SECONDS + 5)
            assert conn.recv(1) == b""
    finally:
        for conn in idle:
            conn.close()
        channels["w"].close()


_HOST = """
import sys, time
from distrib.parallel.blocks.channel import ChannelServer
def slow(request, **_):
    time.sleep(60)
server = ChannelServer("127.0.0.1", slow)
print(server.address[1], server.token.hex(), flush=True)
time.sleep(120)
"""


def test_a_host_killed_mid_request_is_reported_lost_at_once() -> None:
    host = subprocess.Popen([sys.executable, "-c", _HOST], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        port, token = host.stdout.readline().split()
        channels = {"w": Channel(("127.0.0.1", int(port)), bytes.fromhex(token))}
        channels["w"].send(pack(np.ones(2)))
        host.kill()
        t0 = time.monotonic()
        results, lost, _ = receive_all(channels, _never_lost, 0.05, time.monotonic() + 30)
        assert results == {} and set(lost) == {"w"}
        assert time.monotonic() - t0 < 5, "a closed socket is seen without waiting for a timeout"
    finally:
        host.kill()
        host.wait(timeout=30)


def test_a_host_the_check_names_lost_stops_the_wait_and_a_silent_one_times_out() -> None:
    server = ChannelServer("127.0.0.1", lambda request, **_: time.sleep(3))
    channels = {"w": Channel(server.address, server.token)}
    try:
        channels["w"].send(pack(None))
        results, lost, _ = receive_all(
            channels, lambda pending: {w: "its worker left" for w in pending}, 0.05, None
        )
        assert results == {} and lost == {"w": "its worker left"}
    finally:
        channels["w"].close()
    server = ChannelServer("127.0.0.1", lambda request, **_: time.sleep(3))
    channels = {"w": Channel(server.address, server.token)}
    try:
        channels["w"].send(pack(None))
        with pytest.raises(TimeoutError, match="longer than the fit's timeout"):
            receive_all(channels, _never_lost, 0.05, time.monotonic() + 0.3)
    finally:
        channels["w"].close()


def test_others_join_with_the_token_while_the_owner_stays_and_close_with_it() -> None:
    """A relaying host connects beside the driver (same token); when the driver's connection
    closes, the host closes the others too, and a waiting handler sees its caller leave."""
    seen_open: list[bool] = []

    def wait_for_caller(seconds: float, *, upstream_open: object) -> str:
        assert callable(upstream_open)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and upstream_open():
            time.sleep(0.01)
        seen_open.append(bool(upstream_open()))
        return "done"

    server = ChannelServer("127.0.0.1", wait_for_caller)
    owner = Channel(server.address, server.token)
    other = Channel(server.address, server.token)
    try:
        other.send(pack(0.0))
        results, _, _ = receive_all({"other": other}, _never_lost, 0.05, time.monotonic() + 10)
        assert results == {"other": "done"} and seen_open == [True]
        owner.send(pack(30.0))  # the handler waits for its caller to leave
        time.sleep(0.2)
        owner.close()
        deadline = time.monotonic() + 10
        while len(seen_open) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen_open == [True, False], "the handler saw its caller close the channel"
        while time.monotonic() < deadline:  # the host stops listening...
            try:
                socket.create_connection(server.address, timeout=1).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the host still accepts connections after its owner left")
        try:  # ... and has closed the other connection
            other.send(pack(0.0))
        except OSError:
            pass
        else:
            results, lost, _ = receive_all({"other": other}, _never_lost, 0.05, deadline)
            assert results == {} and set(lost) == {"other"}
    finally:
        other.close()


def test_a_tls_channel_round_trips_and_refuses_parties_without_the_clusters_ca(
    tmp_path: Path,
) -> None:
    """On a TLS cluster the host's channel speaks TLS with the worker's certificate: the
    driver (client pair) gets in, even for replies larger than a TLS record; a party of
    another CA, or one speaking plain TCP, does not."""
    import ssl

    from distributed.security import Security

    def contexts(certs: Path) -> Security:
        return Security(
            tls_ca_file=str(certs / "ca.pem"),
            tls_worker_cert=str(certs / "worker.pem"),
            tls_worker_key=str(certs / "worker.key"),
            tls_client_cert=str(certs / "client.pem"),
            tls_client_key=str(certs / "client.key"),
        )

    ours, theirs = (contexts(_make_certs(tmp_path / name)) for name in ("ours", "theirs"))
    listen = ours.get_listen_args("worker")["ssl_context"]
    server = ChannelServer("127.0.0.1", _double, listen)
    driver = Channel(
        server.address, server.token, ssl_context=ours.get_connection_args("client")["ssl_context"]
    )
    try:
        assert isinstance(driver.sock, ssl.SSLSocket)
        for size in (3, 100 * 785):  # a reply of many TLS records arrives whole
            driver.send(pack(np.ones(size)))
            results, lost, _ = receive_all({"w": driver}, _never_lost, 0.05, time.monotonic() + 10)
            assert lost == {}
            np.testing.assert_array_equal(results["w"], np.full(size, 2.0))
        with pytest.raises(ssl.SSLError):  # it does not trust the host's certificate
            Channel(
                server.address,
                server.token,
                ssl_context=theirs.get_connection_args("client")["ssl_context"],
            )
        plain = Channel(server.address, server.token)  # no TLS: the host drops it
        try:
            try:
                plain.send(pack(np.ones(2)))
            except OSError:
                pass  # dropped already
            else:
                deadline = time.monotonic() + 20
                results, lost, _ = receive_all({"p": plain}, _never_lost, 0.05, deadline)
                assert results == {} and set(lost) == {"p"}
        finally:
            plain.close()
    finally:
        driver.close()


def _make_certs(folder: Path) -> Path:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "make_certs.sh"), str(folder), "1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return folder
