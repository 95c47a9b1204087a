"""SPDY/3.1 sessions over an asyncio byte stream, as Kubernetes streaming uses them.

kubectl/crictl exec, attach and port-forward upgrade an HTTP/1.1 request to `SPDY/3.1`
and then speak SPDY framing (draft 3, version field 3): the client opens one stream per
channel with SYN_STREAM (`streamtype: stdin|stdout|stderr|error|resize`, or
`streamtype: data|error` with `port` and `requestid`), the server answers SYN_REPLY and
data flows both ways until each side sends FIN.

Flow control and the peers Kubernetes actually uses: SPDY/3.1 has per-stream and
per-session windows (64 KiB at first), opened by WINDOW_UPDATE. moby/spdystream, which
kubectl, the kubelet and the Go streaming libraries use, implements none of it: it never
sends WINDOW_UPDATE or SETTINGS, ignores ours, and writes each Write() as one data
frame whatever the window. So by default a session honours the peer's windows only once
the peer shows it keeps them (it sent SETTINGS or WINDOW_UPDATE; our own sessions send
both first thing); against spdystream, honouring them would stall every stream after
64 KiB. Inbound, a peer that overruns our window is tolerated (spdystream's stdin does),
but a stream never buffers much more than its window (`STREAM_WINDOW`, 1 MiB): past
that the session stops reading the connection until the application reads, so TCP
pushes back instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import zlib
from collections import deque
from collections.abc import Mapping

__all__ = ["HEADER_DICTIONARY", "SpdyError", "SpdySession", "SpdyStream"]

VERSION = 3

# Control frame types (draft 3, section 2.6). CREDENTIAL (10) is ignored like any
# unknown type.
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9

# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1

SETTINGS_INITIAL_WINDOW_SIZE = 7

DEFAULT_WINDOW = 64 * 1024  # both windows start here (draft 3.1)
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
MAX_FRAME_LENGTH = 2**24 - 1
# Our data frames stay small enough that one busy stream cannot hold the connection
# for long, and big enough that a bulk transfer is not all per-frame work and syscalls.
MAX_DATA_CHUNK = 64 * 1024
# The receive window we announce for each stream (SETTINGS), and so the most a stream
# buffers. The default 64 KiB is too small between two busy processes: a peer keeping
# our window (our own client does) sends 64 KiB, then waits for our WINDOW_UPDATE, and
# a port-forward ran at a quarter (upload) to a half (download) of the speed it has
# with 1 MiB. A peer that keeps no windows (spdystream) is held to the same bound.
STREAM_WINDOW = 1024 * 1024
# The session window is opened wider still: with the session window equal to one
# stream's, a single stream nobody reads would starve every other stream of the session.
SESSION_WINDOW = 8 * STREAM_WINDOW
# A decompressed header block bigger than this is refused (zlib bombs).
MAX_HEADER_BLOCK = 256 * 1024
# Streams the peer opened that the application has not accepted yet; more are refused.
MAX_PENDING_STREAMS = 128
CLOSE_TIMEOUT = 5.0


def _dictionary() -> bytes:
    # The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-
    # prefixed header names and values, then a run of common value fragments. It is spec
    # data; both ends must prime zlib with exactly these 1423 bytes.
    words = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416"
        "417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server "
        "Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug "
        "Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,"
        "text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
        "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    prefixed = b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in words)
    return prefixed + tail.encode("ascii")


HEADER_DICTIONARY = _dictionary()


class SpdyError(Exception):
    """A SPDY protocol violation, or use of a stream or session that has ended."""


# --- header blocks ------------------------------------------------------------------


def encode_header_block(headers: Mapping[str, str]) -> bytes:
    """The uncompressed name/value block: uint32 count, then uint32-length-prefixed
    name and value for each pair. Names are sent lowercase, as the spec requires."""
    parts = [struct.pack(">I", len(headers))]
    seen: set[bytes] = set()
    for name, value in headers.items():
        raw_name = name.lower().encode("utf-8", "surrogateescape")
        if not raw_name:
            raise SpdyError("a SPDY header name cannot be empty")
        if raw_name in seen:
            # "streamType" and "streamtype" would collide once lowercased.
            raise SpdyError(f"header {name!r} given twice (names are case-insensitive)")
        seen.add(raw_name)
        raw_value = value.encode("utf-8", "surrogateescape")
        parts += [struct.pack(">I", len(raw_name)), raw_name]
        parts += [struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def decode_header_block(block: bytes) -> dict[str, str]:
    """Parse an uncompressed name/value block; names come back lowercase.

    Several values for one name travel NUL-separated in one value (that is how SPDY
    carries repeated headers); a repeated name is folded into that form too."""
    headers: dict[str, str] = {}
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        offset = 4
        # Each pair takes at least 8 bytes, so a lying count ends at the block's end.
        for _ in range(count):
            (length,) = struct.unpack_from(">I", block, offset)
            offset += 4
            name = block[offset : offset + length]
            offset += length
            (length,) = struct.unpack_from(">I", block, offset)
            offset += 4
            value = block[offset : offset + length]
            offset += length
            if offset > len(block):
                raise SpdyError("header block is truncated")
            if not name:
                raise SpdyError("header block has an empty name")
            key = name.decode("utf-8", "surrogateescape").lower()
            text = value.decode("utf-8", "surrogateescape")
            headers[key] = f"{headers[key]}\x00{text}" if key in headers else text
    except struct.error as exc:
        raise SpdyError("header block is truncated") from exc
    if offset != len(block):
        raise SpdyError(f"header block has {len(block) - offset} stray bytes at its end")
    return headers


class _Signal:
    """Wake-all notification. Waiters re-check their own condition after waking, as with
    a condition variable; asyncio runs on one thread, so no lock is needed, and
    notify() can be called from synchronous code (reset(), the frame reader)."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        finally:
            if future in self._waiters:  # only when cancelled before notify()
                self._waiters.remove(future)

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


# --- streams ------------------------------------------------------------------------


class SpdyStream:
    """One SPDY stream: a pair of byte channels with FIN-terminated halves.

    `headers` are the SYN_STREAM headers (lowercase names) of whoever opened it;
    `reply_headers` those of the SYN_REPLY, for a stream we opened. HEADERS frames from
    the peer merge into whichever of the two the peer sent."""

    def __init__(
        self,
        session: SpdySession,
        stream_id: int,
        headers: dict[str, str],
        *,
        send_window: int,
        local: bool,
    ) -> None:
        self.id = stream_id
        self.headers = headers
        self.reply_headers: dict[str, str] = {}
        self._session = session
        self._local = local  # opened by our side
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._send_window = send_window
        self._unacked = 0  # bytes read by the application, not yet granted back
        self._local_fin = False
        self._remote_fin = False
        self._reset_status: int | None = None
        self._reset_by_peer = False
        self._needs_reply = False
        self._data = _Signal()  # data, FIN or reset arrived
        self._space = _Signal()  # the application read from a full buffer
        self._replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} {self.headers!r}>"

    @property
    def remote_closed(self) -> bool:
        """No more data will arrive: the peer sent FIN, the stream was reset, or the
        session ended. Data already buffered can still be read."""
        return self._remote_fin or self._reset_status is not None or self._session.closed

    @property
    def reset_status(self) -> int | None:
        """The RST_STREAM status if either side reset the stream."""
        return self._reset_status

    async def read(self) -> bytes:
        """The next chunk of data (as the peer framed it); b"" once the peer sent FIN or
        reset the stream, or the session ended, after buffered data; at once after our
        own reset."""
        while not self._chunks:
            if self.remote_closed:
                return b""
            await self._data.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._space.notify()
        self._session._consumed(self, len(chunk))
        return chunk

    async def write(self, data: bytes) -> None:
        """Send data, in frames of at most 64 KiB, waiting for the peer's windows when
        it keeps flow control and for the socket to drain. Raises SpdyError once the
        stream is closed on our side or reset, or the session ended."""
        view = memoryview(data)
        while view:
            count = await self._session._reserve(self, len(view))
            self._session._send_data(self.id, 0, bytes(view[:count]))
            view = view[count:]
            await self._session._drain()

    async def close(self) -> None:
        """Half-close: send FIN. Reading goes on until the peer's FIN. Idempotent."""
        if self._local_fin or self._reset_status is not None or self._session.closed:
            return
        self._local_fin = True
        self._session._send_data(self.id, FLAG_FIN, b"")
        self._session._forget_if_done(self)
        with contextlib.suppress(SpdyError):
            await self._session._drain()

    def reset(self, status: int = CANCEL) -> None:
        """Abort both directions with RST_STREAM: pending reads get b"", writes fail,
        unread data is dropped. (After the peer's reset, data it sent before is still
        read, then b"": resetting it then drops what is still unread.)"""
        if self._reset_by_peer:
            self._drop_unread()
            return
        if self._reset_status is not None or (self._local_fin and self._remote_fin):
            return
        self._session._send_control(RST_STREAM, 0, struct.pack(">II", self.id, status))
        self._on_reset(status, by_peer=False)

    def _drop_unread(self) -> None:
        # Dropped data was charged to the session window; give it back or the session
        # would slowly run out of window.
        dropped, self._buffered = self._buffered, 0
        self._chunks.clear()
        self._session._consumed(None, dropped)

    # --- called by the session ---

    def _on_reset(self, status: int, *, by_peer: bool) -> None:
        if self._reset_status is not None:
            return
        self._reset_status = status
        self._reset_by_peer = by_peer
        if not by_peer:
            self._drop_unread()
        # What the peer sent before its reset stays readable (its window is granted
        # back as it is read): Kubernetes' streaming server writes an exec's status on
        # the error stream and resets the streams right after, as it closes.
        if not self._replied.done():
            self._replied.set_exception(SpdyError(f"stream {self.id} was reset ({status})"))
            self._replied.exception()  # nobody may be waiting; don't log it as lost
        self._wake()
        self._session._forget_if_done(self)

    def _on_remote_fin(self) -> None:
        self._remote_fin = True
        self._data.notify()
        self._session._forget_if_done(self)

    def _wake(self) -> None:
        self._data.notify()
        self._space.notify()
        self._session._window_changed.notify()

    def _on_session_end(self) -> None:
        if not self._replied.done():
            self._replied.set_exception(SpdyError("the SPDY session ended"))
            self._replied.exception()
        self._wake()

    def _check_writable(self) -> None:
        if self._session.closed:
            raise SpdyError(f"stream {self.id}: the SPDY session has ended")
        if self._reset_status is not None:
            who = "the peer" if self._reset_by_peer else "us"
            raise SpdyError(f"stream {self.id} was reset by {who} ({self._reset_status})")
        if self._local_fin:
            raise SpdyError(f"stream {self.id} is closed for writing")


# --- sessions -----------------------------------------------------------------------


class SpdySession:
    """A SPDY/3.1 session over one connection; `server` picks stream and ping id parity
    (client odd, server even).

    flow_control: True always waits for the peer's windows before sending data, False
    never does, None (default) does once the peer has sent SETTINGS or WINDOW_UPDATE
    (see the module docstring: spdystream peers do neither and never grant window).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        server: bool,
        flow_control: bool | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._server = server
        self._flow_control = flow_control
        self._peer_keeps_windows = False
        self._closed = False
        self._running = False
        self._goaway_sent = False
        self._goaway_received = False
        self._streams: dict[int, SpdyStream] = {}
        self._accept: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._next_stream_id = 2 if server else 1
        self._last_peer_stream_id = 0
        self._next_ping_id = 2 if server else 1
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._peer_initial_window = DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW  # session level, ours to spend
        self._session_unacked = 0
        self._window_changed = _Signal()
        # One zlib context per direction for the whole session: every header block is
        # a sync-flushed continuation of the previous ones, so blocks must be compressed
        # in the order they hit the wire and every received block must be inflated,
        # even on a frame we are about to refuse.
        self._deflate = zlib.compressobj(zdict=HEADER_DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        # Announce our stream window and widen the session window. Besides their own
        # use, these tell a peer like us that we keep flow control.
        self._send_control(
            SETTINGS,
            0,
            struct.pack(">III", 1, SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
        )
        self._send_control(WINDOW_UPDATE, 0, struct.pack(">II", 0, SESSION_WINDOW - DEFAULT_WINDOW))

    @property
    def closed(self) -> bool:
        return self._closed

    # --- public API ---

    async def run(self) -> None:
        """Read and dispatch frames until the connection closes; run it as a task.

        Returns when the connection ends; raises SpdyError after a protocol violation
        (having sent GOAWAY with PROTOCOL_ERROR). Either way the session is closed,
        accept_stream() returns None and reads return b"" after buffered data."""
        if self._running:
            raise RuntimeError("SpdySession.run() is already running")
        self._running = True
        error: SpdyError | None = None
        try:
            while not self._closed:
                try:
                    head = await self._reader.readexactly(8)
                    first, second = struct.unpack(">II", head)
                    length = second & 0xFFFFFF
                    payload = await self._reader.readexactly(length) if length else b""
                except asyncio.IncompleteReadError:
                    # The peer went away, perhaps mid-frame: an ended connection, not a
                    # protocol error.
                    break
                flags = second >> 24
                if first & 0x80000000:
                    version = (first >> 16) & 0x7FFF
                    if version != VERSION:
                        raise SpdyError(f"unsupported SPDY version {version}")
                    await self._on_control(first & 0xFFFF, flags, payload)
                else:
                    await self._on_data(first, flags, payload)
        except SpdyError as exc:
            error = exc
            self._send_control(GOAWAY, 0, self._goaway_payload(GOAWAY_PROTOCOL_ERROR))
        except (ConnectionError, OSError):
            pass  # reset by the peer: the session ends like at EOF
        finally:
            self._shutdown()
            self._writer.close()
        if error is not None:
            raise error

    async def accept_stream(self) -> SpdyStream | None:
        """The next stream the peer opened, after sending its SYN_REPLY; None once the
        session has ended or the peer sent GOAWAY (it opens no more)."""
        while True:
            stream = await self._accept.get()
            if stream is None:
                self._accept.put_nowait(None)  # for the next caller too
                return None
            if self._closed:
                continue
            if stream._needs_reply and stream._reset_status is None:
                stream._needs_reply = False
                self._send_headers(SYN_REPLY, 0, struct.pack(">I", stream.id), {})
            return stream

    async def open_stream(self, headers: Mapping[str, str], *, fin: bool = False) -> SpdyStream:
        """Open a stream (SYN_STREAM, FIN too if `fin`) and wait for the SYN_REPLY."""
        if self._closed or self._goaway_sent or self._goaway_received:
            raise SpdyError("the SPDY session is closing; no new streams")
        block = encode_header_block(headers)  # raises before we spend a stream id
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise SpdyError("stream ids exhausted; open a new session")
        self._next_stream_id += 2
        stream = SpdyStream(
            self,
            stream_id,
            decode_header_block(block),
            send_window=self._peer_initial_window,
            local=True,
        )
        stream._local_fin = fin
        self._streams[stream_id] = stream
        fields = struct.pack(">IIBB", stream_id, 0, 0, 0)  # no association, priority 0
        self._send_control(SYN_STREAM, FLAG_FIN if fin else 0, fields + self._compress(block))
        try:
            await self._drain()
            await stream._replied
        except asyncio.CancelledError:
            stream.reset()
            raise
        return stream

    async def ping(self) -> float:
        """Send a PING and wait for its echo; returns the round trip in seconds."""
        if self._closed:
            raise SpdyError("the SPDY session has ended")
        ping_id = self._next_ping_id
        self._next_ping_id = (ping_id + 2) & 0xFFFFFFFF or (2 if self._server else 1)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = future
        started = time.monotonic()
        try:
            self._send_control(PING, 0, struct.pack(">I", ping_id))
            await future
        finally:
            self._pings.pop(ping_id, None)
        return time.monotonic() - started

    async def close(self) -> None:
        """Send GOAWAY and close the connection. Streams end: reads return b"" after
        buffered data, writes fail. Idempotent."""
        if not self._closed:
            self._goaway_sent = True
            self._send_control(GOAWAY, 0, self._goaway_payload(GOAWAY_OK))
            self._shutdown()
        self._writer.close()
        try:
            # close() flushes what is buffered first; a peer that stopped reading
            # would hold us here forever.
            await asyncio.wait_for(self._writer.wait_closed(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._writer.transport.abort()
        except (ConnectionError, OSError):
            pass

    # --- frame output ---

    def _send_control(self, frame_type: int, flags: int, payload: bytes) -> None:
        # Frames are written whole and synchronously, so frames from different tasks
        # never interleave. Nothing is written once the session has ended.
        if self._closed:
            return
        if len(payload) > MAX_FRAME_LENGTH:
            raise SpdyError(f"control frame of {len(payload)} bytes is too large")
        head = struct.pack(">HHI", 0x8000 | VERSION, frame_type, flags << 24 | len(payload))
        self._writer.write(head + payload)

    def _send_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._closed:
            return
        self._writer.write(struct.pack(">II", stream_id, flags << 24 | len(payload)) + payload)

    def _send_headers(
        self, frame_type: int, flags: int, fields: bytes, headers: Mapping[str, str]
    ) -> None:
        if self._closed:
            return  # compressing without sending would desynchronise the zlib stream
        self._send_control(frame_type, flags, fields + self._compress(encode_header_block(headers)))

    def _compress(self, block: bytes) -> bytes:
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._shutdown()
            raise SpdyError(f"the SPDY connection was lost: {exc}") from exc

    def _goaway_payload(self, status: int) -> bytes:
        return struct.pack(">II", self._last_peer_stream_id, status)

    # --- flow control ---

    def _enforcing(self) -> bool:
        if self._flow_control is not None:
            return self._flow_control
        return self._peer_keeps_windows

    async def _reserve(self, stream: SpdyStream, wanted: int) -> int:
        """Wait until `stream` may send, then charge and return how many bytes."""
        while True:
            stream._check_writable()
            limit = MAX_DATA_CHUNK
            if self._enforcing():
                limit = min(limit, stream._send_window, self._send_window)
            if limit > 0:
                count = min(wanted, limit)
                # Windows are charged even when not enforced, so they are right if the
                # peer starts keeping them later.
                stream._send_window -= count
                self._send_window -= count
                return count
            await self._window_changed.wait()

    def _consumed(self, stream: SpdyStream | None, count: int) -> None:
        """`count` received bytes left our buffers: grant them back to the peer, in
        batches of half a window so updates stay few but the pipe never runs dry."""
        if count <= 0:
            return
        self._session_unacked += count
        if self._session_unacked >= SESSION_WINDOW // 2:
            self._send_control(WINDOW_UPDATE, 0, struct.pack(">II", 0, self._session_unacked))
            self._session_unacked = 0
        if stream is None or stream._remote_fin or stream._reset_status is not None:
            return  # nothing more will come on it
        stream._unacked += count
        if stream._unacked >= STREAM_WINDOW // 2:
            self._send_control(WINDOW_UPDATE, 0, struct.pack(">II", stream.id, stream._unacked))
            stream._unacked = 0

    # --- frame input ---

    def _peer_id(self, stream_id: int) -> bool:
        return stream_id % 2 == (1 if self._server else 0)

    def _ever_opened(self, stream_id: int) -> bool:
        if self._peer_id(stream_id):
            return stream_id <= self._last_peer_stream_id
        return stream_id < self._next_stream_id

    def _inflate_headers(self, data: bytes) -> dict[str, str]:
        if not data:
            return {}
        try:
            block = self._inflate.decompress(data, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise SpdyError(f"header block does not decompress: {exc}") from exc
        if self._inflate.unconsumed_tail:
            raise SpdyError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(block)

    async def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise SpdyError("data frame on stream 0")
        stream = self._streams.get(stream_id)
        if stream is None or stream._remote_fin or stream._reset_status is not None:
            # Dropped, but it was charged to the session window: grant it back.
            self._consumed(None, len(payload))
            if stream is not None and stream._reset_status is None:
                stream.reset(STREAM_ALREADY_CLOSED)
            elif stream is None and not self._ever_opened(stream_id):
                self._send_control(RST_STREAM, 0, struct.pack(">II", stream_id, INVALID_STREAM))
            # else: in flight when we reset or forgot it; the spec says ignore.
            return
        # A peer keeping our window never gets here with a full buffer. One that
        # ignores it (spdystream) waits here, and TCP holds it back, rather than us
        # buffering without bound. An empty buffer always takes the frame, however big.
        while (
            stream._buffered
            and stream._buffered + len(payload) > STREAM_WINDOW
            and stream._reset_status is None
            and not self._closed
        ):
            await stream._space.wait()
        if stream._reset_status is not None or self._closed:
            self._consumed(None, len(payload))
            return
        if payload:
            stream._chunks.append(payload)
            stream._buffered += len(payload)
            stream._data.notify()
        if flags & FLAG_FIN:
            stream._on_remote_fin()

    async def _on_control(self, frame_type: int, flags: int, payload: bytes) -> None:
        if frame_type == SYN_STREAM:
            self._on_syn_stream(flags, payload)
        elif frame_type in (SYN_REPLY, HEADERS):
            self._on_reply_or_headers(frame_type, flags, payload)
        elif frame_type == RST_STREAM:
            self._expect_length("RST_STREAM", payload, 8)
            stream_id, status = struct.unpack(">II", payload)
            stream = self._streams.get(stream_id & MAX_STREAM_ID)
            if stream is not None:
                stream._on_reset(status, by_peer=True)
        elif frame_type == SETTINGS:
            self._on_settings(payload)
        elif frame_type == PING:
            self._expect_length("PING", payload, 4)
            (ping_id,) = struct.unpack(">I", payload)
            if ping_id % 2 == self._next_ping_id % 2:
                future = self._pings.get(ping_id)
                if future is not None and not future.done():
                    future.set_result(None)
            else:
                self._send_control(PING, 0, payload)  # the peer's: echo it
        elif frame_type == GOAWAY:
            self._on_goaway(payload)
        elif frame_type == WINDOW_UPDATE:
            self._on_window_update(payload)
        # Unknown types (CREDENTIAL among them) must be ignored, says the spec.

    @staticmethod
    def _expect_length(name: str, payload: bytes, length: int) -> None:
        if len(payload) != length:
            raise SpdyError(f"{name} frame of {len(payload)} bytes, expected {length}")

    def _on_syn_stream(self, flags: int, payload: bytes) -> None:
        if len(payload) < 10:
            raise SpdyError(f"SYN_STREAM frame of {len(payload)} bytes, expected 10 or more")
        (stream_id,) = struct.unpack_from(">I", payload, 0)
        stream_id &= MAX_STREAM_ID
        headers = self._inflate_headers(payload[10:])  # keep the zlib stream in step
        if not self._peer_id(stream_id) or stream_id <= self._last_peer_stream_id:
            # Draft 3, 2.3.2: ids from the wrong side or going backwards are a
            # session error.
            raise SpdyError(f"SYN_STREAM with invalid stream id {stream_id}")
        self._last_peer_stream_id = stream_id
        refuse = self._closed or self._goaway_sent or self._goaway_received
        if refuse or self._accept.qsize() >= MAX_PENDING_STREAMS:
            self._send_control(RST_STREAM, 0, struct.pack(">II", stream_id, REFUSED_STREAM))
            return
        stream = SpdyStream(
            self, stream_id, headers, send_window=self._peer_initial_window, local=False
        )
        # A unidirectional stream is the peer's to write only: no reply, no data back.
        stream._needs_reply = not flags & FLAG_UNIDIRECTIONAL
        stream._local_fin = bool(flags & FLAG_UNIDIRECTIONAL)
        stream._remote_fin = bool(flags & FLAG_FIN)
        self._streams[stream_id] = stream
        self._forget_if_done(stream)
        self._accept.put_nowait(stream)

    def _on_reply_or_headers(self, frame_type: int, flags: int, payload: bytes) -> None:
        name = "SYN_REPLY" if frame_type == SYN_REPLY else "HEADERS"
        if len(payload) < 4:
            raise SpdyError(f"{name} frame of {len(payload)} bytes, expected 4 or more")
        (stream_id,) = struct.unpack_from(">I", payload, 0)
        headers = self._inflate_headers(payload[4:])
        stream = self._streams.get(stream_id & MAX_STREAM_ID)
        if stream is None or stream._reset_status is not None:
            return  # raced with a reset; ignore
        if frame_type == SYN_REPLY:
            if not stream._local or stream._replied.done():
                stream.reset(STREAM_IN_USE)  # a reply we did not ask for, or a second one
                return
            stream.reply_headers = headers
            stream._replied.set_result(None)
        else:
            target = stream.reply_headers if stream._local else stream.headers
            target.update(headers)
        if flags & FLAG_FIN:
            stream._on_remote_fin()

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise SpdyError(f"SETTINGS frame of {len(payload)} bytes, expected 4 or more")
        (count,) = struct.unpack_from(">I", payload, 0)
        if len(payload) != 4 + 8 * count:
            raise SpdyError(f"SETTINGS frame of {len(payload)} bytes for {count} entries")
        self._peer_keeps_windows = True
        for index in range(count):
            flags_and_id, value = struct.unpack_from(">II", payload, 4 + 8 * index)
            if flags_and_id & 0xFFFFFF != SETTINGS_INITIAL_WINDOW_SIZE:
                continue  # the others only advise; nothing here uses them
            if value > MAX_WINDOW:
                raise SpdyError(f"SETTINGS initial window {value} is too large")
            # The new initial window applies to open streams too, as a delta.
            delta = value - self._peer_initial_window
            self._peer_initial_window = value
            for stream in self._streams.values():
                stream._send_window += delta
        self._window_changed.notify()

    def _on_goaway(self, payload: bytes) -> None:
        if len(payload) not in (4, 8):  # 4 is draft 2's form; take it too
            raise SpdyError(f"GOAWAY frame of {len(payload)} bytes, expected 8")
        (last_good,) = struct.unpack_from(">I", payload, 0)
        last_good &= MAX_STREAM_ID
        if self._goaway_received:
            return
        self._goaway_received = True
        # Streams we opened past the peer's last good id were never seen by it.
        for stream in list(self._streams.values()):
            if stream._local and stream.id > last_good:
                stream._on_reset(REFUSED_STREAM, by_peer=True)
        self._accept.put_nowait(None)  # the peer opens no more; queued ones still count

    def _on_window_update(self, payload: bytes) -> None:
        self._expect_length("WINDOW_UPDATE", payload, 8)
        stream_id, delta = struct.unpack(">II", payload)
        stream_id &= MAX_STREAM_ID
        delta &= MAX_WINDOW
        self._peer_keeps_windows = True
        if stream_id == 0:
            self._send_window += delta
            if self._send_window > MAX_WINDOW:
                raise SpdyError("session window grown past 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return  # updates for finished streams are normal; ignore
            stream._send_window += delta
            if stream._send_window > MAX_WINDOW:
                stream.reset(FLOW_CONTROL_ERROR)
        self._window_changed.notify()

    # --- bookkeeping ---

    def _forget_if_done(self, stream: SpdyStream) -> None:
        done = stream._local_fin and stream._remote_fin
        if done or stream._reset_status is not None:
            self._streams.pop(stream.id, None)

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            stream._on_session_end()
        self._streams.clear()
        self._window_changed.notify()
        for future in self._pings.values():
            if not future.done():
                future.set_exception(SpdyError("the SPDY session ended before the PING echo"))
                future.exception()
        self._accept.put_nowait(None)
