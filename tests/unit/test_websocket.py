"""WebSocket framing, handshake, the k8s channel protocols and the byte-stream tunnel.

Every test runs over a real loopback TCP connection: the server side is our WebSocket in
server mode behind handshake_response; the client is either our WebSocket in client mode
or a raw socket speaking frames built here independently of the module under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

import pytest

from cri.streaming.server import _sizes
from cri.streaming.websocket import (
    ChannelSocket,
    WebSocket,
    WebSocketError,
    handshake_response,
    stream_pair,
)

EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
TUNNEL = "SPDY/3.1+portforward.k8s.io"
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

Handler = Callable[[WebSocket, str], Awaitable[Any]]


def run(coro: Coroutine[Any, Any, None], timeout: float = 60) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro

    asyncio.run(bounded())


def upgrade_headers(**overrides: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Protocol": "v5.channel.k8s.io, v4.channel.k8s.io",
    }
    for name, value in overrides.items():
        headers[name.replace("_", "-")] = value
    return {name: value for name, value in headers.items() if value is not None}


# --- an independent frame codec for the raw client ---------------------------------------


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if mask else 0
    n = len(payload)
    if n <= 125:
        head = bytes([first, bit | n])
    elif n <= 0xFFFF:
        head = bytes([first, bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawFrame:
    def __init__(self, fin: bool, opcode: int, masked: bool, length_code: int, payload: bytes):
        self.fin = fin
        self.opcode = opcode
        self.masked = masked
        self.length_code = length_code
        self.payload = payload


async def read_frame(reader: asyncio.StreamReader) -> RawFrame:
    b0, b1 = await reader.readexactly(2)
    code = b1 & 0x7F
    n = code
    if code == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif code == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    masked = bool(b1 & 0x80)
    key = await reader.readexactly(4) if masked else b""
    payload = await reader.readexactly(n)
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return RawFrame(bool(b0 & 0x80), b0 & 0x0F, masked, code, payload)


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0])


# --- a server and clients on loopback -------------------------------------------------------


class Server:
    def __init__(self, handler: Handler, protocols: Sequence[str], max_message: int) -> None:
        self.handler = handler
        self.protocols = protocols
        self.max_message = max_message
        self.results: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip()] = value.strip()
        try:
            response, protocol = handshake_response(headers, self.protocols)
        except WebSocketError as exc:
            body = str(exc).encode()
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            writer.close()
            await self.results.put(("rejected", str(exc)))
            return
        writer.write(response)
        await writer.drain()
        ws = WebSocket(reader, writer, server=True, max_message=self.max_message)
        try:
            await self.results.put(("ok", await self.handler(ws, protocol)))
        except Exception as exc:
            await self.results.put(("error", exc))
        finally:
            writer.close()

    async def result(self) -> Any:
        kind, value = await self.results.get()
        if kind == "error":
            raise value
        return value


@contextlib.asynccontextmanager
async def serving(
    handler: Handler,
    protocols: Sequence[str] = (*EXEC_PROTOCOLS, TUNNEL),
    max_message: int = 16 << 20,
) -> AsyncIterator[Server]:
    server = Server(handler, protocols, max_message)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


async def open_raw(
    port: int, protocols: Sequence[str] = ("v5.channel.k8s.io",)
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /exec/token HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n\r\n"
        ).encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols", head
    fields = {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])}
    expected = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert fields["sec-websocket-accept"] == expected
    return reader, writer, fields.get("sec-websocket-protocol", "")


async def open_client(
    port: int, protocols: Sequence[str] = ("v5.channel.k8s.io",), max_message: int = 16 << 20
) -> tuple[WebSocket, str]:
    reader, writer, protocol = await open_raw(port, protocols)
    return WebSocket(reader, writer, server=False, max_message=max_message), protocol


async def echo(ws: WebSocket, _protocol: str) -> int:
    count = 0
    while (message := await ws.receive()) is not None:
        await ws.send(message)
        count += 1
    return count


# --- handshake -----------------------------------------------------------------------------


def test_accept_value_is_rfc_6455s_example_and_names_are_case_insensitive() -> None:
    headers = {
        "upgrade": "WebSocket",
        "CONNECTION": "keep-alive, Upgrade",
        "sec-websocket-version": "13",
        "Sec-Websocket-Key": RFC_KEY,
        "sec-websocket-protocol": "chat, superchat",
    }
    response, protocol = handshake_response(headers, ["superchat", "chat"])
    assert protocol == "chat"
    text = response.decode()
    assert text.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert f"\r\nSec-WebSocket-Accept: {RFC_ACCEPT}\r\n" in text
    assert "\r\nSec-WebSocket-Protocol: chat\r\n" in text
    assert "\r\nUpgrade: websocket\r\n" in text
    assert text.endswith("\r\n\r\n")


def test_protocol_is_the_clients_first_supported_choice() -> None:
    offered = {"Sec-WebSocket-Protocol": "v5.channel.k8s.io, v4.channel.k8s.io, channel.k8s.io"}
    _, chosen = handshake_response(upgrade_headers(**offered), EXEC_PROTOCOLS[::-1])
    assert chosen == "v5.channel.k8s.io"
    _, chosen = handshake_response(
        upgrade_headers(**offered), ["channel.k8s.io", "v4.channel.k8s.io"]
    )
    assert chosen == "v4.channel.k8s.io"
    _, chosen = handshake_response(upgrade_headers(Sec_WebSocket_Protocol=TUNNEL), [TUNNEL])
    assert chosen == TUNNEL


def test_no_offered_protocol_is_accepted_only_when_empty_is_supported() -> None:
    headers = upgrade_headers(Sec_WebSocket_Protocol=None)
    response, chosen = handshake_response(headers, ["", "channel.k8s.io"])
    assert chosen == ""
    assert b"Sec-WebSocket-Protocol" not in response
    with pytest.raises(WebSocketError, match="subprotocol"):
        handshake_response(headers, EXEC_PROTOCOLS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"Sec_WebSocket_Key": None}, "Sec-WebSocket-Key"),
        ({"Sec_WebSocket_Key": "c2hvcnQ="}, "16 bytes"),
        ({"Sec_WebSocket_Key": "not base64!!"}, "16 bytes"),
        ({"Sec_WebSocket_Version": "8"}, "version 13"),
        ({"Sec_WebSocket_Version": None}, "version 13"),
        ({"Upgrade": "h2c"}, "Upgrade"),
        ({"Upgrade": None}, "Upgrade"),
        ({"Connection": "keep-alive"}, "Connection"),
        ({"Sec_WebSocket_Protocol": "base64.channel.k8s.io, v9.channel.k8s.io"}, "subprotocol"),
    ],
)
def test_bad_upgrade_requests_are_rejected(overrides: dict[str, str | None], message: str) -> None:
    with pytest.raises(WebSocketError, match=message):
        handshake_response(upgrade_headers(**overrides), EXEC_PROTOCOLS)


def test_rejected_handshake_over_tcp_gets_a_400() -> None:
    async def scenario() -> None:
        async with serving(echo, protocols=("v4.channel.k8s.io",)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + RFC_KEY.encode() + b"\r\n"
                b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
            )
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert "v5.channel.k8s.io" in await server.result()
            writer.close()

    run(scenario())


def test_client_gets_the_protocol_in_its_own_order() -> None:
    async def scenario() -> None:
        async with serving(echo) as server:
            ws, protocol = await open_client(server.port, ["v4.channel.k8s.io", "channel.k8s.io"])
            assert protocol == "v4.channel.k8s.io"
            await ws.close()
            assert await server.result() == 0

    run(scenario())


# --- framing -------------------------------------------------------------------------------


def test_server_frames_are_unmasked_and_masked_client_frames_are_read() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> bytes | None:
        message = await ws.receive()
        await ws.send(b"from server")
        await ws.send("héllo".encode(), text=True)
        return message

    async def scenario() -> None:
        async with serving(handler) as server:
            reader, writer, _ = await open_raw(server.port)
            writer.write(frame(0x2, b"from client"))
            first = await read_frame(reader)
            assert (first.fin, first.opcode, first.masked) == (True, 0x2, False)
            assert first.payload == b"from server"
            second = await read_frame(reader)
            assert (second.opcode, second.payload) == (0x1, "héllo".encode())
            assert await server.result() == b"from client"
            writer.close()

    run(scenario())


def test_client_mode_masks_its_frames() -> None:
    payload = bytes(range(256)) * 4

    async def raw_handler(ws: WebSocket, _protocol: str) -> tuple[bool, bytes, bytes]:
        # Read the wire directly, under the server's WebSocket.
        reader = ws._reader
        _, b1 = await reader.readexactly(2)
        assert b1 & 0x7F == 126
        size = int.from_bytes(await reader.readexactly(2), "big")
        key = await reader.readexactly(4)
        wire = await reader.readexactly(size)
        plain = bytes(b ^ key[i % 4] for i, b in enumerate(wire))
        return bool(b1 & 0x80), wire, plain

    async def scenario() -> None:
        async with serving(raw_handler) as server:
            ws, _ = await open_client(server.port)
            await ws.send(payload)
            masked, wire, plain = await server.result()
            assert masked
            assert plain == payload
            assert wire != payload
            ws.abort()

    run(scenario())


def test_unmasked_client_frame_fails_the_connection_with_1002() -> None:
    async def scenario() -> None:
        async with serving(echo) as server:
            reader, writer, _ = await open_raw(server.port)
            writer.write(frame(0x2, b"naked", mask=False))
            reply = await read_frame(reader)
            assert reply.opcode == 0x8
            assert close_code(reply.payload) == 1002
            assert await reader.read() == b""  # and the server hangs up
            with pytest.raises(WebSocketError, match="masked"):
                await server.result()
            writer.close()

    run(scenario())


def test_masked_server_frame_is_rejected_by_a_client() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> None:
        ws._writer.write(frame(0x2, b"masked by a server", mask=True))
        await ws.receive()

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, _ = await open_client(server.port)
            with pytest.raises(WebSocketError, match="unmasked"):
                await ws.receive()
            assert ws.closed
            await server.result()

    run(scenario())


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x2, b"x", rsv=4), 1002),  # RSV1 with no extension
        (frame(0x3, b"x"), 1002),  # reserved data opcode
        (frame(0xB, b"x"), 1002),  # reserved control opcode
        (frame(0x0, b"x"), 1002),  # continuation with nothing to continue
        (frame(0x9, b"x", fin=False), 1002),  # fragmented control frame
        (frame(0x9, b"x" * 126), 1002),  # control frame over 125 bytes
        (frame(0x1, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (frame(0x2, b"a", fin=False) + frame(0x2, b"b"), 1002),  # message inside a message
        (frame(0x8, b"\x03"), 1002),  # close payload of one byte
        (frame(0x8, struct.pack("!H", 1005)), 1002),  # a code never sent on the wire
    ],
    # Frames carry random masks: stable ids keep xdist workers' collections equal.
    ids=[
        "rsv1",
        "reserved-data-opcode",
        "reserved-control-opcode",
        "stray-continuation",
        "fragmented-control",
        "long-control",
        "bad-utf8",
        "nested-message",
        "short-close",
        "close-1005",
    ],
)
def test_protocol_violations_close_with_the_right_code(data: bytes, code: int) -> None:
    async def scenario() -> None:
        async with serving(echo) as server:
            reader, writer, _ = await open_raw(server.port)
            writer.write(data)
            reply = await read_frame(reader)
            assert reply.opcode == 0x8
            assert close_code(reply.payload) == code
            with pytest.raises(WebSocketError):
                await server.result()
            writer.close()

    run(scenario())


def test_fragments_are_reassembled_with_a_ping_in_between() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> list[bytes | None]:
        got = [await ws.receive(), await ws.receive()]
        # And the other way: a fragmented binary message to a client-mode WebSocket.
        ws._writer.write(
            frame(0x2, b"ab", fin=False, mask=False)
            + frame(0x0, b"", fin=False, mask=False)
            + frame(0x0, b"cd", mask=False)
        )
        got.append(await ws.receive())
        return got

    async def scenario() -> None:
        async with serving(handler) as server:
            reader, writer, _ = await open_raw(server.port)
            writer.write(
                frame(0x1, b"Hel", fin=False)
                + frame(0x9, b"mid-message")
                + frame(0x0, b"lo", fin=False)
                + frame(0x0, " wörld".encode())
                + frame(0x2, b"single")
            )
            pong = await read_frame(reader)
            assert (pong.opcode, pong.payload, pong.masked) == (0xA, b"mid-message", False)
            client = WebSocket(reader, writer, server=False)
            assert await client.receive() == b"abcd"
            await client.close()
            assert await server.result() == ["Hello wörld".encode(), b"single", None]

    run(scenario())


def test_ping_is_answered_with_a_pong_carrying_its_payload() -> None:
    async def scenario() -> None:
        async with serving(echo) as server:
            reader, writer, _ = await open_raw(server.port)
            for payload in (b"", b"beat", b"p" * 125):
                writer.write(frame(0x9, payload))
                pong = await read_frame(reader)
                assert (pong.opcode, pong.payload) == (0xA, payload)
            writer.write(frame(0xA, b"unsolicited") + frame(0x2, b"after"))
            reply = await read_frame(reader)
            assert (reply.opcode, reply.payload) == (0x2, b"after")
            writer.write(frame(0x8, struct.pack("!H", 1000)))
            assert (await read_frame(reader)).opcode == 0x8
            assert await server.result() == 1
            writer.close()

    run(scenario())


def test_client_ping_api_and_pong_is_dropped() -> None:
    async def scenario() -> None:
        async with serving(echo) as server:
            ws, _ = await open_client(server.port)
            await ws.ping(b"are you there")
            await ws.send(b"data")
            assert await ws.receive() == b"data"  # the pong went by unseen
            with pytest.raises(ValueError):
                await ws.ping(b"x" * 126)
            await ws.close()
            assert await server.result() == 1

    run(scenario())


def test_close_handshake_started_by_the_client() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> tuple[object, ...]:
        message = await ws.receive()
        return message, ws.closed, ws.close_code, ws.close_reason

    async def scenario() -> None:
        async with serving(handler) as server:
            reader, writer, _ = await open_raw(server.port)
            writer.write(frame(0x8, struct.pack("!H", 4001) + b"bye now"))
            reply = await read_frame(reader)
            assert reply.opcode == 0x8
            assert close_code(reply.payload) == 4001  # the server echoes the code
            assert await reader.read() == b""  # then closes TCP
            assert await server.result() == (None, True, 4001, "bye now")
            writer.close()

    run(scenario())


def test_close_handshake_started_by_the_server_while_it_is_receiving() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> tuple[object, ...]:
        receiving = asyncio.create_task(ws.receive())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await ws.close(1001, "going away")
        elapsed = time.monotonic() - started
        with pytest.raises(WebSocketError, match="closed"):
            await ws.send(b"too late")
        return await receiving, elapsed, ws.close_code

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, _ = await open_client(server.port)
            assert await ws.receive() is None
            assert (ws.close_code, ws.close_reason) == (1001, "going away")
            assert ws.closed
            assert await ws.receive() is None  # and stays closed
            message, elapsed, code = await server.result()
            assert message is None
            assert elapsed < 1  # the reply came; no close timeout waited out
            assert code == 1001
            with pytest.raises(WebSocketError):
                await ws.send(b"x")

    run(scenario())


def test_close_times_out_when_the_peer_never_answers() -> None:
    async def stuck(ws: WebSocket, _protocol: str) -> None:
        await asyncio.sleep(1)

    async def stuck_scenario() -> None:
        async with serving(stuck) as server:
            reader, writer, _ = await open_raw(server.port)
            ws = WebSocket(reader, writer, server=False, close_timeout=0.2)
            started = time.monotonic()
            await ws.close()
            assert 0.15 < time.monotonic() - started < 2
            assert ws.closed
            await server.result()

    run(stuck_scenario())


def test_dropped_connection_reads_as_none_with_1006() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> tuple[bytes | None, int | None]:
        return await ws.receive(), ws.close_code

    async def scenario() -> None:
        async with serving(handler) as server:
            _reader, writer, _ = await open_raw(server.port)
            writer.write(frame(0x2, b"half a frame")[:5])
            await writer.drain()
            writer.close()
            assert await server.result() == (None, 1006)

    run(scenario())


@pytest.mark.parametrize(
    ("size", "length_code"),
    [(0, 0), (125, 125), (126, 126), (65535, 126), (65536, 127), (10 << 20, 127)],
)
def test_payload_length_encodings(size: int, length_code: int) -> None:
    payload = os.urandom(size)

    async def handler(ws: WebSocket, _protocol: str) -> None:
        await ws.send(payload)
        got = await ws.receive()
        assert got == payload
        await ws.send(payload)
        await ws.receive()

    async def scenario() -> None:
        async with serving(handler) as server:
            reader, writer, _ = await open_raw(server.port)
            raw = await read_frame(reader)
            assert raw.length_code == length_code
            assert raw.payload == payload
            client = WebSocket(reader, writer, server=False)
            await client.send(payload)  # our client encoding, read by our server
            assert await client.receive() == payload
            await client.close()
            await server.result()

    run(scenario())


def test_max_message_is_enforced_on_single_frames_and_fragments() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> list[object]:
        outcome: list[object] = [await ws.receive()]
        try:
            await ws.receive()
        except WebSocketError as exc:
            outcome.append(str(exc))
        return outcome

    async def scenario(data: bytes) -> None:
        async with serving(handler, max_message=1024) as server:
            reader, writer, _ = await open_raw(server.port)
            writer.write(frame(0x2, b"k" * 1024) + data)
            client = WebSocket(reader, writer, server=False)
            assert await client.receive() is None
            assert client.close_code == 1009
            fits, error = await server.result()
            assert fits == b"k" * 1024
            assert "1009" in str(error)

    run(scenario(frame(0x2, b"x" * 1025)))
    run(scenario(frame(0x2, b"x" * 600, fin=False) + frame(0x0, b"x" * 600)))


def test_message_limit_on_a_client_too() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> None:
        await ws.send(b"z" * 2000)
        assert await ws.receive() is None
        assert ws.close_code == 1009

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, _ = await open_client(server.port, max_message=1000)
            with pytest.raises(WebSocketError, match="1000-byte limit"):
                await ws.receive()
            await server.result()

    run(scenario())


# --- Kubernetes channels -------------------------------------------------------------------


def test_v4_channels_prefix_a_byte_and_have_no_close_signal() -> None:
    async def handler(ws: WebSocket, protocol: str) -> list[object]:
        raw = await ws.receive()
        channels = ChannelSocket(ws, protocol)
        await channels.send(1, b"out")
        await channels.send(2, b"")
        await channels.close_channel(0)  # v4: nothing goes out
        await channels.send(3, b'{"status":"Success"}')
        return [raw, await channels.receive(), await channels.receive()]

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, protocol = await open_client(server.port, ["v4.channel.k8s.io"])
            channels = ChannelSocket(ws, protocol)
            await channels.send(0, b"in")
            assert await channels.receive() == (1, b"out")
            assert await channels.receive() == (2, b"")
            assert await channels.receive() == (3, b'{"status":"Success"}')
            await ws.send(b"")  # an empty message is skipped
            await channels.send(4, b'{"Width":80,"Height":24}')
            await channels.send(255, b"just a channel in v4")
            assert await server.result() == [
                b"\x00in",
                (4, b'{"Width":80,"Height":24}'),
                (255, b"just a channel in v4"),
            ]
            await channels.close()

    run(scenario())


def test_v5_close_signal() -> None:
    async def handler(ws: WebSocket, protocol: str) -> list[object]:
        channels = ChannelSocket(ws, protocol)
        got: list[object] = [await channels.receive(), await channels.receive()]
        await channels.close_channel(1)
        await channels.close_channel(2)
        got.append(await ws.receive())
        await channels.close()
        return got

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, protocol = await open_client(server.port, EXEC_PROTOCOLS)
            assert protocol == "v5.channel.k8s.io"
            channels = ChannelSocket(ws, protocol)
            await channels.send(0, b"last stdin")
            await channels.close_channel(0)
            assert await channels.receive() == (255, bytes([1]))
            assert await channels.receive() == (255, bytes([2]))
            with pytest.raises(ValueError):
                await channels.send(255, b"reserved in v5")
            await ws.send(b"\xff\x00")  # the wire form of the signal, sent by hand
            assert await channels.receive() is None
            assert channels.closed
            assert await server.result() == [(0, b"last stdin"), (255, b"\x00"), b"\xff\x00"]

    run(scenario())


def test_channel_socket_rejects_unknown_protocols() -> None:
    async def scenario() -> None:
        async with serving(echo) as server:
            ws, _ = await open_client(server.port)
            with pytest.raises(ValueError, match="base64"):
                ChannelSocket(ws, "base64.channel.k8s.io")
            assert ChannelSocket(ws, "").protocol == "channel.k8s.io"
            await ws.close()
            await server.result()

    run(scenario())


# --- the byte stream for SPDY over WebSocket --------------------------------------------------


def _small_socket_buffers(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)


def test_stream_pair_round_trips_10_mb_with_backpressure() -> None:
    data = os.urandom(10 << 20)
    start_reading = asyncio.Event()

    async def handler(ws: WebSocket, protocol: str) -> int:
        assert protocol == TUNNEL
        _small_socket_buffers(ws._writer)
        reader, writer = stream_pair(ws)
        await start_reading.wait()
        total = 0
        while chunk := await reader.read(100_000):
            writer.write(chunk)
            await writer.drain()
            total += len(chunk)
        writer.close()
        await writer.wait_closed()
        return total

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, protocol = await open_client(server.port, [TUNNEL])
            assert protocol == TUNNEL
            _small_socket_buffers(ws._writer)
            reader, writer = stream_pair(ws)
            high = writer.transport.get_write_buffer_limits()[1]

            async def send_all() -> None:
                view = memoryview(data)
                for offset in range(0, len(data), 300_000):
                    writer.write(view[offset : offset + 300_000])
                    await writer.drain()
                    assert writer.transport.get_write_buffer_size() <= high

            sender = asyncio.create_task(send_all())
            # The server does not read yet: the sender must stall far short of 10 MB.
            await asyncio.sleep(0.5)
            assert not sender.done()
            start_reading.set()
            received = bytearray()
            while len(received) < len(data):
                received += await reader.read(1 << 20)
            await sender
            # No half-close on a WebSocket: close once everything came back.
            writer.close()
            await writer.wait_closed()
            assert await reader.read() == b""
            assert len(received) == len(data)
            assert received == data
            assert await server.result() == len(data)
            assert ws.closed

    run(scenario())


def test_stream_pair_sees_eof_when_the_peer_closes_and_behaves_like_a_transport() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> None:
        await ws.send(b"first")
        await ws.send(b"")
        await ws.send(b"second")
        await ws.close()

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, _ = await open_client(server.port, [TUNNEL])
            reader, writer = stream_pair(ws)
            assert writer.get_extra_info("peername")[0] == "127.0.0.1"
            assert not writer.can_write_eof()
            assert await reader.read() == b"firstsecond"
            assert reader.at_eof()
            await writer.wait_closed()
            assert writer.is_closing()
            writer.write(b"nowhere")  # dropped, as on a lost socket
            await server.result()

    run(scenario())


def test_stream_pair_close_still_delivers_what_the_peer_sent_before_its_close() -> None:
    chunk = os.urandom(64 << 10)

    async def handler(ws: WebSocket, _protocol: str) -> bytes | None:
        for _ in range(32):
            await ws.send(chunk)
        return await ws.receive()

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, _ = await open_client(server.port, [TUNNEL])
            reader, writer = stream_pair(ws)
            writer.write(b"bye")
            writer.close()
            assert await reader.read() == chunk * 32
            await writer.wait_closed()
            assert await server.result() == b"bye"

    run(scenario())


def test_stream_pair_abort() -> None:
    async def handler(ws: WebSocket, _protocol: str) -> tuple[bytes | None, int | None]:
        return await ws.receive(), ws.close_code

    async def scenario() -> None:
        async with serving(handler) as server:
            ws, _ = await open_client(server.port, [TUNNEL])
            reader, writer = stream_pair(ws)
            writer.transport.abort()
            await writer.wait_closed()
            assert await reader.read() == b""
            assert await server.result() == (None, 1006)

    run(scenario())


# --- the resize channel's JSON ---------------------------------------------------------------


@contextlib.contextmanager
def returns_within(seconds: float) -> Iterator[None]:
    """A loop that never yields would hang the test; SIGALRM breaks into it."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_resize_messages_with_bytes_that_are_not_utf8_do_not_hang_the_daemon() -> None:
    """Found by fuzzing (python -m tests.fuzz terminal_resize): an undecodable byte made
    _sizes measure the buffer wrong and loop forever, in skiffd's event loop."""
    with returns_within(5):
        assert _sizes(bytearray(b'""Wht:\x8e{"WHeight":24}')) == []
        buffer = bytearray(b'{"Width":80,"Height":24}\xff')
        assert _sizes(buffer) == [(80, 24)]
        assert buffer == b"\xff"


def test_resize_objects_without_integer_sizes_are_dropped() -> None:
    buffer = bytearray(b'{"Width":"wide","Height":24} {"Width":100,"Height":30}')
    assert _sizes(buffer) == [(100, 30)]
    assert buffer == b""
