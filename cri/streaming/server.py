"""The streaming server behind the URLs that Exec, Attach and PortForward return.

A client (the kubelet's proxy, crictl) sends an HTTP/1.1 request for the URL and
upgrades it to SPDY/3.1 or to a WebSocket; the token in the URL names the request the
RPC recorded. A token works once and expires after `streaming.token_ttl` seconds; an
unknown, used or expired one gets 404 and nothing runs.

Over SPDY the client opens one stream per channel (`streamtype` header: stdin, stdout,
stderr, error, resize; for port forwarding data/error streams with `port` and
`requestid`). Over a WebSocket each message starts with its channel number (stdin 0,
stdout 1, stderr 2, error 3, resize 4). Either way an exec ends with a Kubernetes
Status object on the error channel carrying the exit code.

Port forwarding over a WebSocket comes in two forms: SPDY tunnelled through it
(`SPDY/3.1+portforward.k8s.io`, what kubectl speaks), or the channel protocol, where the
URL's `port` parameters name the ports and port i gets data channel 2i and error
channel 2i+1, each opened by the server with the port number (two bytes, little
endian); the WebSocket closes once every port's connection has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cri.config import StreamingConfig
from cri.http_head import MalformedHead, parse_request_head, respond
from cri.streaming.spdy import SpdySession, SpdyStream
from cri.streaming.websocket import (
    ChannelSocket,
    WebSocket,
    WebSocketError,
    handshake_response,
    stream_pair,
)
from network.portforward import open_in_netns
from runtime.attach import AttachError, attach
from runtime.exec_session import ExecError, ExecOptions, start_exec
from runtime.oci_runtime import OciRuntime

log = logging.getLogger("skiff.streaming")

EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
WS_EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
PORTFORWARD_PROTOCOL = "portforward.k8s.io"
SPDY_OVER_WEBSOCKET = "SPDY/3.1+portforward.k8s.io"
# "" is a client that names no subprotocol: the original binary channel protocol.
WS_PORTFORWARD_PROTOCOLS = (SPDY_OVER_WEBSOCKET, "v4.channel.k8s.io", "channel.k8s.io", "")
STREAM_CREATION_TIMEOUT = 30.0
MAX_HEADER_BYTES = 64 * 1024
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


@dataclass
class PendingRequest:
    kind: str  # exec | attach | portforward
    runtime: OciRuntime | None = None
    container_id: str = ""
    command: tuple[str, ...] = ()
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    netns: str | None = None
    ports: tuple[int, ...] = ()  # PortForward's ports: the default when the URL names none
    expires: float = field(default=0.0)


def status_object(exit_code: int | None, message: str = "") -> bytes:
    """The Kubernetes Status an exec ends with (success, or the exit code as a cause)."""
    if exit_code == 0 and not message:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    if exit_code is None:
        return json.dumps(
            {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}
        ).encode()
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    ).encode()


class StreamingTLSError(Exception):
    """streaming.tls_cert / streaming.tls_key cannot be used; the message says which
    file and why."""


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal; with an
    # empty password its decryption fails and the error says so.
    return b""


#: What each file must hold, as the PEM header that starts it.
_PEM_MARKERS = (
    ("streaming.tls_cert", b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    ("streaming.tls_key", b"PRIVATE KEY-----", "a PEM private key"),
)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server-side TLS context for the configured certificate (chain) and key;
    StreamingTLSError naming the setting, the file and the problem otherwise."""
    for (setting, marker, what), path in zip(_PEM_MARKERS, (cert, key), strict=True):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise StreamingTLSError(
                f"{setting} {path}: cannot read it: {exc.strerror}; point it at a readable "
                "PEM file or leave tls_cert and tls_key empty for plain http streaming"
            ) from None
        if marker not in data:
            raise StreamingTLSError(f"{setting} {path}: not {what}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problem = "the key does not belong to the certificate"
        elif "PEM lib" in str(exc):  # OpenSSL gives no reason code for these
            problem = "damaged PEM data, or an encrypted key (skiffd takes unencrypted keys)"
        else:
            problem = str(exc.reason or exc)
        raise StreamingTLSError(
            f"streaming.tls_cert {cert} with streaming.tls_key {key}: unusable: {problem}"
        ) from None
    return context


class _Channels(Protocol):
    """What an exec or attach needs from a client connection, SPDY or WebSocket."""

    async def read_stdin(self) -> bytes: ...
    async def write(self, channel: int, data: bytes) -> None: ...
    async def next_resize(self) -> tuple[int, int] | None: ...
    async def finish(self, status: bytes) -> None: ...
    def gone(self) -> asyncio.Event: ...


def _sizes(buffer: bytearray) -> list[tuple[int, int]]:
    """Complete TerminalSize JSON objects in `buffer` (removed from it). An object whose
    Width or Height is no integer is dropped, like any other JSON value."""
    decoder = json.JSONDecoder()
    found: list[tuple[int, int]] = []
    while True:
        # surrogateescape keeps one character per undecodable byte, so what is left of
        # the text measures exactly what is left of the buffer.
        text = buffer.decode(errors="surrogateescape").lstrip()
        if not text:
            buffer.clear()
            return found
        try:
            obj, end = decoder.raw_decode(text)
        except (ValueError, RecursionError):
            return found
        del buffer[: len(buffer) - len(text[end:].encode(errors="surrogateescape"))]
        if isinstance(obj, dict):
            width, height = obj.get("Width", 0), obj.get("Height", 0)
            if type(width) is int and type(height) is int:
                found.append((width, height))


class _SpdyChannels:
    def __init__(self, streams: Mapping[str, SpdyStream], session: SpdySession) -> None:
        self.streams = streams
        self.session = session
        self._gone = asyncio.Event()
        self._resize_buffer = bytearray()

    async def read_stdin(self) -> bytes:
        stream = self.streams.get("stdin")
        return await stream.read() if stream is not None else b""

    async def write(self, channel: int, data: bytes) -> None:
        name = {STDOUT: "stdout", STDERR: "stderr", ERROR: "error"}[channel]
        stream = self.streams.get(name)
        if stream is not None:
            await stream.write(data)

    async def next_resize(self) -> tuple[int, int] | None:
        stream = self.streams.get("resize")
        if stream is None:
            return None
        while True:
            sizes = _sizes(self._resize_buffer)
            if sizes:
                return sizes[0]
            chunk = await stream.read()
            if not chunk:
                return None
            self._resize_buffer.extend(chunk)

    async def finish(self, status: bytes) -> None:
        for name in ("stdout", "stderr"):
            stream = self.streams.get(name)
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.close()
        error = self.streams.get("error")
        if error is not None:
            with contextlib.suppress(Exception):
                await error.write(status)
                await error.close()
        await self.session.close()

    def gone(self) -> asyncio.Event:
        return self._gone


class _WebSocketChannels:
    def __init__(self, channels: ChannelSocket, protocol: str) -> None:
        self.channels = channels
        self.protocol = protocol
        self.stdin: asyncio.Queue[bytes] = asyncio.Queue(16)
        self.resizes: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        self._gone = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        buffer = bytearray()
        try:
            while True:
                message = await self.channels.receive()
                if message is None:
                    break
                channel, data = message
                if channel == STDIN:
                    if data:
                        await self.stdin.put(data)
                elif channel == RESIZE:
                    buffer.extend(data)
                    for size in _sizes(buffer):
                        await self.resizes.put(size)
                elif channel == CLOSE and data[:1] == bytes([STDIN]):
                    await self.stdin.put(b"")
        except (WebSocketError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._gone.set()
            await self.stdin.put(b"")
            await self.resizes.put(None)

    async def read_stdin(self) -> bytes:
        return await self.stdin.get()

    async def write(self, channel: int, data: bytes) -> None:
        await self.channels.send(channel, data)

    async def next_resize(self) -> tuple[int, int] | None:
        return await self.resizes.get()

    async def finish(self, status: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.channels.send(ERROR, status)
            await self.channels.ws.close()
        self._reader.cancel()

    def gone(self) -> asyncio.Event:
        return self._gone


class StreamingServer:
    def __init__(self, config: StreamingConfig) -> None:
        self.config = config
        self._pending: dict[str, PendingRequest] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.base_url = ""

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; raises StreamingTLSError for an unusable certificate or key, OSError
        when the address cannot be bound."""
        context = None
        if self.config.tls_cert:
            context = tls_context(self.config.tls_cert, self.config.tls_key)
        self._server = await asyncio.start_server(
            self._serve, self.config.address, self.config.port, ssl=context, limit=MAX_HEADER_BYTES
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if context else "http"
        self.base_url = f"{scheme}://{host}:{port}"
        log.info("streaming server listening", extra={"url": self.base_url})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # --- tokens ------------------------------------------------------------------------

    def register(self, request: PendingRequest) -> str:
        now = time.monotonic()
        for token, pending in list(self._pending.items()):
            if pending.expires <= now:
                del self._pending[token]
        token = secrets.token_urlsafe(24)
        request.expires = now + self.config.token_ttl
        self._pending[token] = request
        return f"{self.base_url}/{request.kind}/{token}"

    def _take(self, kind: str, token: str) -> PendingRequest | None:
        pending = self._pending.pop(token, None)
        if pending is None or pending.kind != kind or pending.expires <= time.monotonic():
            return None
        return pending

    # --- HTTP ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.LimitOverrunError, TimeoutError):
            await _respond(writer, 400, "request headers too large or too slow")
            return
        try:
            request = parse_request_head(head)
        except MalformedHead as exc:
            await _respond(writer, 400, str(exc))
            return
        if request.method not in ("GET", "POST"):
            await _respond(writer, 400, f"method {request.method} is not served here")
            return
        headers = request.headers
        path = request.path.strip("/").split("/")
        if len(path) != 2 or path[0] not in ("exec", "attach", "portforward"):
            await _respond(writer, 404, "not found")
            return
        kind, token = path
        upgrade = headers.get("upgrade", "").lower()
        if "upgrade" not in headers.get("connection", "").lower() or upgrade not in (
            "spdy/3.1",
            "websocket",
        ):
            await _respond(writer, 400, "expected an upgrade to SPDY/3.1 or websocket")
            return
        pending = self._take(kind, token)
        if pending is None:
            await _respond(writer, 404, "unknown or expired streaming token")
            return
        if upgrade == "spdy/3.1":
            await self._spdy(
                pending, request.values.get("x-stream-protocol-version", []), reader, writer
            )
        else:
            await self._websocket(pending, headers, request.query, reader, writer)

    async def _spdy(
        self,
        pending: PendingRequest,
        offered: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        versions = [v.strip() for value in offered for v in value.split(",") if v.strip()]
        supported = (PORTFORWARD_PROTOCOL,) if pending.kind == "portforward" else EXEC_PROTOCOLS
        chosen = next((v for v in supported if v in versions), "")
        if versions and not chosen:
            await _respond(writer, 403, f"no supported stream protocol among {', '.join(versions)}")
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            + (f"X-Stream-Protocol-Version: {chosen}\r\n".encode() if chosen else b"")
            + b"\r\n"
        )
        await writer.drain()
        session = SpdySession(reader, writer, server=True)
        runner = asyncio.get_running_loop().create_task(session.run())
        try:
            if pending.kind == "portforward":
                await self._spdy_portforward(session, pending)
            else:
                streams = await self._expected_streams(session, pending)
                if streams is not None:
                    channels = _SpdyChannels(streams, session)
                    runner.add_done_callback(lambda _t: channels.gone().set())
                    await self._run(pending, channels)
        finally:
            await session.close()
            runner.cancel()

    async def _expected_streams(
        self, session: SpdySession, pending: PendingRequest
    ) -> dict[str, SpdyStream] | None:
        wanted = {"error"}
        if pending.stdin:
            wanted.add("stdin")
        if pending.stdout:
            wanted.add("stdout")
        if pending.stderr and not pending.tty:
            wanted.add("stderr")
        if pending.tty:
            wanted.add("resize")
        streams: dict[str, SpdyStream] = {}
        deadline = time.monotonic() + STREAM_CREATION_TIMEOUT
        while not wanted <= streams.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                stream = await asyncio.wait_for(session.accept_stream(), remaining)
            except TimeoutError:
                return None
            if stream is None:
                return None
            streams[stream.headers.get("streamtype", "")] = stream
        return streams

    async def _websocket(
        self,
        pending: PendingRequest,
        headers: Mapping[str, str],
        query: Mapping[str, list[str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        supported = WS_PORTFORWARD_PROTOCOLS if pending.kind == "portforward" else WS_EXEC_PROTOCOLS
        try:
            response, protocol = handshake_response(headers, supported)
        except WebSocketError as exc:
            await _respond(writer, 400, str(exc))
            return
        ports: tuple[int, ...] = ()
        if pending.kind == "portforward" and protocol != SPDY_OVER_WEBSOCKET:
            try:
                ports = _query_ports(query.get("port", []), pending.ports)
            except ValueError as exc:
                await _respond(writer, 400, str(exc))
                return
        writer.write(response)
        await writer.drain()
        ws = WebSocket(reader, writer, server=True)
        if pending.kind == "portforward":
            if protocol != SPDY_OVER_WEBSOCKET:
                await self._channel_portforward(ChannelSocket(ws, protocol), pending, ports)
                return
            tunnel_reader, tunnel_writer = stream_pair(ws)
            session = SpdySession(tunnel_reader, tunnel_writer, server=True)
            runner = asyncio.get_running_loop().create_task(session.run())
            try:
                await self._spdy_portforward(session, pending)
            finally:
                await session.close()
                runner.cancel()
            return
        channels = _WebSocketChannels(ChannelSocket(ws, protocol), protocol)
        # An empty message on the lowest channel we write tells the client we are ready
        # (what the kubelet's own streaming server does).
        ready = STDOUT if pending.stdout else STDERR if pending.stderr else ERROR
        await channels.write(ready, b"")
        await self._run(pending, channels)

    # --- exec and attach -----------------------------------------------------------------

    async def _run(self, pending: PendingRequest, channels: _Channels) -> None:
        if pending.kind == "exec":
            await self._exec(pending, channels)
        else:
            await self._attach(pending, channels)

    async def _exec(self, pending: PendingRequest, channels: _Channels) -> None:
        assert pending.runtime is not None
        try:
            session = await start_exec(
                pending.runtime,
                pending.container_id,
                ExecOptions(pending.command, tty=pending.tty, stdin=pending.stdin),
            )
        except Exception as exc:
            await channels.finish(status_object(None, f"exec failed: {exc}"))
            return
        log.info(
            "exec started",
            extra={"container_id": pending.container_id, "command": pending.command[0]},
        )

        async def pump(read: Any, channel: int) -> None:
            while data := await read():
                if pending.stdout or channel == STDERR:
                    await channels.write(channel, data)

        helpers = _input_pumps(pending, channels, session)
        outputs = [asyncio.ensure_future(pump(session.read_stdout, STDOUT))]
        if not pending.tty:
            outputs.append(asyncio.ensure_future(pump(session.read_stderr, STDERR)))
        waiter = asyncio.ensure_future(session.wait())
        gone = asyncio.ensure_future(channels.gone().wait())
        try:
            done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                # The client went away: the command must not outlive it.
                await session.kill()
                await waiter
                return
            await asyncio.wait(outputs, timeout=10)
            await channels.finish(status_object(waiter.result()))
        finally:
            for task in [*helpers, *outputs, gone]:
                task.cancel()
            if not waiter.done():
                await session.kill()
            # Output that never reached EOF (a daemon holding the pipes) frees its fds.
            await session.close()

    async def _attach(self, pending: PendingRequest, channels: _Channels) -> None:
        assert pending.runtime is not None
        try:
            session = await attach(pending.runtime, pending.container_id)
        except Exception as exc:
            await channels.finish(status_object(None, f"attach failed: {exc}"))
            return

        helpers = _input_pumps(pending, channels, session)
        gone = asyncio.ensure_future(channels.gone().wait())
        try:
            while True:
                reading = asyncio.ensure_future(session.read())
                done, _ = await asyncio.wait({reading, gone}, return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:
                    reading.cancel()
                    break
                item = reading.result()
                if item is None:
                    await channels.finish(status_object(0))
                    break
                name, data = item
                if name == "stderr" and pending.stderr:
                    await channels.write(STDERR, data)
                elif name == "stdout" and pending.stdout:
                    await channels.write(STDOUT, data)
        finally:
            for task in [*helpers, gone]:
                task.cancel()
            await session.detach()

    # --- port forwarding ---------------------------------------------------------------

    async def _spdy_portforward(self, session: SpdySession, pending: PendingRequest) -> None:
        errors: dict[str, SpdyStream] = {}
        tasks: set[asyncio.Task[None]] = set()
        try:
            while (stream := await session.accept_stream()) is not None:
                request_id = stream.headers.get("requestid", "")
                kind = stream.headers.get("streamtype", "")
                if kind == "error":
                    errors[request_id] = stream
                elif kind == "data":
                    task = asyncio.ensure_future(
                        self._spdy_forward(stream, errors, request_id, pending.netns)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    stream.reset()
        finally:
            for task in tasks:
                task.cancel()

    async def _spdy_forward(
        self,
        data: SpdyStream,
        errors: Mapping[str, SpdyStream],
        request_id: str,
        netns: str | None,
    ) -> None:
        async def report(message: str) -> None:
            await _report(errors.get(request_id), message)

        port_text = data.headers.get("port", "")
        try:
            port = int(port_text)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            await report(f"invalid port {port_text!r}")
            data.reset()
            return
        await self._forward(port, data, report, netns)

    async def _channel_portforward(
        self, channels: ChannelSocket, pending: PendingRequest, ports: tuple[int, ...]
    ) -> None:
        streams = [_PortChannel(channels, 2 * i) for i in range(len(ports))]
        for stream, port in zip(streams, ports, strict=True):
            opening = struct.pack("<H", port)
            await channels.send(stream.channel, opening)
            await channels.send(stream.channel + 1, opening)
        by_channel = {stream.channel: stream for stream in streams}

        async def receive() -> None:
            # The error channels carry nothing from the client; data goes to its port.
            while (message := await channels.receive()) is not None:
                channel, data = message
                if channel in by_channel and data:
                    await by_channel[channel].incoming.put(data)
            for stream in streams:  # the client is gone: so is every connection
                stream.reset()

        receiver = asyncio.ensure_future(receive())
        try:
            await asyncio.gather(
                *(
                    self._forward(port, stream, stream.report, pending.netns)
                    for stream, port in zip(streams, ports, strict=True)
                )
            )
        finally:
            receiver.cancel()
            await channels.close()

    async def _forward(
        self,
        port: int,
        data: _PortStream,
        report: Callable[[str], Awaitable[None]],
        netns: str | None,
    ) -> None:
        try:
            reader, writer = await open_in_netns(netns or "", port)
        except Exception as exc:
            log.warning("port forward failed", extra={"port": port, "error": str(exc)})
            await report(f"error forwarding port {port} to pod: {exc}")
            await data.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # As Go's dialer does (containerd's port-forward): no Nagle delay, which
            # with the peer's delayed ACK stalls a small write for 40 ms.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        async def upstream() -> None:
            while chunk := await data.read():
                writer.write(chunk)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()

        async def downstream() -> None:
            while chunk := await reader.read(64 * 1024):
                await data.write(chunk)
            await data.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except Exception as exc:
            log.debug("port forward connection ended", extra={"port": port, "error": str(exc)})
        finally:
            writer.close()
            # Unread data of a broken stream still holds session window: let it go.
            data.reset()


class _PortStream(Protocol):
    """One forwarded connection's client side: a SPDY data stream or a channel."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    def reset(self) -> None: ...


class _PortChannel:
    """A port's data channel of the WebSocket channel protocol, as a `_PortStream`; the
    channel after it reports errors. The protocol cannot half-close a channel, so the
    connection ends when the pod's side does."""

    def __init__(self, channels: ChannelSocket, channel: int) -> None:
        self.channels = channels
        self.channel = channel
        # Bounded: a pod that reads slowly stops the WebSocket being read, which pushes
        # back on the client through TCP.
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        self._closed = asyncio.Event()

    async def read(self) -> bytes:
        if self._closed.is_set():
            return b""
        getter = asyncio.ensure_future(self.incoming.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((getter, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not getter.done():
                getter.cancel()
        return getter.result() if getter.done() and not getter.cancelled() else b""

    async def write(self, data: bytes) -> None:
        await self.channels.send(self.channel, data)

    async def close(self) -> None:
        self._closed.set()

    def reset(self) -> None:
        """Ends the connection's client side: reads return the end of the stream."""
        self._closed.set()

    async def report(self, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.channels.send(self.channel + 1, message.encode())


def _query_ports(values: list[str], default: tuple[int, ...]) -> tuple[int, ...]:
    """The ports a channel-protocol port forward asks for in its URL (`port=8080`,
    repeated or comma-separated), else those PortForward named."""
    texts = [t.strip() for value in values for t in value.split(",") if t.strip()]
    if not texts:
        if not default:
            raise ValueError("query parameter 'port' is required")
        return default
    ports = []
    for text in texts:
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ValueError(f"invalid port {text[:20]!r}: expected 1-65535")
        ports.append(int(text))
    return tuple(ports)


class _Input(Protocol):
    """What exec and attach sessions take from the client."""

    async def write_stdin(self, data: bytes) -> None: ...
    async def close_stdin(self) -> None: ...
    async def resize(self, width: int, height: int) -> None: ...


def _input_pumps(
    pending: PendingRequest, channels: _Channels, session: _Input
) -> list[asyncio.Task[None]]:
    """Tasks carrying the client's stdin and terminal sizes to the session."""

    async def pump_stdin() -> None:
        # The process may close its stdin first: the client's input then has nowhere
        # to go, which is not an error of the exec or attach.
        with contextlib.suppress(ExecError, AttachError):
            while data := await channels.read_stdin():
                await session.write_stdin(data)
            await session.close_stdin()

    async def resizes() -> None:
        while (size := await channels.next_resize()) is not None:
            await session.resize(*size)

    helpers: list[asyncio.Task[None]] = []
    if pending.stdin:
        helpers.append(asyncio.ensure_future(pump_stdin()))
    if pending.tty:
        helpers.append(asyncio.ensure_future(resizes()))
    return helpers


async def _report(stream: SpdyStream | None, message: str) -> None:
    if stream is None:
        return
    with contextlib.suppress(Exception):
        await stream.write(message.encode())
        await stream.close()


async def _respond(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    await respond(writer, status, (message + "\n").encode())
