"""Port forwarding into real network namespaces.

Each test makes its own namespace (``ip netns add skiff-pf-<random>``, ``lo`` up) and
runs an echo server inside it with ``ip netns exec``; the server is killed by its pid
and the namespace deleted by its name whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from cri.errors import status_of
from network import netns_thread
from network.portforward import PortForwardError, open_in_netns
from tests.integration import netns
from tests.integration.netns import Netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2",
)

WITHIN = 20.0

# An echo server: binds host:0, prints its port, echoes every connection until EOF.
ECHO_SERVER = """
import socket, sys, threading
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, 0))
s.listen(128)
print(s.getsockname()[1], flush=True)

def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)

while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns.netns("skiff-pf-") as made:
        proc = made.run("ip", "link", "set", "lo", "up")
        assert proc.returncode == 0, proc.stderr
        yield made


@contextmanager
def echo_server(ns: Netns, host: str = "127.0.0.1") -> Iterator[int]:
    """The echo server inside ``ns`` on ``host``; yields its port."""
    proc = subprocess.Popen(
        ns.exec_args(sys.executable, "-c", ECHO_SERVER, host),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"echo server in {ns.name} did not start: {err.strip()}")
        yield int(line)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def netns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def thread_netns_ids() -> set[tuple[int, int]]:
    """The network namespace of every thread of this process."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            found.add(netns_id(f"/proc/self/task/{tid}/ns/net"))
        except FileNotFoundError:
            continue  # the thread just ended
    return found


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), WITHIN)


async def host_connect_works() -> bool:
    """A plain connect on the host (to a server of this process on loopback)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await echo(reader, writer, b"host") == b"host"
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_data_both_ways(ns: Netns) -> None:
    host_ns = netns_id("/proc/thread-self/ns/net")
    with echo_server(ns) as port:

        async def body() -> None:
            reader, writer = await open_in_netns(ns.path, port)
            try:
                # The peer is inside the pod: its address is the pod's loopback.
                assert writer.get_extra_info("peername") == ("127.0.0.1", port)
                assert await echo(reader, writer, b"hello") == b"hello"
                big = os.urandom(4 << 20)
                sent = asyncio.ensure_future(echo(reader, writer, big))
                assert await sent == big
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), WITHIN) == b""
            finally:
                writer.close()
                await writer.wait_closed()
            # No thread of ours is left in the pod, and the host still connects.
            assert thread_netns_ids() == {host_ns}
            assert netns_id("/proc/thread-self/ns/net") == host_ns
            assert await host_connect_works()

        asyncio.run(body())
    # The server was only reachable inside the namespace.
    assert netns_id("/proc/self/ns/net") == host_ns


def test_closed_port_and_bad_targets(ns: Netns) -> None:
    async def body() -> None:
        # Nothing listens in a fresh namespace: refused on 127.0.0.1 and on ::1.
        with pytest.raises(PortForwardError, match="refused") as caught:
            await open_in_netns(ns.path, 1)
        assert status_of(caught.value) == grpc.StatusCode.UNAVAILABLE
        assert "127.0.0.1:1" in str(caught.value)
        with pytest.raises(PortForwardError, match="refused"):
            await open_in_netns(ns.path, 1, host="127.0.0.1")
        with pytest.raises(PortForwardError, match="is gone"):
            await open_in_netns("/run/netns/skiff-pf-no-such-namespace", 80)
        with pytest.raises(PortForwardError, match="entering network namespace"):
            await open_in_netns("/proc/self/ns/uts", 80)  # not a network namespace
        with pytest.raises(PortForwardError, match="IP address"):
            await open_in_netns(ns.path, 80, host="example.com")
        with pytest.raises(PortForwardError, match="invalid port"):
            await open_in_netns(ns.path, 0)
        with pytest.raises(PortForwardError, match="no network namespace"):
            await open_in_netns("", 80)

    asyncio.run(body())


def test_localhost_falls_back_to_ipv6(ns: Netns) -> None:
    if ns.run("ip", "-6", "addr", "show", "dev", "lo").stdout.find("::1") < 0:
        pytest.skip("no IPv6 loopback in a new network namespace here")
    with echo_server(ns, "::1") as port:

        async def body() -> None:
            reader, writer = await open_in_netns(ns.path, port)
            try:
                assert writer.get_extra_info("peername")[0] == "::1"
                assert await echo(reader, writer, b"six") == b"six"
            finally:
                writer.close()
            # An explicit IPv4 address does not fall back.
            with pytest.raises(PortForwardError, match="refused"):
                await open_in_netns(ns.path, port, host="127.0.0.1")
            reader, writer = await open_in_netns(ns.path, port, host="::1")
            writer.close()

        asyncio.run(body())


def test_many_parallel_connections(ns: Netns) -> None:
    host_ns = netns_id("/proc/thread-self/ns/net")
    with echo_server(ns) as port:

        async def one(i: int) -> bytes:
            reader, writer = await open_in_netns(ns.path, port)
            try:
                payload = f"connection {i} ".encode() * 1000
                assert await echo(reader, writer, payload) == payload
                return payload
            finally:
                writer.close()
                await writer.wait_closed()

        async def body() -> None:
            results = await asyncio.gather(*(one(i) for i in range(20)))
            assert len(set(results)) == 20
            assert thread_netns_ids() == {host_ns}
            assert await host_connect_works()

        asyncio.run(body())


def test_a_thread_that_cannot_return_is_retired(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """When switching back fails, the call fails, the pool is replaced and the thread
    left in the pod's namespace exits; the next call works."""
    host_ns = netns_id("/proc/thread-self/ns/net")
    pod_ns = netns_id(ns.path)
    real_setns = netns_thread._setns
    calls = []

    def failing_return(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the way back
            raise OSError(1, "Operation not permitted (test)")
        real_setns(fd)

    with echo_server(ns) as port:

        async def body() -> None:
            before = netns_thread._current_pool()
            monkeypatch.setattr(netns_thread, "_setns", failing_return)
            with pytest.raises(PortForwardError, match="cannot return the worker thread"):
                await open_in_netns(ns.path, port)
            monkeypatch.setattr(netns_thread, "_setns", real_setns)
            assert netns_thread._current_pool() is not before
            # The stranded thread ends with its retired pool.
            deadline = asyncio.get_running_loop().time() + WITHIN
            while pod_ns in thread_netns_ids():
                assert asyncio.get_running_loop().time() < deadline, "a thread stays in the pod"
                await asyncio.sleep(0.05)
            reader, writer = await open_in_netns(ns.path, port)
            try:
                assert await echo(reader, writer, b"again") == b"again"
            finally:
                writer.close()
            assert thread_netns_ids() == {host_ns}

        asyncio.run(body())
