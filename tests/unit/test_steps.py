"""base.steps: per-call step timing, one debug line per call."""

from __future__ import annotations

import asyncio
import logging

import pytest

from base import steps


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().endswith(" steps")]


def test_laps_across_threads_and_tasks_each_call_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.steps")

    async def call(name: str) -> None:
        with steps.timed(log, "Call", container_id=name):
            await asyncio.sleep(0.01)
            steps.lap("sleep")
            await asyncio.to_thread(steps.lap, "thread")
            steps.note(extra_field=name)

    async def both() -> None:
        await asyncio.gather(call("a"), call("b"))

    with caplog.at_level(logging.DEBUG, logger="test.steps"):
        asyncio.run(both())
    lines = _lines(caplog)
    assert sorted(r.__dict__["container_id"] for r in lines) == ["a", "b"]
    for record in lines:
        assert list(record.__dict__["steps_ms"])[:2] == ["sleep", "thread"]
        assert record.__dict__["steps_ms"]["sleep"] >= 9
        assert record.__dict__["extra_field"] == record.__dict__["container_id"]
        assert record.__dict__["total_ms"] >= sum(record.__dict__["steps_ms"].values()) - 0.1


def test_nothing_timed_or_logged_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.steps.quiet")
    with caplog.at_level(logging.INFO, logger="test.steps.quiet"), steps.timed(log, "Call"):
        steps.lap("x")
        steps.note(a=1)
    assert _lines(caplog) == []
    steps.lap("outside any call")  # no timer: nothing happens


def test_logged_when_the_call_raises(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.steps.raise")
    with (
        caplog.at_level(logging.DEBUG, logger="test.steps.raise"),
        pytest.raises(ValueError),
        steps.timed(log, "Call"),
    ):
        steps.lap("first")
        raise ValueError("boom")
    assert list(_lines(caplog)[0].__dict__["steps_ms"]) == ["first"]
