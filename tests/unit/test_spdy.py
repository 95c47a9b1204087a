"""SPDY/3.1 sessions (cri/streaming/spdy.py) over real loopback TCP connections.

Session-to-session tests check behaviour; "raw" tests put hand-built frames on the wire
(parsed and built here, independently of the module) so a bug shared by our encoder and
decoder cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from cri.streaming.spdy import (
    HEADER_DICTIONARY,
    MAX_DATA_CHUNK,
    SESSION_WINDOW,
    STREAM_WINDOW,
    SpdyError,
    SpdySession,
    SpdyStream,
)

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
)
# adler32 of the 1423-byte SPDY/3 dictionary; it is the DICTID of every SPDY/3 zlib
# stream (seen at bytes 2-5 of spdystream's first header block below).
SPDY3_DICTID = 0xE3C6A7C2

# SYN_STREAM frames written by moby/spdystream's framer (the Go code kubectl and the
# kubelet use), one framer and so one zlib stream, for streams 1, 3 and 5 with headers
# set as Kubernetes sets them: streamType=error; streamType=stdout; streamType=data,
# port=8080, requestID=0.
SPDYSTREAM_FRAMES = [
    "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a"
    "6800000000ffff",
    "800300010000001900000003000000000000c22ac5565c92925f5a02000000ffff",
    "800300010000002f0000000500000000000002a5550c395009940829cc8bc0f9c6c2c0c280818181b3081"
    "2f999a04cc16800000000ffff",
]


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(bounded())


# --- hand-built wire format ---------------------------------------------------------


def control(frame_type: int, flags: int, payload: bytes, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, frame_type, flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">II", stream_id, flags << 24 | len(payload)) + payload


def name_value_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def stored_zlib(raw: bytes, *, first: bool) -> bytes:
    """A zlib stream segment built by hand (RFC 1950/1951), no compressor involved:
    on the first block the zlib header with FDICT and the SPDY dictionary's id, then
    the data as non-final stored blocks, which is what a sync flush leaves."""
    out = b""
    if first:
        cmf, flg = 0x78, 0x20  # deflate, 32K window; FDICT set
        flg |= (31 - ((cmf << 8 | flg) % 31)) % 31  # FCHECK
        out += bytes([cmf, flg]) + struct.pack(">I", SPDY3_DICTID)
    for start in range(0, max(len(raw), 1), 65535):
        piece = raw[start : start + 65535]
        out += b"\x00" + struct.pack("<HH", len(piece), len(piece) ^ 0xFFFF) + piece
    return out


def hand_syn_stream(stream_id: int, block: bytes, flags: int = 0) -> bytes:
    return control(SYN_STREAM, flags, struct.pack(">IIBB", stream_id, 0, 0, 0) + block)


class RawPeer:
    """One end of a connection that reads and writes frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)

    def send(self, frame: bytes) -> None:
        self.writer.write(frame)

    async def frame(self) -> tuple[bool, int, int, bytes]:
        """(is_control, type or stream id, flags, payload)."""
        first, second = struct.unpack(">II", await self.reader.readexactly(8))
        payload = await self.reader.readexactly(second & 0xFFFFFF)
        if first & 0x80000000:
            assert first >> 16 & 0x7FFF == 3
            return True, first & 0xFFFF, second >> 24, payload
        return False, first, second >> 24, payload

    async def control(self, wanted: int) -> tuple[int, bytes]:
        """The next control frame of type `wanted`, skipping the session's opening
        SETTINGS and WINDOW_UPDATE; returns (flags, payload)."""
        while True:
            is_control, kind, flags, payload = await self.frame()
            if is_control and kind == wanted:
                return flags, payload
            assert is_control and kind in (SETTINGS, WINDOW_UPDATE), (kind, payload)

    def headers(self, compressed: bytes) -> list[tuple[bytes, bytes]]:
        raw = self.inflate.decompress(compressed)
        (count,) = struct.unpack_from(">I", raw)
        pairs, offset = [], 4
        for _ in range(count):
            (n,) = struct.unpack_from(">I", raw, offset)
            name = raw[offset + 4 : offset + 4 + n]
            offset += 4 + n
            (n,) = struct.unpack_from(">I", raw, offset)
            pairs.append((name, raw[offset + 4 : offset + 4 + n]))
            offset += 4 + n
        assert offset == len(raw)
        return pairs


# --- connections --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[Conn, Conn]]:
    accepted: asyncio.Queue[Conn] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    served = await accepted.get()
    try:
        yield client, served
    finally:
        for _, writer in (client, served):
            writer.close()
        server.close()
        await server.wait_closed()


async def finish(task: asyncio.Task[None]) -> BaseException | None:
    """Wait for a session's run() task; return what it raised."""
    try:
        await asyncio.wait_for(task, 10)
    except (SpdyError, asyncio.CancelledError) as exc:
        return exc
    return None


@contextlib.asynccontextmanager
async def sessions(
    *, client_flow: bool | None = None, server_flow: bool | None = None
) -> AsyncIterator[tuple[SpdySession, SpdySession]]:
    async with tcp_pair() as ((cr, cw), (sr, sw)):
        client = SpdySession(cr, cw, server=False, flow_control=client_flow)
        server = SpdySession(sr, sw, server=True, flow_control=server_flow)
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
        try:
            yield client, server
        finally:
            await client.close()
            await server.close()
            for task in tasks:
                assert await finish(task) is None


@contextlib.asynccontextmanager
async def raw_client() -> AsyncIterator[tuple[RawPeer, SpdySession, asyncio.Task[None]]]:
    """A server session whose client is written by hand."""
    async with tcp_pair() as ((cr, cw), (sr, sw)):
        server = SpdySession(sr, sw, server=True)
        task = asyncio.create_task(server.run())
        try:
            yield RawPeer(cr, cw), server, task
        finally:
            await server.close()
            await finish(task)


async def opened(
    client: SpdySession, server: SpdySession, headers: dict[str, str]
) -> tuple[SpdyStream, SpdyStream]:
    accepting = asyncio.create_task(server.accept_stream())
    ours = await client.open_stream(headers)
    theirs = await accepting
    assert theirs is not None
    return ours, theirs


async def read_all(stream: SpdyStream) -> bytes:
    out = bytearray()
    while chunk := await stream.read():
        out += chunk
    return bytes(out)


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


# --- the dictionary and known bytes -------------------------------------------------


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(HEADER_DICTIONARY) == 1423
    assert zlib.adler32(HEADER_DICTIONARY) == SPDY3_DICTID
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert HEADER_DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_hand_built_syn_streams_decode_and_get_replies() -> None:
    async def main() -> None:
        async with raw_client() as (peer, server, _):
            first = name_value_block(
                [(b"streamtype", b"stdin"), (b"x-note", b"one\x00two"), (b"port", b"22")]
            )
            peer.send(hand_syn_stream(1, stored_zlib(first, first=True)))
            # The second block continues the same zlib stream: no zlib header again.
            second = name_value_block([(b"streamtype", b"error")])
            peer.send(hand_syn_stream(3, stored_zlib(second, first=False), flags=0x01))
            stdin = await server.accept_stream()
            assert stdin is not None
            assert stdin.id == 1
            assert stdin.headers == {"streamtype": "stdin", "x-note": "one\x00two", "port": "22"}
            assert not stdin.remote_closed
            flags, payload = await peer.control(SYN_REPLY)
            assert flags == 0
            assert struct.unpack_from(">I", payload)[0] == 1
            assert peer.headers(payload[4:]) == []

            error = await server.accept_stream()
            assert error is not None
            assert (error.id, error.headers) == (3, {"streamtype": "error"})
            assert error.remote_closed  # FIN on the SYN_STREAM
            assert await error.read() == b""
            _, payload = await peer.control(SYN_REPLY)
            assert struct.unpack_from(">I", payload)[0] == 3

            peer.send(data_frame(1, 0, b"hel") + data_frame(1, 0x01, b"lo"))
            assert await read_all(stdin) == b"hello"
            assert stdin.remote_closed

    run(main)


def test_spdystream_frames_decode() -> None:
    async def main() -> None:
        async with raw_client() as (peer, server, _):
            for frame in SPDYSTREAM_FRAMES:
                peer.send(bytes.fromhex(frame))
            got = []
            for _ in SPDYSTREAM_FRAMES:
                stream = await server.accept_stream()
                assert stream is not None
                got.append((stream.id, stream.headers))
            assert got == [
                (1, {"streamtype": "error"}),
                (3, {"streamtype": "stdout"}),
                (5, {"streamtype": "data", "port": "8080", "requestid": "0"}),
            ]

    run(main)


def test_client_frames_match_the_spec() -> None:
    async def main() -> None:
        async with tcp_pair() as ((cr, cw), (sr, sw)):
            client = SpdySession(cr, cw, server=False)
            task = asyncio.create_task(client.run())
            peer = RawPeer(sr, sw)
            # The session opens with SETTINGS(initial window 1 MiB) and a session
            # WINDOW_UPDATE.
            assert STREAM_WINDOW == 1024 * 1024
            assert await peer.frame() == (
                True,
                SETTINGS,
                0,
                struct.pack(">III", 1, 7, STREAM_WINDOW),
            )
            is_control, kind, _, payload = await peer.frame()
            assert (is_control, kind) == (True, WINDOW_UPDATE)
            assert struct.unpack(">II", payload)[0] == 0

            opening = asyncio.create_task(client.open_stream({"streamType": "stdout"}))
            flags, payload = await peer.control(SYN_STREAM)
            assert flags == 0
            stream_id, associated, priority, slot = struct.unpack_from(">IIBB", payload)
            assert (stream_id, associated, priority, slot) == (1, 0, 0, 0)
            assert payload[10] == 0x78  # zlib, deflate with a 32K window
            assert payload[11] & 0x20  # FDICT: primed with the SPDY dictionary
            assert struct.unpack_from(">I", payload, 12)[0] == SPDY3_DICTID
            assert peer.headers(payload[10:]) == [(b"streamtype", b"stdout")]
            assert not opening.done()  # open_stream waits for the reply

            reply = struct.pack(">I", 1) + stored_zlib(name_value_block([]), first=True)
            peer.send(control(SYN_REPLY, 0, reply))
            stream = await opening
            await stream.write(b"abc")
            assert await peer.frame() == (False, 1, 0, b"abc")
            await stream.close()
            assert await peer.frame() == (False, 1, 0x01, b"")

            peer.send(data_frame(1, 0, b"x" * 40000))
            assert await stream.read() == b"x" * 40000
            peer.send(data_frame(1, 0, b"y" * 500_000))
            assert await stream.read() == b"y" * 500_000
            # Reading half a window's worth grants it back on the stream, in one update
            # (and once the stream is done, nothing more is sent for it).
            is_control, kind, _, payload = await peer.frame()
            assert (is_control, kind) == (True, WINDOW_UPDATE)
            assert struct.unpack(">II", payload) == (1, 540_000)

            stream.reset()
            assert await peer.control(RST_STREAM) == (0, struct.pack(">II", 1, 5))

            await client.close()
            _, payload = await peer.control(GOAWAY)
            assert struct.unpack(">II", payload) == (0, 0)
            assert await finish(task) is None

    run(main)


# --- sessions talking to each other -------------------------------------------------


def test_streams_headers_data_and_fin() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            pairs = []
            for index in range(5):
                headers = {"streamType": f"kind{index}", "requestID": str(index)}
                ours, theirs = await opened(client, server, headers)
                assert ours.id == 2 * index + 1
                assert theirs.id == ours.id
                assert theirs.headers == {"streamtype": f"kind{index}", "requestid": str(index)}
                pairs.append((ours, theirs))

            for index, (ours, theirs) in enumerate(pairs):
                await ours.write(f"to server {index}".encode())
                await theirs.write(f"to client {index}".encode())
            for index, (ours, theirs) in enumerate(pairs):
                assert await theirs.read() == f"to server {index}".encode()
                assert await ours.read() == f"to client {index}".encode()

            # Half-close: after the client's FIN the server still writes.
            ours, theirs = pairs[0]
            await ours.write(b"last words")
            await ours.close()
            await ours.close()  # idempotent
            with pytest.raises(SpdyError):
                await ours.write(b"too late")
            assert await theirs.read() == b"last words"
            assert await theirs.read() == b""
            assert theirs.remote_closed
            assert not ours.remote_closed
            await theirs.write(b"reply after your FIN")
            await theirs.close()
            assert await read_all(ours) == b"reply after your FIN"
            assert ours.remote_closed

            # The others are untouched.
            ours, theirs = pairs[1]
            await ours.write(b"still open")
            assert await theirs.read() == b"still open"

    run(main)


def test_fin_with_the_syn_stream() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            accepting = asyncio.create_task(server.accept_stream())
            ours = await client.open_stream({"streamtype": "error"}, fin=True)
            theirs = await accepting
            assert theirs is not None
            assert theirs.remote_closed
            assert await theirs.read() == b""
            with pytest.raises(SpdyError):
                await ours.write(b"x")
            await theirs.write(b"error text")
            await theirs.close()
            assert await read_all(ours) == b"error text"

    run(main)


def test_data_sent_before_the_peers_reset_is_read() -> None:
    # Kubernetes' streaming server writes an exec's status on the error stream, then
    # resets every stream as it closes the connection.
    async def main() -> None:
        async with sessions() as (client, server):
            ours, theirs = await opened(client, server, {"streamtype": "error"})
            await theirs.write(b'{"status":"Success"}')
            theirs.reset()
            await eventually(lambda: ours.reset_status == 5)
            assert ours.remote_closed
            assert await read_all(ours) == b'{"status":"Success"}'
            assert await ours.read() == b""

    run(main)


def test_unread_data_of_a_peer_reset_stream_gives_its_window_back_on_reset() -> None:
    # A port-forward whose pod side broke stops reading a stream the client then reset:
    # resetting it on our side too must free the session window that data held.
    async def main() -> None:
        async with sessions() as (client, server):
            for _ in range(2 * SESSION_WINDOW // STREAM_WINDOW):
                ours, theirs = await opened(client, server, {"streamtype": "data"})
                await asyncio.wait_for(theirs.write(b"z" * STREAM_WINDOW), 5)
                theirs.reset()
                await eventually(lambda: ours.reset_status == 5)  # noqa: B023
                ours.reset()

    run(main)


def test_reset_both_ways() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            ours, theirs = await opened(client, server, {"streamtype": "stdin"})
            reading = asyncio.create_task(theirs.read())
            await asyncio.sleep(0.05)
            ours.reset()
            assert await reading == b""
            assert theirs.remote_closed
            await eventually(lambda: theirs.reset_status == 5)
            with pytest.raises(SpdyError, match="reset by the peer"):
                await theirs.write(b"x")
            with pytest.raises(SpdyError, match="reset by us"):
                await ours.write(b"x")
            assert await ours.read() == b""

            # A reset also frees a writer stuck on a full window.
            ours, theirs = await opened(client, server, {"streamtype": "stdout"})
            writing = asyncio.create_task(theirs.write(b"y" * (2 * STREAM_WINDOW)))
            await asyncio.sleep(0.1)
            assert not writing.done()
            ours.reset(3)
            with pytest.raises(SpdyError):
                await writing

            # The dropped data was granted back to the session: a fresh stream still
            # moves more than a session window's worth.
            ours, theirs = await opened(client, server, {"streamtype": "stdout"})
            payload = os.urandom(SESSION_WINDOW + STREAM_WINDOW)
            sending = asyncio.create_task(theirs.write(payload))
            assert len(await _read_exactly(ours, len(payload))) == len(payload)
            await sending

    run(main)


async def _read_exactly(stream: SpdyStream, count: int) -> bytes:
    out = bytearray()
    while len(out) < count:
        chunk = await stream.read()
        assert chunk
        out += chunk
    return bytes(out)


def test_ping_is_answered() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            assert await client.ping() >= 0
            assert await server.ping() >= 0
        async with raw_client() as (peer, _, _):
            peer.send(control(PING, 0, struct.pack(">I", 7)))
            assert await peer.control(PING) == (0, struct.pack(">I", 7))

    run(main)


def test_ten_megabytes_each_way_at_once() -> None:
    async def main() -> None:
        size = 10 * 1024 * 1024
        up, down = os.urandom(size), os.urandom(size)

        async def send(stream: SpdyStream, payload: bytes) -> None:
            for start in range(0, len(payload), 300_000):
                await stream.write(payload[start : start + 300_000])
            await stream.close()

        async def digest(stream: SpdyStream) -> str:
            sha = hashlib.sha256()
            while chunk := await stream.read():
                sha.update(chunk)
            return sha.hexdigest()

        async with sessions() as (client, server):
            ours, theirs = await opened(client, server, {"streamtype": "data"})
            results = await asyncio.gather(
                send(ours, up), send(theirs, down), digest(theirs), digest(ours)
            )
            assert results[2] == hashlib.sha256(up).hexdigest()
            assert results[3] == hashlib.sha256(down).hexdigest()

    run(main)


def test_many_streams_at_once() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            pairs = [await opened(client, server, {"n": str(n)}) for n in range(8)]
            payloads = [os.urandom(300_000) for _ in pairs]

            async def echo(stream: SpdyStream) -> None:
                while chunk := await stream.read():
                    await stream.write(chunk)
                await stream.close()

            async def roundtrip(stream: SpdyStream, payload: bytes) -> bytes:
                async def send() -> None:
                    await stream.write(payload)
                    await stream.close()

                _, back = await asyncio.gather(send(), read_all(stream))
                return back

            echoes = [asyncio.create_task(echo(theirs)) for _, theirs in pairs]
            backs = await asyncio.gather(
                *(roundtrip(ours, p) for (ours, _), p in zip(pairs, payloads, strict=True))
            )
            assert backs == payloads
            await asyncio.gather(*echoes)

    run(main)


def test_slow_reader_makes_the_writer_wait() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            ours, theirs = await opened(client, server, {"streamtype": "stdin"})
            sent = 0

            async def writer() -> None:
                nonlocal sent
                for _ in range(2 * STREAM_WINDOW // 16384):  # in 16 KiB writes
                    await ours.write(b"z" * 16384)
                    sent += 16384

            writing = asyncio.create_task(writer())
            await asyncio.sleep(0.3)
            # Exactly the stream's window (1 MiB) went out; the rest waits.
            assert sent == STREAM_WINDOW
            assert not writing.done()

            # One stalled stream does not stall the others (the session window is
            # wider than a stream's).
            other_ours, other_theirs = await opened(client, server, {"streamtype": "x"})
            other_payload = os.urandom(400_000)
            sending = asyncio.create_task(other_ours.write(other_payload))
            assert await _read_exactly(other_theirs, len(other_payload)) == other_payload
            await sending
            assert sent == STREAM_WINDOW

            received = await _read_exactly(theirs, 2 * STREAM_WINDOW)
            assert received == b"z" * (2 * STREAM_WINDOW)
            await writing

    run(main)


def test_headers_round_trip_across_many_streams() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            for index in range(300):
                headers = {
                    "StreamType": ("stdin", "stdout", "stderr", "error", "resize")[index % 5],
                    "port": str(1000 + index),
                    "requestID": str(index),
                    "x-multi": "a\x00b",
                    "x-unicode": "grüße ✓",
                    "x-long": "v" * (index * 37),
                }
                ours, theirs = await opened(client, server, headers)
                expected = {name.lower(): value for name, value in headers.items()}
                assert theirs.headers == expected
                assert ours.headers == expected
                await ours.close()
                await theirs.close()
            with pytest.raises(SpdyError, match="twice"):
                await client.open_stream({"a": "1", "A": "2"})

    run(main)


def test_close_ends_accept_reads_and_opens() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            ours, theirs = await opened(client, server, {"streamtype": "stdout"})
            await theirs.write(b"buffered")
            await eventually(lambda: ours._buffered > 0)  # arrived, unread
            accepting = asyncio.create_task(client.accept_stream())
            reading = asyncio.create_task(theirs.read())
            await asyncio.sleep(0.05)

            await server.close()
            assert server.closed
            assert await reading == b""
            assert await accepting is None
            assert await client.accept_stream() is None
            await eventually(lambda: client.closed)
            # Data that arrived before the end is still there, then EOF.
            assert await ours.read() == b"buffered"
            assert await ours.read() == b""
            with pytest.raises(SpdyError):
                await ours.write(b"x")
            with pytest.raises(SpdyError):
                await client.open_stream({"streamtype": "stdin"})
            with pytest.raises(SpdyError):
                await client.ping()

    run(main)


def test_goaway_from_the_peer() -> None:
    async def main() -> None:
        async with raw_client() as (peer, server, task):
            block = name_value_block([(b"streamtype", b"stdin")])
            peer.send(hand_syn_stream(1, stored_zlib(block, first=True)))
            peer.send(control(GOAWAY, 0, struct.pack(">II", 0, 0)))
            stream = await server.accept_stream()
            assert stream is not None  # opened before the GOAWAY: still served
            assert await server.accept_stream() is None
            with pytest.raises(SpdyError):
                await server.open_stream({"a": "b"})
            # The stream works until the connection goes.
            peer.send(data_frame(1, 0, b"after goaway"))
            assert await stream.read() == b"after goaway"
            reading = asyncio.create_task(stream.read())
            await asyncio.sleep(0.05)
            peer.writer.close()
            assert await reading == b""
            assert await finish(task) is None
            assert server.closed

    run(main)


def test_peer_that_ignores_flow_control() -> None:
    # moby/spdystream never sends SETTINGS or WINDOW_UPDATE: our writes must not stall
    # after 64 KiB, and its oversized writes must not be refused nor buffered without
    # bound.
    async def main() -> None:
        async with raw_client() as (peer, server, _):
            block = name_value_block([(b"streamtype", b"stdout")])
            peer.send(hand_syn_stream(1, stored_zlib(block, first=True)))
            stream = await server.accept_stream()
            assert stream is not None
            payload = os.urandom(1024 * 1024)
            writing = asyncio.create_task(stream.write(payload))
            got = bytearray()
            while len(got) < len(payload):
                is_control, kind, _, data = await peer.frame()
                if not is_control:
                    assert kind == 1
                    assert len(data) <= MAX_DATA_CHUNK
                    got += data
            assert bytes(got) == payload
            await writing

            # Far past our window, in frames, without reading.
            for _ in range(40):
                peer.send(data_frame(1, 0, b"q" * 100_000))
            await asyncio.sleep(0.3)
            # What the session holds (a private counter: nothing public exposes it) stays
            # within a window plus the frame that overflowed it; TCP holds the rest.
            assert stream._buffered <= STREAM_WINDOW + 100_000
            received = await _read_exactly(stream, 40 * 100_000)
            assert received == b"q" * 4_000_000

    run(main)


def test_data_for_a_stream_never_opened_is_refused() -> None:
    async def main() -> None:
        async with raw_client() as (peer, server, _):
            peer.send(data_frame(7, 0, b"who?"))
            assert await peer.control(RST_STREAM) == (0, struct.pack(">II", 7, 2))
            assert not server.closed

    run(main)


def test_too_many_unaccepted_streams_are_refused() -> None:
    async def main() -> None:
        async with raw_client() as (peer, _, _):
            block = name_value_block([(b"streamtype", b"data")])
            for index in range(130):
                compressed = stored_zlib(block, first=index == 0)
                peer.send(hand_syn_stream(2 * index + 1, compressed))
            _, payload = await peer.control(RST_STREAM)
            assert struct.unpack(">II", payload) == (257, 3)  # 129th: REFUSED_STREAM

    run(main)


MALFORMED = {
    "wrong version": control(PING, 0, struct.pack(">I", 1), version=2),
    "short ping": control(PING, 0, b"\x00\x01"),
    "settings count": control(SETTINGS, 0, struct.pack(">III", 2, 7, 1000)),
    "data on stream 0": data_frame(0, 0, b"x"),
    "garbage header block": hand_syn_stream(1, b"\x78\xbb" + b"not zlib at all"),
    "even stream id from a client": hand_syn_stream(
        2, stored_zlib(name_value_block([]), first=True)
    ),
    "truncated header block": hand_syn_stream(
        1, stored_zlib(name_value_block([(b"a", b"b")])[:-3], first=True)
    ),
    "empty header name": hand_syn_stream(
        1, stored_zlib(name_value_block([(b"", b"b")]), first=True)
    ),
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frame_ends_the_session(frame: bytes) -> None:
    async def main() -> None:
        async with raw_client() as (peer, server, task):
            accepting = asyncio.create_task(server.accept_stream())
            peer.send(frame)
            assert isinstance(await finish(task), SpdyError)
            assert server.closed
            assert await accepting is None
            _, payload = await peer.control(GOAWAY)
            assert struct.unpack(">I", payload[4:])[0] == 1  # PROTOCOL_ERROR
            assert await peer.reader.read() == b""  # and the connection is closed

    run(main)


def test_stream_ids_must_increase() -> None:
    async def main() -> None:
        async with raw_client() as (peer, server, task):
            block = name_value_block([])
            peer.send(hand_syn_stream(5, stored_zlib(block, first=True)))
            peer.send(hand_syn_stream(3, stored_zlib(block, first=False)))
            assert isinstance(await finish(task), SpdyError)
            assert server.closed

    run(main)


def test_unknown_control_frames_are_ignored() -> None:
    async def main() -> None:
        async with raw_client() as (peer, _, task):
            peer.send(control(10, 0, b"credential, gone in 3.1"))
            peer.send(control(PING, 0, struct.pack(">I", 9)))
            assert await peer.control(PING) == (0, struct.pack(">I", 9))
            assert not task.done()

    run(main)


def test_settings_change_the_send_window_of_open_streams() -> None:
    async def main() -> None:
        async with raw_client() as (peer, server, _):
            block = name_value_block([])
            peer.send(hand_syn_stream(1, stored_zlib(block, first=True)))
            peer.send(control(WINDOW_UPDATE, 0, struct.pack(">II", 0, 1 << 20)))
            stream = await server.accept_stream()
            assert stream is not None
            # Shrink the initial window to 1000 bytes: the open stream may now send
            # 1000 - 0 bytes, then must wait for a WINDOW_UPDATE.
            peer.send(control(SETTINGS, 0, struct.pack(">III", 1, 7, 1000)))
            await asyncio.sleep(0.05)
            writing = asyncio.create_task(stream.write(b"w" * 3000))
            got = b""
            while len(got) < 1000:
                is_control, _, _, data = await peer.frame()
                if not is_control:
                    got += data
            await asyncio.sleep(0.1)
            assert len(got) == 1000
            assert not writing.done()
            peer.send(control(WINDOW_UPDATE, 0, struct.pack(">II", 1, 5000)))
            while len(got) < 3000:
                is_control, _, _, data = await peer.frame()
                if not is_control:
                    got += data
            await writing
            assert got == b"w" * 3000

    run(main)


def test_flow_control_can_be_forced_off_or_on() -> None:
    async def main() -> None:
        # Forced on: even a peer that never sent SETTINGS is held to 64 KiB.
        async with tcp_pair() as ((cr, cw), (sr, sw)):
            server = SpdySession(sr, sw, server=True, flow_control=True)
            task = asyncio.create_task(server.run())
            peer = RawPeer(cr, cw)
            peer.send(hand_syn_stream(1, stored_zlib(name_value_block([]), first=True)))
            stream = await server.accept_stream()
            assert stream is not None
            writing = asyncio.create_task(stream.write(b"h" * 100_000))
            got = 0
            while got < 65536:
                is_control, _, _, data = await peer.frame()
                got += 0 if is_control else len(data)
            await asyncio.sleep(0.1)
            assert got == 65536
            assert not writing.done()
            await server.close()
            with pytest.raises(SpdyError):
                await writing
            await finish(task)

        # Forced off between two sessions: a slow reader no longer holds the writer.
        async with sessions(client_flow=False) as (client, server2):
            ours, theirs = await opened(client, server2, {})
            await asyncio.wait_for(ours.write(b"f" * 300_000), 5)
            assert len(await _read_exactly(theirs, 300_000)) == 300_000

    run(main)


def test_open_stream_reset_by_the_peer_raises() -> None:
    async def main() -> None:
        async with tcp_pair() as ((cr, cw), (sr, sw)):
            client = SpdySession(cr, cw, server=False)
            task = asyncio.create_task(client.run())
            peer = RawPeer(sr, sw)
            opening = asyncio.create_task(client.open_stream({"streamtype": "stdin"}))
            await peer.control(SYN_STREAM)
            peer.send(control(RST_STREAM, 0, struct.pack(">II", 1, 3)))
            with pytest.raises(SpdyError, match="reset"):
                await opening
            await client.close()
            await finish(task)

    run(main)


def test_cancelled_read_leaves_the_stream_usable() -> None:
    async def main() -> None:
        async with sessions() as (client, server):
            ours, theirs = await opened(client, server, {})
            reading: Awaitable[bytes] = asyncio.wait_for(theirs.read(), 0.05)
            with pytest.raises(TimeoutError):
                await reading
            await ours.write(b"later")
            assert await theirs.read() == b"later"

    run(main)
