"""The one place where errors become gRPC statuses, and where every call is logged and
counted.

Servicers raise typed errors (the kinds of base/errors.py, which cri.errors maps to
status codes); this interceptor aborts the call with that code and the error's
message. Anything else is a bug: the client gets INTERNAL naming the RPC, the log gets
the traceback. Each call is logged at debug level with its method, duration, status
and the ids it carried; request bodies are never logged (they can hold credentials).
Each call also moves the per-method request counter and latency histogram (cri.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from api.runtime.v1 import api_pb2
from base import failpoints
from cri.encoded import Encoded
from cri.errors import clip, disk_full, status_message, status_of, status_of_typed
from cri.metrics import Metrics

log = logging.getLogger("skiff.rpc")

# Request fields that identify the object a call is about; safe to log.
_ID_FIELDS = ("pod_sandbox_id", "container_id")

#: The CRI's RPCs: the operations the failpoints of their durable steps are named by.
CRI_RPCS = frozenset(
    method.name
    for service in api_pb2.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)


def _ids(request: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _ID_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            out[name] = clip(value)
    return out


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


async def _fail(
    context: grpc.aio.ServicerContext[Any, Any],
    rpc: str,
    exc: Exception,
    ids: dict[str, str] | None = None,
) -> None:
    code = status_of(exc)
    if disk_full(exc) and status_of_typed(exc) is None:
        # A write deep down found the disk full: the client learns the call and what
        # it was about, the log where it happened.
        log.warning("disk full", exc_info=exc, extra={"rpc": rpc, **(ids or {})})
        about = "".join(f" {name}={value}" for name, value in (ids or {}).items())
        message = f"{rpc}{about}: {status_message(exc)}"
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    if code is None:
        # A bug's details stay in the log: the kubelet copies messages into pod events,
        # and an exception may quote what the client sent (a token, say).
        error_id = secrets.token_hex(4)
        log.error("internal error", exc_info=exc, extra={"rpc": rpc, "error_id": error_id})
        code = grpc.StatusCode.INTERNAL
        message = f"{rpc}: internal error {error_id}; skiffd's log has its details"
    else:
        message = status_message(exc)
    await context.abort(code, message)


def _record_call(
    metrics: Metrics, rpc: str, start: float, code: grpc.StatusCode, ids: dict[str, str]
) -> None:
    """Count and time the call (cri.metrics) and log it at debug level."""
    elapsed = time.monotonic() - start
    metrics.record_rpc(rpc, code.name, elapsed)
    if log.isEnabledFor(logging.DEBUG):
        elapsed_ms = round(elapsed * 1000, 3)
        log.debug("rpc", extra={"rpc": rpc, "status": code.name, "duration_ms": elapsed_ms, **ids})


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # One wrapped handler per method, made at its first call: every call paid for
        # building them anew.
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        try:
            return self._handlers[method]
        except KeyError:
            pass
        handler = self._wrapped(await continuation(handler_call_details), _short(method))
        self._handlers[method] = handler
        return handler

    def _wrapped(
        self, handler: grpc.RpcMethodHandler[Any, Any] | None, rpc: str
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler is None:
            return handler
        serializer = _passing_encoded(handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(self.metrics, rpc, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(self.metrics, rpc, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=serializer,
            )
        return handler


def _passing_encoded(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The method's serializer, but an answer already encoded (cri.server.encoded) is
    sent as it is."""
    if serialize is None:
        return None

    def serialize_or_pass(response: Any) -> bytes:
        if isinstance(response, Encoded):
            return response.data
        return serialize(response)

    return serialize_or_pass


def _wrap_unary(metrics: Metrics, rpc: str, inner: Any) -> Any:
    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        start, ids = time.monotonic(), _ids(request)
        try:
            with failpoints.operation(rpc):
                response = await inner(request, context)
        except asyncio.CancelledError:
            _record_call(metrics, rpc, start, grpc.StatusCode.CANCELLED, ids)
            raise
        except grpc.aio.AbortError:
            _record_call(metrics, rpc, start, context.code() or grpc.StatusCode.UNKNOWN, ids)
            raise
        except Exception as exc:
            _record_call(metrics, rpc, start, status_of(exc) or grpc.StatusCode.INTERNAL, ids)
            await _fail(context, rpc, exc, ids)
        _record_call(metrics, rpc, start, grpc.StatusCode.OK, ids)
        return response

    return unary_unary


def _wrap_stream(metrics: Metrics, rpc: str, inner: Any) -> Any:
    async def unary_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        start, ids = time.monotonic(), _ids(request)
        try:
            async for item in inner(request, context):
                yield item
        except asyncio.CancelledError:
            _record_call(metrics, rpc, start, grpc.StatusCode.CANCELLED, ids)
            raise
        except grpc.aio.AbortError:
            _record_call(metrics, rpc, start, context.code() or grpc.StatusCode.UNKNOWN, ids)
            raise
        except Exception as exc:
            _record_call(metrics, rpc, start, status_of(exc) or grpc.StatusCode.INTERNAL, ids)
            await _fail(context, rpc, exc, ids)
        _record_call(metrics, rpc, start, grpc.StatusCode.OK, ids)

    return unary_stream
