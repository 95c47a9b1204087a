"""The event bus: order, fan-out, and a slow subscriber cut off rather than waited for."""

from __future__ import annotations

import asyncio

import pytest

from cri.errors import ResourceExhausted
from cri.events import CREATED, STARTED, STOPPED, EventBus


def _bus(capacity: int = 1000) -> EventBus:
    bus = EventBus(capacity)
    bus.describe = lambda kind, object_id, sandbox_id, at_ns: (kind, object_id, sandbox_id)
    return bus


def test_every_subscriber_gets_every_event_in_order() -> None:
    async def main() -> None:
        bus = _bus()
        first, second = bus.subscribe(), bus.subscribe()
        for kind in (CREATED, STARTED, STOPPED):
            bus.publish(kind, "c1", "p1")
        for subscription in (first, second):
            got = [await subscription.next() for _ in range(3)]
            assert got == [(CREATED, "c1", "p1"), (STARTED, "c1", "p1"), (STOPPED, "c1", "p1")]
        first.close()
        assert bus.subscribers() == 1

    asyncio.run(main())


def test_a_waiting_subscriber_wakes_on_publish() -> None:
    async def main() -> None:
        bus = _bus()
        subscription = bus.subscribe()
        waiting = asyncio.ensure_future(subscription.next())
        await asyncio.sleep(0)
        assert not waiting.done()
        bus.publish(CREATED, "c1", "p1")
        assert await asyncio.wait_for(waiting, 1) == (CREATED, "c1", "p1")

    asyncio.run(main())


def test_a_subscriber_too_far_behind_is_dropped_not_waited_for() -> None:
    async def main() -> None:
        bus = _bus(capacity=3)
        slow, keeping_up = bus.subscribe(), bus.subscribe()
        for index in range(5):
            bus.publish(CREATED, f"c{index}", "p1")
            assert await keeping_up.next() == (CREATED, f"c{index}", "p1")
        assert bus.subscribers() == 1
        with pytest.raises(ResourceExhausted, match="fell 3 events behind"):
            await slow.next()

    asyncio.run(main())


def test_nothing_is_built_without_subscribers() -> None:
    bus = EventBus()
    calls: list[str] = []
    bus.describe = lambda kind, object_id, sandbox_id, at_ns: calls.append(kind)
    bus.publish(CREATED, "c1", "p1")
    assert calls == []


def test_an_event_that_cannot_be_built_drops_subscribers_not_the_call() -> None:
    async def main() -> None:
        bus = EventBus()

        def broken(kind: str, object_id: str, sandbox_id: str, at_ns: int) -> object:
            raise ValueError("no such field")

        bus.describe = broken
        subscription = bus.subscribe()
        bus.publish(CREATED, "c1", "p1")  # must not raise into the lifecycle call
        assert bus.subscribers() == 0
        with pytest.raises(ResourceExhausted, match="about c1 could not be built"):
            await subscription.next()

    asyncio.run(main())


def test_listeners_hear_every_event_without_subscribers_and_their_errors_stay_theirs() -> None:
    bus = EventBus()  # nothing to describe events with: no subscriber could get them
    heard: list[tuple[str, str, str]] = []

    def broken(kind: str, object_id: str, sandbox_id: str) -> None:
        raise RuntimeError("listener bug")

    bus.listen(broken)
    bus.listen(lambda *event: heard.append(event))
    bus.publish(STOPPED, "c1", "p1")
    bus.publish(CREATED, "c2", "p1")
    assert heard == [(STOPPED, "c1", "p1"), (CREATED, "c2", "p1")]
