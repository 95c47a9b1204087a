"""The HTTP endpoint Prometheus scrapes: ``GET /metrics`` on ``metrics.address:port``.

A minimal HTTP/1.1 server on the daemon's event loop (asyncio streams, one request per
connection): the gauges it collects read the managers' in-memory indexes, which only
the event loop changes, so collecting there needs no locks. The format follows the
client's Accept header (Prometheus text, or OpenMetrics when asked for).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from cri.config import MetricsConfig
from cri.http_head import MalformedHead, parse_request_head, respond

log = logging.getLogger("skiff.metrics")

PATH = "/metrics"
MAX_HEAD_BYTES = 16 * 1024
# A scraper sends its request at once; a connection that does not is dropped.
HEAD_TIMEOUT = 10.0


class MetricsServer:
    def __init__(self, config: MetricsConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self.url = ""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen, when metrics are enabled; OSError when the address is unusable."""
        if not self.config.enabled:
            return
        self._server = await asyncio.start_server(
            self._serve, self.config.address, self.config.port, limit=MAX_HEAD_BYTES
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        self.url = f"http://{host}:{port}{PATH}"
        log.info("metrics server listening", extra={"url": self.url})

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (TimeoutError, asyncio.LimitOverrunError):
            await respond(writer, 400, b"request head too slow or too long\n")
            return
        try:
            request = parse_request_head(head)
        except MalformedHead as exc:
            await respond(writer, 400, f"{exc}\n".encode())
            return
        method, path, headers = request.method, request.path, request.headers
        if path != PATH:
            await respond(writer, 404, f"metrics are at {PATH}\n".encode())
            return
        if method not in ("GET", "HEAD"):
            await respond(writer, 405, b"use GET\n", extra={"Allow": "GET, HEAD"})
            return
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        try:
            body = encoder(self.registry)
        except Exception:
            log.error("collecting metrics failed", exc_info=True)
            await respond(writer, 500, b"collecting metrics failed; see the log\n")
            return
        await respond(writer, 200, body, content_type, send_body=method == "GET")
