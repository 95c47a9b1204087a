"""Taking back a multi-step creation that failed part way (RunPodSandbox,
CreateContainer): each step that made something pushes how to unmake it; on failure
the steps run newest first, and one that fails is logged and does not stop the rest."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("skiff.rollback")


class Rollback:
    def __init__(self, **ids: str) -> None:
        self.ids = ids  # logged with every failed step: sandbox_id=..., container_id=...
        self.steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def push(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        self.steps.append((what, step))

    async def run(self) -> None:
        for what, step in reversed(self.steps):
            try:
                await step()
            except Exception as exc:
                log.error(
                    "rollback step failed", extra={**self.ids, "step": what, "error": str(exc)}
                )
