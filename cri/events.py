"""Container lifecycle events for GetContainerEvents (the kubelet's evented PLEG).

The managers publish an event after each change of a container or a pod sandbox is
recorded; every subscriber gets every event, in publication order. The event message
is built once per event, at publication, by :attr:`EventBus.describe` (installed by
the servicer layer, which knows protobuf), so it shows the pod as it was at that moment
even when a subscriber reads it later.

A subscriber that falls :attr:`EventBus.capacity` events behind is cut off: its stream
ends with an error instead of silently missing events, so the kubelet relists. The
runtime never waits for a subscriber.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from cri.errors import ResourceExhausted

log = logging.getLogger("skiff.events")

CREATED = "created"
STARTED = "started"
STOPPED = "stopped"
DELETED = "deleted"

#: describe(kind, object id, sandbox id, time in ns) -> the message sent to subscribers.
Describe = Callable[[str, str, str, int], Any]
#: listener(kind, object id, sandbox id): a part of the daemon told of each change.
Listener = Callable[[str, str, str], None]


class Subscription:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: collections.deque[Any] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped = ""  # why, once dropped

    def _offer(self, message: Any) -> bool:
        if len(self._queue) >= self._bus.capacity:
            return False
        self._queue.append(message)
        self._ready.set()
        return True

    def _drop(self, why: str) -> None:
        self.dropped = why
        self._queue.clear()
        self._ready.set()

    async def next(self) -> Any:
        while not self._queue:
            if self.dropped:
                raise ResourceExhausted(
                    f"container events: {self.dropped}; subscribe again and list "
                    "containers to resync"
                )
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.describe: Describe | None = None
        self._subscribers: list[Subscription] = []
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call `listener` on the event loop with each event as it is published, before
        any subscriber sees it; it must not block, and what it raises is logged."""
        self._listeners.append(listener)

    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self)
        self._subscribers.append(subscription)
        log.info("event subscriber joined", extra={"subscribers": len(self._subscribers)})
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
            log.info("event subscriber left", extra={"subscribers": len(self._subscribers)})

    def publish(self, kind: str, object_id: str, sandbox_id: str) -> None:
        for listener in self._listeners:
            try:
                listener(kind, object_id, sandbox_id)
            except Exception:
                log.exception("event listener failed", extra={"container_id": object_id})
        if not self._subscribers or self.describe is None:
            return
        try:
            message = self.describe(kind, object_id, sandbox_id, time.time_ns())
        except Exception:
            # The change is recorded already; a broken description must not undo the
            # call. Subscribers miss this event, so cut them off: they relist.
            log.exception("event not described", extra={"container_id": object_id})
            for subscription in list(self._subscribers):
                self._subscribers.remove(subscription)
                subscription._drop(f"an event about {object_id} could not be built")
            return
        for subscription in list(self._subscribers):
            if not subscription._offer(message):
                self._subscribers.remove(subscription)
                subscription._drop(
                    f"this subscriber fell {self.capacity} events behind and was dropped"
                )
                log.warning(
                    "event subscriber too slow, dropped",
                    extra={"capacity": self.capacity, "container_id": object_id},
                )
