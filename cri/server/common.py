"""What every servicer module shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

import grpc.aio

from cri.errors import not_built

Context = grpc.aio.ServicerContext[Any, Any]

__all__ = ["Context", "batches", "not_built", "not_built_stream"]

T = TypeVar("T")

#: Items per message of a Stream* response: far below the message size limit.
STREAM_BATCH = 200


def batches(items: Sequence[T], size: int = STREAM_BATCH) -> Iterator[Sequence[T]]:
    """A Stream* response's items, ``size`` per message; one empty message for none."""
    for start in range(0, max(len(items), 1), size):
        yield items[start : start + size]


async def not_built_stream(rpc: str) -> AsyncIterator[Any]:
    """A server-streaming RPC that is not built yet: fails before sending anything."""
    raise not_built(rpc)
    yield  # pragma: no cover - makes this an async generator
