from __future__ import annotations

import grpc

from cri.errors import InvalidArgument, NotFound, clip, not_built, status_of


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
