"""Where a call's time goes, step by step, at almost no cost when nobody asks.

A lifecycle call (CreateContainer, ...) opens a `StepTimer` with `timed`; code anywhere
below it, in any layer and in worker threads (``asyncio.to_thread`` copies the context),
calls `lap(name)` when a step ends: the time since the previous lap is booked to
``name``. The timer lives in a context variable, so calls running side by side each keep
their own, and no signature has to carry it. When the call ends one debug line lists
every step in order with its milliseconds, and ``other`` for what fell between the
last lap and the end.

Without a timer (debug logging off, or code reached from elsewhere) `lap` is one
context-variable read.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StepTimer:
    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.steps: dict[str, float] = {}
        self.fields: dict[str, Any] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        # A step that comes round again (a retry, a loop) adds up under its name.
        self.steps[name] = self.steps.get(name, 0.0) + (now - self.last)
        self.last = now

    def as_ms(self) -> dict[str, float]:
        return {name: round(seconds * 1000, 2) for name, seconds in self.steps.items()}


_current: contextvars.ContextVar[StepTimer | None] = contextvars.ContextVar(
    "skiff_step_timer", default=None
)


def lap(name: str) -> None:
    """End the step ``name`` of the call being timed, if one is."""
    timer = _current.get()
    if timer is not None:
        timer.lap(name)


def note(**fields: Any) -> None:
    """Add fields (an id known only part way, e.g. a new container's) to the line of
    the call being timed, if one is."""
    timer = _current.get()
    if timer is not None:
        timer.fields.update(fields)


@contextmanager
def timed(log: logging.Logger, call: str, **fields: Any) -> Iterator[None]:
    """Time the steps of ``call`` when ``log`` logs at debug level; on the way out (also
    when it raised) one line ``"<call> steps"`` with ``fields``, ``steps_ms`` (step ->
    ms, in order) and ``total_ms``."""
    if not log.isEnabledFor(logging.DEBUG):
        yield
        return
    timer = StepTimer()
    timer.fields.update(fields)
    token = _current.set(timer)
    try:
        yield
    finally:
        _current.reset(token)
        end = time.perf_counter()
        if end - timer.last > 0.00005:
            timer.steps["other"] = timer.steps.get("other", 0.0) + (end - timer.last)
        log.debug(
            f"{call} steps",
            extra={
                **timer.fields,
                "call": call,
                "steps_ms": timer.as_ms(),
                "total_ms": round((end - timer.started) * 1000, 2),
            },
        )
