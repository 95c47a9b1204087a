"""WebSocket (RFC 6455) for the streaming server, and the Kubernetes protocols on top.

Three layers, each usable alone:

- `handshake_response` checks an HTTP/1.1 upgrade request's headers and builds the
  101 answer, choosing the first subprotocol in the client's order that we support.
- `WebSocket` frames messages over an asyncio stream pair: whole (defragmented)
  messages in and out, pings answered, the close handshake done. No extensions are
  negotiated (no compression). Server frames go out unmasked; client mode masks its
  frames and exists for tests and tools.
- `ChannelSocket` is the Kubernetes channel protocol (`channel.k8s.io`,
  `v4.channel.k8s.io`, `v5.channel.k8s.io`): every binary message starts with one
  byte naming the channel (stdin 0, stdout 1, stderr 2, error 3, resize 4). v5 adds a
  close signal: a message on channel 255 whose payload is the channel being closed.
  `stream_pair` instead turns the WebSocket into a plain byte stream, for
  `SPDY/3.1+portforward.k8s.io`, where binary messages carry a SPDY session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CHANNEL_PROTOCOLS",
    "CLOSE_SIGNAL",
    "ChannelSocket",
    "WebSocket",
    "WebSocketError",
    "handshake_response",
    "stream_pair",
]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
CLOSE_SIGNAL = 255  # v5.channel.k8s.io: the channel that carries "channel N is closed"


class WebSocketError(Exception):
    """A bad upgrade request, a protocol violation by the peer, or use after close."""


class _Violation(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- handshake ---------------------------------------------------------------------------


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1((key + _GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(",") if token.strip()]


def handshake_response(
    headers: Mapping[str, str], supported_protocols: Sequence[str]
) -> tuple[bytes, str]:
    """Validate a WebSocket upgrade request; return the 101 response and the protocol.

    Header names are matched case-insensitively; repeated headers are expected joined
    with ", ". The chosen subprotocol is the first one the client lists (clients list
    their preference first) that is in `supported_protocols`. A client that offers no
    subprotocol is accepted only if `supported_protocols` contains "" (then the answer
    names none and "" is returned). Raises WebSocketError, with a message for a 400
    answer, if the request is not a valid version 13 upgrade or no protocol is shared.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    if "websocket" not in (t.lower() for t in _tokens(lowered.get("upgrade", ""))):
        raise WebSocketError("the Upgrade header must be websocket")
    if "upgrade" not in (t.lower() for t in _tokens(lowered.get("connection", ""))):
        raise WebSocketError("the Connection header must contain upgrade")
    version = lowered.get("sec-websocket-version", "").strip()
    if version != "13":
        raise WebSocketError(
            f"unsupported Sec-WebSocket-Version {version!r}: only version 13 is spoken"
        )
    key = lowered.get("sec-websocket-key", "").strip()
    if not key:
        raise WebSocketError("the Sec-WebSocket-Key header is missing")
    try:
        nonce = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:
        raise WebSocketError("Sec-WebSocket-Key must be 16 bytes in base64")
    offered = _tokens(lowered.get("sec-websocket-protocol", "")) or [""]
    chosen = next((p for p in offered if p in supported_protocols), None)
    if chosen is None:
        wanted = ", ".join(p for p in supported_protocols if p) or "(none)"
        raise WebSocketError(
            f"no supported subprotocol among {', '.join(p for p in offered if p) or '(none)'}"
            f"; this server speaks {wanted}"
        )
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if chosen:
        lines.append(f"Sec-WebSocket-Protocol: {chosen}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"), chosen


# --- framing -------------------------------------------------------------------------------


def _mask(data: bytes, key: bytes) -> bytes:
    """XOR `data` with the repeating 4-byte `key` (one big-integer XOR: fast in CPython)."""
    size = len(data)
    if not size:
        return b""
    pad = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(size, "little")


def _header(opcode: int, size: int, *, fin: bool, masked: bool) -> bytes:
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        return struct.pack("!BB", first, mask_bit | size)
    if size < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | 126, size)
    return struct.pack("!BBQ", first, mask_bit | 127, size)


def _valid_close_code(code: int) -> bool:
    # Codes an endpoint may put on the wire (RFC 6455 7.4, IANA registry).
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class WebSocket:
    """One WebSocket connection over an asyncio stream pair, after the handshake.

    Receiving is serialized internally, so `close()` may run while another task waits
    in `receive()`. Cancelling `receive()` while it waits for a frame is safe; cancelling
    it halfway through a frame leaves the stream unframed, so the connection is aborted.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        server: bool = True,
        max_message: int = 16 << 20,
        close_timeout: float = 5.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._server = server
        self.max_message = max_message
        self.close_timeout = close_timeout
        self._read_lock = asyncio.Lock()
        self._fragments: list[bytes] = []
        self._fragment_size = 0
        self._fragment_opcode: int | None = None
        self._mid_frame = False
        self._close_sent = False
        self._close_received = False
        self._lost = False
        self._close_code: int | None = None
        self._close_reason = ""

    # --- state ---

    @property
    def closed(self) -> bool:
        """True once no more messages can be sent: a close frame went either way, or
        the connection is gone."""
        return self._close_sent or self._close_received or self._lost

    @property
    def close_code(self) -> int | None:
        """The peer's close code (1005 if its close frame had none, 1006 if the
        connection dropped without one); None while open."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)

    # --- sending ---

    async def _write_frame(self, opcode: int, *parts: bytes, fin: bool = True) -> None:
        size = sum(len(part) for part in parts)
        header = _header(opcode, size, fin=fin, masked=not self._server)
        if self._server:
            # Consecutive write() calls with no await between them keep the frame whole
            # even with several senders.
            self._writer.write(header)
            for part in parts:
                if part:
                    self._writer.write(part)
        else:
            key = os.urandom(4)
            self._writer.write(header + key + _mask(b"".join(parts), key))
        try:
            await self._writer.drain()
        except OSError:
            self._lost = True
            raise

    async def send(self, data: bytes, *, text: bool = False) -> None:
        """Send one message (one frame). `text=True` sends a text message; `data` must
        then be UTF-8. Raises WebSocketError after the close handshake began."""
        await self._send_message(OP_TEXT if text else OP_BINARY, data)

    async def _send_message(self, opcode: int, *parts: bytes) -> None:
        if self.closed:
            raise WebSocketError("the WebSocket is closed")
        await self._write_frame(opcode, *parts)

    async def ping(self, data: bytes = b"") -> None:
        """Send a ping (at most 125 bytes); the peer's pong is read and dropped by
        `receive()`."""
        if len(data) > 125:
            raise ValueError("a ping carries at most 125 bytes")
        await self._send_message(OP_PING, data)

    async def _send_close(self, code: int | None, reason: str = "") -> None:
        """Send our close frame once, best effort: the peer may be gone already."""
        if self._close_sent or self._lost:
            return
        self._close_sent = True
        payload = b"" if code is None else struct.pack("!H", code) + reason.encode()
        try:
            async with asyncio.timeout(self.close_timeout):
                await self._write_frame(OP_CLOSE, payload)
        except (OSError, TimeoutError):
            self._lost = True

    # --- receiving ---

    async def receive(self) -> bytes | None:
        """The next whole text or binary message's payload.

        Pings are answered and pongs dropped along the way. Returns None once the
        connection is closed: after the peer's close frame (answered with ours), or if
        the connection dropped. Raises WebSocketError when the peer breaks the protocol
        (the connection is then failed with the matching close code) or a message would
        exceed `max_message` (close code 1009).
        """
        async with self._read_lock:
            try:
                return await self._receive_locked()
            except _Violation as violation:
                await self._send_close(violation.code, violation.reason)
                self._drop(CLOSE_ABNORMAL)
                raise WebSocketError(
                    f"WebSocket failed ({violation.code}): {violation.reason}"
                ) from None

    async def _receive_locked(self) -> bytes | None:
        while True:
            if self._close_received or self._lost:
                return None
            try:
                fin, opcode, payload = await self._read_frame()
            except (asyncio.IncompleteReadError, OSError):
                self._drop(CLOSE_ABNORMAL)
                return None
            except asyncio.CancelledError:
                if self._mid_frame:
                    self.abort()
                raise
            if opcode == OP_PING:
                if not self._close_sent:
                    try:
                        await self._write_frame(OP_PONG, payload)
                    except OSError:
                        self._drop(CLOSE_ABNORMAL)
                        return None
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                await self._on_close(payload)
                return None
            message = self._assemble(fin, opcode, payload)
            if message is not None:
                return message

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        read = self._reader.readexactly
        first, second = await read(2)
        self._mid_frame = True
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        if first & 0x70:
            raise _Violation(CLOSE_PROTOCOL_ERROR, "reserved bits set, no extension agreed")
        masked = bool(second & 0x80)
        if masked != self._server:
            raise _Violation(
                CLOSE_PROTOCOL_ERROR,
                "client frames must be masked" if self._server else "server frames are unmasked",
            )
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await read(8))
            if size >> 63:
                raise _Violation(CLOSE_PROTOCOL_ERROR, "payload length has its top bit set")
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise _Violation(CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not fin or size > 125:
                raise _Violation(
                    CLOSE_PROTOCOL_ERROR, "control frames are unfragmented, at most 125 bytes"
                )
        elif opcode > OP_BINARY:
            raise _Violation(CLOSE_PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")
        elif self._fragment_size + size > self.max_message:
            raise _Violation(
                CLOSE_TOO_BIG, f"message larger than the {self.max_message}-byte limit"
            )
        key = await read(4) if masked else b""
        payload = await read(size) if size else b""
        self._mid_frame = False
        return fin, opcode, _mask(payload, key) if masked else payload

    def _assemble(self, fin: bool, opcode: int, payload: bytes) -> bytes | None:
        if opcode == OP_CONTINUATION:
            if self._fragment_opcode is None:
                raise _Violation(CLOSE_PROTOCOL_ERROR, "continuation frame outside a message")
        elif self._fragment_opcode is not None:
            raise _Violation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        else:
            if fin:
                self._check_text(opcode, payload)
                return payload
            self._fragment_opcode = opcode
        self._fragments.append(payload)
        self._fragment_size += len(payload)
        if not fin:
            return None
        message = b"".join(self._fragments)
        message_opcode = self._fragment_opcode
        self._fragments = []
        self._fragment_size = 0
        self._fragment_opcode = None
        self._check_text(message_opcode, message)
        return message

    def _check_text(self, opcode: int | None, payload: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise _Violation(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None

    async def _on_close(self, payload: bytes) -> None:
        code: int | None = None
        reason = ""
        if len(payload) == 1:
            raise _Violation(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        if len(payload) >= 2:
            (code,) = struct.unpack("!H", payload[:2])
            if not _valid_close_code(code):
                raise _Violation(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise _Violation(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None
        self._close_received = True
        self._close_code = CLOSE_NO_STATUS if code is None else code
        self._close_reason = reason
        # Echo the peer's code (RFC 6455 5.5.1), then drop the TCP connection: the
        # server closes first, and a client has nothing left to wait for either.
        await self._send_close(code)
        self._shutdown()

    # --- closing ---

    def _drop(self, code: int) -> None:
        self._lost = True
        if self._close_code is None:
            self._close_code = code
        self._shutdown()

    def _shutdown(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may be closing
            self._writer.close()

    def abort(self) -> None:
        """Drop the connection now, without a close handshake."""
        self._drop(CLOSE_ABNORMAL)
        transport = self._writer.transport
        with contextlib.suppress(RuntimeError, NotImplementedError):
            transport.abort()

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """The close handshake: send our close frame, wait up to `close_timeout` for the
        peer's (messages arriving meanwhile are dropped), then close the connection."""
        if not _valid_close_code(code):
            raise ValueError(f"{code} is not a close code an endpoint may send")
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        await self._send_close(code, reason)
        if not (self._close_received or self._lost):
            with contextlib.suppress(TimeoutError, WebSocketError):
                async with asyncio.timeout(self.close_timeout):
                    while await self.receive() is not None:
                        pass
        if not self._close_received:
            self._lost = True
        self._shutdown()
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            async with asyncio.timeout(self.close_timeout):
                await self._writer.wait_closed()


# --- the Kubernetes channel protocol -------------------------------------------------------


class ChannelSocket:
    """`channel.k8s.io`, `v4.channel.k8s.io` or `v5.channel.k8s.io` over a WebSocket.

    Every message is one channel byte then that channel's data. v4 differs from the
    original only in what the error channel carries (a JSON Status), which is the
    caller's business; v5 adds the close signal on channel 255.
    """

    def __init__(self, ws: WebSocket, protocol: str) -> None:
        if protocol == "":  # no subprotocol offered: the original binary protocol
            protocol = "channel.k8s.io"
        if protocol not in CHANNEL_PROTOCOLS:
            raise ValueError(
                f"unsupported channel protocol {protocol!r}: expected one of "
                + ", ".join(CHANNEL_PROTOCOLS)
            )
        self.ws = ws
        self.protocol = protocol
        self.close_signals = protocol == "v5.channel.k8s.io"

    async def receive(self) -> tuple[int, bytes] | None:
        """The next (channel, data); None once the WebSocket is closed.

        Under v5 a close signal comes back as (255, bytes([closed_channel])). Empty
        messages (no channel byte) are skipped.
        """
        while True:
            message = await self.ws.receive()
            if message is None:
                return None
            if message:
                return message[0], message[1:]

    async def send(self, channel: int, data: bytes) -> None:
        if not 0 <= channel <= 255:
            raise ValueError(f"channel {channel} is not a byte")
        if self.close_signals and channel == CLOSE_SIGNAL:
            raise ValueError("channel 255 carries close signals: use close_channel()")
        await self.ws._send_message(OP_BINARY, bytes((channel,)), data)

    async def close_channel(self, channel: int) -> None:
        """Tell the peer `channel` is finished (v5); older protocols have no way to."""
        if not 0 <= channel < CLOSE_SIGNAL:
            raise ValueError(f"channel {channel} cannot be closed")
        if self.close_signals:
            await self.ws._send_message(OP_BINARY, bytes((CLOSE_SIGNAL, channel)))

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        await self.ws.close(code, reason)

    @property
    def closed(self) -> bool:
        return self.ws.closed


# --- a byte stream over binary messages ----------------------------------------------------

_READ_LIMIT = 256 << 10  # the reader pauses the socket past twice this much unread data
_WRITE_HIGH = 256 << 10  # drain() waits past this much unsent data...
_WRITE_LOW = 64 << 10  # ...until it falls to this
_MAX_CHUNK = 256 << 10  # largest message the writer sends


class _WebSocketTransport(asyncio.Transport):
    """An asyncio Transport whose bytes travel as WebSocket binary messages.

    Writes are buffered and sent by a task, one message per chunk of up to 256 KiB;
    the protocol is paused past the high-water mark, so StreamWriter.drain() pushes
    back. Received messages are fed to the protocol by another task, which stops
    receiving while reading is paused (StreamReader does that when its buffer fills),
    so a slow reader pushes back on the peer through TCP.
    """

    def __init__(self, ws: WebSocket, protocol: asyncio.StreamReaderProtocol) -> None:
        super().__init__()
        self._ws = ws
        self._protocol = protocol
        self._buffer = bytearray()
        self._in_flight = 0
        self._high = _WRITE_HIGH
        self._low = _WRITE_LOW
        self._writing_paused = False
        self._closing = False
        self._lost = False
        self._handshaking = False  # the send loop is doing the close handshake
        self._reading = asyncio.Event()
        self._reading.set()
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        protocol.connection_made(self)
        self._sender = loop.create_task(self._send_loop())
        self._receiver = loop.create_task(self._receive_loop())

    # --- BaseTransport ---

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._ws.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is buffered, then do the WebSocket close handshake. A WebSocket has
        no half-close: the peer's stream ends too, though what it sent before its
        close frame still reaches the reader."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, asyncio.StreamReaderProtocol):
            raise TypeError("a WebSocket stream carries a StreamReaderProtocol")
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # --- ReadTransport ---

    def is_reading(self) -> bool:
        return self._reading.is_set() and not self.is_closing()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    # --- WriteTransport ---

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.is_closing() or not data:
            # Like a socket transport that lost its connection: writes go nowhere.
            return
        self._buffer += data
        self._wakeup.set()
        if not self._writing_paused and self.get_write_buffer_size() > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False  # a WebSocket has no half-close

    def get_write_buffer_size(self) -> int:
        return len(self._buffer) + self._in_flight

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        size = self.get_write_buffer_size()
        if not self._writing_paused and size > high:
            self._writing_paused = True
            self._protocol.pause_writing()
        elif self._writing_paused and size <= low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def abort(self) -> None:
        self._closing = True
        self._ws.abort()
        self._connection_lost(None)

    # --- the two tasks ---

    async def _send_loop(self) -> None:
        try:
            while True:
                if not self._buffer:
                    if self._closing:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                chunk = bytes(self._buffer[:_MAX_CHUNK])
                del self._buffer[:_MAX_CHUNK]
                self._in_flight = len(chunk)
                await self._ws.send(chunk)
                self._in_flight = 0
                if self._writing_paused and self.get_write_buffer_size() <= self._low:
                    self._writing_paused = False
                    self._protocol.resume_writing()
            # Close handshake. Unlike WebSocket.close(), keep handing what still
            # arrives to the reader: the receive loop ends at the peer's close frame.
            self._handshaking = True
            await self._ws._send_close(CLOSE_NORMAL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ws.close_timeout):
                    await asyncio.wait([self._receiver])
            if self._receiver.done():
                await self._ws.close()  # the handshake is done: just hang up
            else:
                self._ws.abort()  # no answer, or nobody reads what arrives
            self._connection_lost(None)
        except WebSocketError:
            # Closed under us: the receive loop met the peer's close frame, so it has
            # handed over everything that came before; what we had not sent is lost.
            self._connection_lost(None)
        except OSError as exc:
            self._connection_lost(exc)

    async def _receive_loop(self) -> None:
        try:
            while True:
                await self._reading.wait()
                message = await self._ws.receive()
                if message is None:
                    break
                if message:
                    self._protocol.data_received(message)
        except (WebSocketError, OSError) as exc:
            self._connection_lost(exc)
            return
        self._protocol.eof_received()
        if not self._handshaking:
            # The peer closed: what we had not sent yet can no longer go out. (During
            # our own close handshake the send loop finishes the job.)
            self._connection_lost(None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._buffer.clear()
        self._in_flight = 0
        current = asyncio.current_task()
        for task in (self._sender, self._receiver):
            if task is not current:
                task.cancel()
        if self._ws.closed:
            self._ws._shutdown()  # flushes a close reply still in the socket's buffer
        else:
            self._ws.abort()
        self._protocol.connection_lost(exc)


def stream_pair(ws: WebSocket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Expose `ws` as a byte stream (for SPDY over WebSocket port forwarding).

    Bytes written to the writer go out as binary messages; received messages feed the
    reader, which sees EOF when the WebSocket closes. writer.close() sends what is
    buffered and then does the close handshake; writer.wait_closed() waits for it.
    Call from a running event loop.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = _WebSocketTransport(ws, protocol)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
