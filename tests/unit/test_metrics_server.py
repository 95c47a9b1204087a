"""The metrics endpoint on loopback: what it answers to a scraper and to anything else,
and that it starts only when enabled and fails clearly on a taken port."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri.config import MetricsConfig
from cri.metrics import Metrics
from cri.metrics_server import MetricsServer


async def _request(url_host: str, port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(url_host, port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _get(path: str, method: str = "GET", accept: str = "") -> bytes:
    extra = f"Accept: {accept}\r\n" if accept else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def _port(server: MetricsServer) -> int:
    return int(server.url.rsplit(":", 1)[1].split("/")[0])


def test_scrape_and_other_requests() -> None:
    metrics = Metrics()
    metrics.record_rpc("Version", "OK", 0.01)
    server = MetricsServer(MetricsConfig(enabled=True, port=0), metrics.registry)

    async def body() -> None:
        await server.start()
        try:
            assert server.url.startswith("http://127.0.0.1:")
            port = _port(server)
            status, headers, text = await _request("127.0.0.1", port, _get("/metrics"))
            assert status == 200
            assert headers["content-type"].startswith("text/plain")
            assert int(headers["content-length"]) == len(text)
            names = {f.name for f in text_string_to_metric_families(text.decode())}
            assert "skiff_grpc_requests" in names

            status, headers, text = await _request(
                "127.0.0.1", port, _get("/metrics", accept="application/openmetrics-text")
            )
            assert status == 200
            assert headers["content-type"].startswith("application/openmetrics-text")
            assert text.endswith(b"# EOF\n")

            status, headers, text = await _request("127.0.0.1", port, _get("/metrics", "HEAD"))
            assert (status, text) == (200, b"")
            assert int(headers["content-length"]) > 0

            assert (await _request("127.0.0.1", port, _get("/")))[0] == 404
            status, headers, _ = await _request("127.0.0.1", port, _get("/metrics", "POST"))
            assert (status, headers["allow"]) == (405, "GET, HEAD")
            assert (await _request("127.0.0.1", port, b"nonsense\r\n\r\n"))[0] == 400
        finally:
            await server.stop()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(body())


def test_a_collector_failure_is_a_500_not_a_dead_server() -> None:
    metrics = Metrics()

    class Broken:
        def collect(self) -> list[object]:
            raise RuntimeError("boom")

    metrics.registry.register(Broken())  # type: ignore[arg-type]
    server = MetricsServer(MetricsConfig(enabled=True, port=0), metrics.registry)

    async def body() -> None:
        await server.start()
        try:
            assert (await _request("127.0.0.1", _port(server), _get("/metrics")))[0] == 500
            assert (await _request("127.0.0.1", _port(server), _get("/metrics")))[0] == 500
        finally:
            await server.stop()

    asyncio.run(body())


def test_disabled_listens_nowhere_and_a_taken_port_fails_start() -> None:
    async def body() -> None:
        off = MetricsServer(MetricsConfig(enabled=False, port=0), Metrics().registry)
        await off.start()
        assert off.url == ""
        await off.stop()

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            clash = MetricsServer(MetricsConfig(enabled=True, port=port), Metrics().registry)
            with pytest.raises(OSError):
                await clash.start()

    asyncio.run(body())


def test_stop_does_not_wait_for_an_idle_connection() -> None:
    server = MetricsServer(MetricsConfig(enabled=True, port=0), Metrics().registry)

    async def body() -> None:
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
        await asyncio.sleep(0.1)  # the server is waiting for a request head
        loop = asyncio.get_running_loop()
        began = loop.time()
        await server.stop()
        assert loop.time() - began < 1.0
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
        writer.close()

    asyncio.run(body())
