"""The request heads skiff's own HTTP servers read."""

from __future__ import annotations

import pytest

from cri.http_head import MalformedHead, parse_request_head


def test_a_request_head_with_repeated_headers() -> None:
    head = (
        b"GET /exec/abc?x=1 HTTP/1.1\r\nHost: a\r\n"
        b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
        b"X-Stream-Protocol-Version: channel.k8s.io\r\n\r\n"
    )
    request = parse_request_head(head)
    assert (request.method, request.path) == ("GET", "/exec/abc")
    assert request.headers["host"] == "a"
    assert request.headers["x-stream-protocol-version"] == "v4.channel.k8s.io, channel.k8s.io"
    assert request.values["x-stream-protocol-version"] == ["v4.channel.k8s.io", "channel.k8s.io"]


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"GET /metrics\r\n\r\n", "not an HTTP/1.x request"),
        (b"\x16\x03\x01 TLS hello\r\n\r\n", "not an HTTP/1.x request"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", "malformed header line"),
    ],
)
def test_what_is_not_a_request_head(head: bytes, why: str) -> None:
    with pytest.raises(MalformedHead, match=why):
        parse_request_head(head)
