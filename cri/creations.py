"""Creations that outlive the call that asked for them.

The kubelet gives up on a slow RunPodSandbox or CreateContainer after its deadline and
retries with the same name. So a creation runs as its own task: a retry while it runs
joins it, and a result its first caller never received goes to the retry, instead of
the retry hearing "name is reserved" until the kubelet gives up for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("skiff.creations")


class Creations:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._running: dict[str, asyncio.Task[str]] = {}
        self._undelivered: dict[str, str] = {}

    def running_under(self, prefix: str) -> list[asyncio.Task[str]]:
        """The creations in progress whose names start with `prefix`."""
        return [task for name, task in self._running.items() if name.startswith(prefix)]

    def forget(self, object_id: str) -> None:
        """The object is gone: a late retry must not be handed its id."""
        for name, known in list(self._undelivered.items()):
            if known == object_id:
                del self._undelivered[name]

    async def run(
        self,
        name: str,
        create: Callable[[], Coroutine[Any, Any, str]],
        *,
        alive: Callable[[str], bool],
        taken: Callable[[], Exception | None],
    ) -> str:
        """Join the creation of `name`, hand over its unseen result (while that object
        is `alive`), refuse a name another object holds (`taken` says how), or start
        the creation."""
        running = self._running.get(name)
        if running is not None:
            log.info(f"joining a {self.kind} creation in progress", extra={"object": name})
            return await asyncio.shield(running)
        undelivered = self._undelivered.pop(name, None)
        if undelivered is not None and alive(undelivered):
            log.info(f"handing a finished {self.kind} to the retry", extra={"id": undelivered})
            return undelivered
        refusal = taken()
        if refusal is not None:
            raise refusal
        task = asyncio.get_running_loop().create_task(create())
        self._running[name] = task
        task.add_done_callback(lambda _t: self._running.pop(name, None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._keep(name, t))
            raise

    def _keep(self, name: str, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._undelivered[name] = task.result()
