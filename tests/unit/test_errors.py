from __future__ import annotations

import grpc

from cri.errors import (
    MAX_STATUS_MESSAGE,
    InvalidArgument,
    NotFound,
    clip,
    not_built,
    status_message,
    status_of,
)


class LowerLayerMissing(Exception):
    grpc_status = "NOT_FOUND"


def test_status_codes() -> None:
    assert status_of(NotFound("sandbox x not found")) == grpc.StatusCode.NOT_FOUND
    assert status_of(InvalidArgument("bad")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(not_built("Exec")) == grpc.StatusCode.UNIMPLEMENTED
    assert "Exec" in str(not_built("Exec"))
    # Lower layers cannot import cri/: they name the status instead.
    assert status_of(LowerLayerMissing("layer gone")) == grpc.StatusCode.NOT_FOUND
    # Anything else is a bug, not a client error.
    assert status_of(KeyError("x")) is None


def test_clip() -> None:
    assert clip("short") == "short"
    long = clip("x" * 1000)
    assert len(long) == 80
    assert long.endswith("...")


def test_status_messages_fit_in_the_trailers() -> None:
    # A message quoting a client's 10 KB value would exceed the client's 8 KiB limit for
    # trailers and reach it as RESOURCE_EXHAUSTED instead of its real status.
    message = status_message(NotFound(f"container {'a' * 10_000!r} not found"))
    assert len(message) == MAX_STATUS_MESSAGE < 8192
    assert message.startswith("container 'aaa") and message.endswith("...")
    assert status_message(NotFound("sandbox x not found")) == "sandbox x not found"
