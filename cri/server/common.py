"""What every servicer module shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from cri.errors import not_built

Context = grpc.aio.ServicerContext[Any, Any]

__all__ = ["Context", "not_built", "not_built_stream"]


async def not_built_stream(rpc: str) -> AsyncIterator[Any]:
    """A server-streaming RPC that is not built yet: fails before sending anything."""
    raise not_built(rpc)
    yield  # pragma: no cover - makes this an async generator
