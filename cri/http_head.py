"""The little HTTP/1.1 that skiff's own servers (streaming, metrics) speak: reading a
request's head, and a short answer after which the connection closes."""

from __future__ import annotations

import asyncio
import contextlib
import http
import urllib.parse
from dataclasses import dataclass, field


class MalformedHead(ValueError):
    """Not an HTTP/1.x request head; the message says what is wrong."""


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str  # without the query
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    values: dict[str, list[str]]  # every value of each header, in order
    query: dict[str, list[str]] = field(default_factory=dict)  # every value of each parameter


def parse_request_head(head: bytes) -> RequestHead:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise MalformedHead("not an HTTP/1.x request")
    method, target, _ = parts
    headers: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MalformedHead("malformed header line")
        key, value = name.strip().lower(), value.strip()
        values.setdefault(key, []).append(value)
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    path, _, query = target.partition("?")
    return RequestHead(method, path, headers, values, urllib.parse.parse_qs(query))


async def respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "text/plain",
    *,
    send_body: bool = True,
    extra: dict[str, str] | None = None,
) -> None:
    fields = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items()
    )
    writer.write(head.encode("latin-1") + b"\r\n" + (body if send_body else b""))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
