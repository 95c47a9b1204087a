"""Exec, Attach and PortForward through skiff's streaming server, with our own clients
for both of the Kubernetes transports: SPDY/3.1 and WebSocket.

The client side (`connect`, `spdy_exec`, `ws_exec`, `spdy_session`) is also what
`tests/integration/test_streaming_tls.py` and the streaming benchmark
(`bench/streaming.py`) drive skiff and containerd with."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.streaming.spdy import SpdySession, SpdyStream
from cri.streaming.websocket import ChannelSocket, WebSocket, stream_pair
from tests.integration.nodes import MakeNode, Node, sandbox_config


@dataclass
class ExecResult:
    stdout: bytes = b""
    stderr: bytes = b""
    status: dict[str, Any] = field(default_factory=dict)


async def connect(
    url: str,
    headers: dict[str, str] | list[tuple[str, str]],
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send the upgrade request for ``url`` (TLS with ``ssl_context`` for https) and read
    the response's head; the connection is the caller's to close."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and ssl_context is None:
        raise ValueError(f"{url} is https: pass an ssl_context")
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port, ssl=ssl_context if parts.scheme == "https" else None
    )
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        *(f"{k}: {v}" for k, v in pairs),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


SPDY_HEADERS = [
    ("Connection", "Upgrade"),
    ("Upgrade", "SPDY/3.1"),
    ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
    ("X-Stream-Protocol-Version", "channel.k8s.io"),
]
PORTFORWARD_HEADERS = [
    ("Connection", "Upgrade"),
    ("Upgrade", "SPDY/3.1"),
    ("X-Stream-Protocol-Version", "portforward.k8s.io"),
]


def ws_headers(protocols: str) -> dict[str, str]:
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode(),
        "Sec-WebSocket-Protocol": protocols,
    }


async def drain(stream: SpdyStream) -> bytes:
    chunks = []
    while chunk := await stream.read():
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def spdy_session(
    url: str,
    headers: list[tuple[str, str]],
    ssl_context: ssl.SSLContext | None = None,
    expect_protocol: str = "",
) -> AsyncIterator[SpdySession]:
    """A client SPDY session on ``url``'s upgraded connection, its frame reader running;
    closed (GOAWAY, connection closed) on the way out."""
    reader, writer, head = await connect(url, headers, ssl_context)
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise AssertionError(f"no upgrade to SPDY: {head!r}")
    if expect_protocol and expect_protocol.encode() not in head:
        writer.close()
        raise AssertionError(f"the server did not choose {expect_protocol}: {head!r}")
    session = SpdySession(reader, writer, server=False)
    runner = asyncio.ensure_future(session.run())
    try:
        yield session
    finally:
        await session.close()
        runner.cancel()


async def spdy_exec(
    url: str,
    stdin: bytes | None = None,
    tty: bool = False,
    resize: tuple[int, int] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ExecResult:
    async with spdy_session(url, SPDY_HEADERS, ssl_context, "v4.channel.k8s.io") as session:
        error = await session.open_stream({"streamtype": "error"})
        streams = {}
        if stdin is not None:
            streams["stdin"] = await session.open_stream({"streamtype": "stdin"})
        streams["stdout"] = await session.open_stream({"streamtype": "stdout"})
        if not tty:
            streams["stderr"] = await session.open_stream({"streamtype": "stderr"})
        if tty:
            streams["resize"] = await session.open_stream({"streamtype": "resize"})
            if resize is not None:
                await streams["resize"].write(
                    json.dumps({"Width": resize[0], "Height": resize[1]}).encode()
                )

        async def feed() -> bytes:
            # Written while the output is read: a client that writes everything first
            # would wait on flow control forever, as a real one would.
            if stdin is not None:
                await streams["stdin"].write(stdin)
                await streams["stdin"].close()
            return b""

        outputs = await asyncio.gather(
            drain(streams["stdout"]),
            drain(streams["stderr"]) if "stderr" in streams else asyncio.sleep(0, b""),
            drain(error),
            feed(),
        )
        status = json.loads(outputs[2]) if outputs[2] else {}
        return ExecResult(outputs[0], outputs[1], status)


async def ws_exec(
    url: str,
    stdin: bytes | None = None,
    protocols: str = "v5.channel.k8s.io, v4.channel.k8s.io",
    ssl_context: ssl.SSLContext | None = None,
) -> ExecResult:
    reader, writer, head = await connect(url, ws_headers(protocols), ssl_context)
    assert head.startswith(b"HTTP/1.1 101"), head
    protocol = next(p.strip() for p in protocols.split(",") if p.strip().encode() in head)
    ws = WebSocket(reader, writer, server=False)
    channels = ChannelSocket(ws, protocol)
    result = ExecResult()
    if stdin is not None:
        await channels.send(0, stdin)
        await channels.close_channel(0)
    error = b""
    while (message := await channels.receive()) is not None:
        channel, data = message
        if channel == 1:
            result.stdout += data
        elif channel == 2:
            result.stderr += data
        elif channel == 3:
            error += data
    result.status = json.loads(error) if error else {}
    return result


def _exec_url(node: Node, cid: str, cmd: list[str], stdin: bool = False, tty: bool = False) -> str:
    return node.runtime.Exec(
        pb.ExecRequest(container_id=cid, cmd=cmd, stdin=stdin, stdout=True, stderr=not tty, tty=tty)
    ).url


@pytest.fixture
def running(make_node: MakeNode) -> tuple[Node, str]:
    node = make_node()
    cid = node.run("target", command=["sleep", "2000"])
    return node, cid


def test_exec_over_spdy_and_websocket(running: tuple[Node, str]) -> None:
    node, cid = running
    result = asyncio.run(spdy_exec(_exec_url(node, cid, ["echo", "hello"])))
    assert result.stdout == b"hello\n"
    assert result.status["status"] == "Success"

    result = asyncio.run(ws_exec(_exec_url(node, cid, ["cat"], stdin=True), stdin=b"round trip\n"))
    assert result.stdout == b"round trip\n"
    assert result.status["status"] == "Success"

    for run in (spdy_exec, ws_exec):
        result = asyncio.run(run(_exec_url(node, cid, ["sh", "-c", "echo oops >&2; exit 7"])))
        assert result.stderr == b"oops\n"
        assert result.status["reason"] == "NonZeroExitCode"
        assert result.status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]


def test_large_output_and_stdin_over_spdy(running: tuple[Node, str]) -> None:
    node, cid = running
    result = asyncio.run(
        spdy_exec(_exec_url(node, cid, ["dd", "if=/dev/zero", "bs=1048576", "count=10"]))
    )
    assert len(result.stdout) == 10 * 1024 * 1024
    assert (
        hashlib.sha256(result.stdout).hexdigest()
        == hashlib.sha256(bytes(10 * 1024 * 1024)).hexdigest()
    )
    payload = secrets.token_bytes(2 * 1024 * 1024)
    result = asyncio.run(spdy_exec(_exec_url(node, cid, ["cat"], stdin=True), stdin=payload))
    assert result.stdout == payload


def test_tty_exec_with_resize(running: tuple[Node, str]) -> None:
    node, cid = running
    url = _exec_url(node, cid, ["sh", "-c", "sleep 0.5; stty size; tty"], tty=True)
    result = asyncio.run(spdy_exec(url, tty=True, resize=(100, 40)))
    text = result.stdout.decode(errors="replace")
    assert "40 100" in text, text
    assert "/dev/pts/" in text, text
    assert result.status["status"] == "Success"


def test_tokens_work_once_and_expire(running: tuple[Node, str]) -> None:
    node, cid = running
    url = _exec_url(node, cid, ["true"])
    asyncio.run(spdy_exec(url))

    async def second_use() -> bytes:
        _, writer, head = await connect(url, SPDY_HEADERS)
        writer.close()
        return head

    assert asyncio.run(second_use()).startswith(b"HTTP/1.1 404")
    unknown = url.rsplit("/", 1)[0] + "/not-a-token"

    async def unknown_use() -> bytes:
        _, writer, head = await connect(unknown, SPDY_HEADERS)
        writer.close()
        return head

    assert asyncio.run(unknown_use()).startswith(b"HTTP/1.1 404")

    async def malformed() -> bytes:
        _, writer, head = await connect(_exec_url(node, cid, ["true"]), {"Connection": "close"})
        writer.close()
        return head

    assert asyncio.run(malformed()).startswith(b"HTTP/1.1 400")
    # The server keeps serving after bad requests.
    assert asyncio.run(spdy_exec(_exec_url(node, cid, ["echo", "still"]))).stdout == b"still\n"


def test_exec_rpc_refuses_bad_requests(running: tuple[Node, str]) -> None:
    node, cid = running
    with pytest.raises(grpc.RpcError) as err:
        node.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=[], stdout=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        node.runtime.Exec(pb.ExecRequest(container_id="f" * 64, cmd=["true"], stdout=True))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stopped = node.run("stopped", command=["true"])
    node.wait_exit(stopped)
    with pytest.raises(grpc.RpcError) as err:
        node.runtime.Exec(pb.ExecRequest(container_id=stopped, cmd=["true"], stdout=True))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_client_disconnect_ends_the_exec(running: tuple[Node, str]) -> None:
    node, cid = running
    url = _exec_url(node, cid, ["sleep", "1234"])

    async def start_and_drop() -> None:
        reader, writer, _ = await connect(url, SPDY_HEADERS)
        session = SpdySession(reader, writer, server=False)
        runner = asyncio.ensure_future(session.run())
        await session.open_stream({"streamtype": "error"})
        await session.open_stream({"streamtype": "stdout"})
        await session.open_stream({"streamtype": "stderr"})
        await asyncio.sleep(1.0)
        writer.transport.abort()
        runner.cancel()

    asyncio.run(start_and_drop())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listing = node.exec(cid, "ps", "-o", "args").stdout.decode().splitlines()
        if "sleep 1234" not in listing:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the exec'd process outlived its client")


def test_attach_sees_output(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run("ticker", command=["sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    url = node.runtime.Attach(pb.AttachRequest(container_id=cid, stdout=True, stderr=True)).url

    async def attach_briefly() -> bytes:
        reader, writer, head = await connect(url, SPDY_HEADERS)
        assert head.startswith(b"HTTP/1.1 101"), head
        session = SpdySession(reader, writer, server=False)
        runner = asyncio.ensure_future(session.run())
        await session.open_stream({"streamtype": "error"})
        stdout = await session.open_stream({"streamtype": "stdout"})
        await session.open_stream({"streamtype": "stderr"})
        data = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while b"tick" not in data:
                    data += await stdout.read()
        await session.close()
        runner.cancel()
        return data

    assert b"tick" in asyncio.run(attach_briefly())
    time.sleep(0.3)
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_RUNNING


def test_port_forward_over_spdy_and_websocket(make_node: MakeNode) -> None:
    node = make_node()
    node.run(
        "web",
        command=[
            "sh",
            "-c",
            "mkdir -p /www; echo hi from the pod > /www/index.html; httpd -f -p 8080 -h /www",
        ],
    )
    time.sleep(0.5)

    async def fetch(session: SpdySession, request_id: int) -> bytes:
        base = {"port": "8080", "requestid": str(request_id)}
        await session.open_stream({**base, "streamtype": "error"})
        data = await session.open_stream({**base, "streamtype": "data"})
        await data.write(b"GET / HTTP/1.0\r\n\r\n")
        return await drain(data)

    async def over_spdy() -> list[bytes]:
        url = node.runtime.PortForward(
            pb.PortForwardRequest(pod_sandbox_id=node.pod, port=[8080])
        ).url
        async with spdy_session(url, PORTFORWARD_HEADERS) as session:
            return list(await asyncio.gather(*(fetch(session, i) for i in range(5))))

    for answer in asyncio.run(over_spdy()):
        assert b"hi from the pod" in answer

    async def over_websocket() -> bytes:
        url = node.runtime.PortForward(
            pb.PortForwardRequest(pod_sandbox_id=node.pod, port=[8080])
        ).url
        reader, writer, head = await connect(url, ws_headers("SPDY/3.1+portforward.k8s.io"))
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = WebSocket(reader, writer, server=False)
        tunnel_reader, tunnel_writer = stream_pair(ws)
        session = SpdySession(tunnel_reader, tunnel_writer, server=False)
        runner = asyncio.ensure_future(session.run())
        try:
            return await fetch(session, 0)
        finally:
            await session.close()
            runner.cancel()

    assert b"hi from the pod" in asyncio.run(over_websocket())


async def _channel_forward(url: str) -> tuple[bytes, dict[int, bytes]]:
    """A port forward over the WebSocket channel protocol (what the Kubernetes Python
    client speaks): the response head, then every channel's bytes once the server has
    closed the WebSocket, after sending an HTTP request on each data channel."""
    reader, writer, head = await connect(url, ws_headers("v5.channel.k8s.io, v4.channel.k8s.io"))
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        return head + await reader.read(), {}
    channels = ChannelSocket(WebSocket(reader, writer, server=False), "v4.channel.k8s.io")
    received: dict[int, bytes] = {}
    requested: set[int] = set()
    async with asyncio.timeout(20):
        while (message := await channels.receive()) is not None:
            channel, data = message
            received[channel] = received.get(channel, b"") + data
            if channel % 2 == 0 and channel not in requested:
                requested.add(channel)
                await channels.send(channel, b"GET / HTTP/1.0\r\n\r\n")
    return head, received


def test_port_forward_over_the_websocket_channel_protocol(make_node: MakeNode) -> None:
    node = make_node()
    serve = "mkdir -p /a /b; echo page a > /a/index.html; echo page b > /b/index.html;"
    serve += " httpd -p 8080 -h /a; httpd -f -p 8081 -h /b"
    node.run("web", command=["sh", "-c", serve])
    time.sleep(0.5)

    def url(query: str, ports: tuple[int, ...] = ()) -> str:
        request = pb.PortForwardRequest(pod_sandbox_id=node.pod, port=list(ports))
        return node.runtime.PortForward(request).url + query

    # Port i: data on channel 2i, errors on 2i+1; each opens with the port, little endian.
    head, got = asyncio.run(_channel_forward(url("?port=8080&port=8081")))
    assert b"v4.channel.k8s.io" in head
    assert got[1] == (8080).to_bytes(2, "little") and got[3] == (8081).to_bytes(2, "little")
    assert got[0].startswith((8080).to_bytes(2, "little")) and b"page a" in got[0]
    assert got[2].startswith((8081).to_bytes(2, "little")) and b"page b" in got[2]
    # Without ports in the URL, those of the PortForward request.
    _, got = asyncio.run(_channel_forward(url("", (8081,))))
    assert b"page b" in got[0]
    # A port nothing listens on: the reason on its error channel, then the end.
    _, got = asyncio.run(_channel_forward(url("?port=9")))
    assert b"error forwarding port 9 to pod" in got[1]
    for query, why in (
        ("?port=http", b"invalid port 'http'"),
        ("?port=70000", b"invalid port '70000'"),
        ("", b"query parameter 'port' is required"),
    ):
        answer, _ = asyncio.run(_channel_forward(url(query)))
        assert answer.startswith(b"HTTP/1.1 400") and why in answer, answer


def test_port_forward_into_a_host_network_pod_reaches_the_node(make_node: MakeNode) -> None:
    node = make_node()
    config = sandbox_config("hostnet", node.log_dir)
    config.linux.security_context.namespace_options.network = pb.NamespaceMode.NODE
    pod = node.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config), timeout=30
    ).pod_sandbox_id
    # A server on the node's loopback stands for the pod's host-network process.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"hello from the node: " + conn.recv(100))

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def forward() -> bytes:
        url = node.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod, port=[port])).url
        async with spdy_session(url, PORTFORWARD_HEADERS) as session:
            base = {"port": str(port), "requestid": "0"}
            await session.open_stream({**base, "streamtype": "error"})
            data = await session.open_stream({**base, "streamtype": "data"})
            await data.write(b"ping")
            return await drain(data)

    try:
        assert asyncio.run(forward()) == b"hello from the node: ping"
    finally:
        listener.close()
        server.join(5)
