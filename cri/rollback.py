"""Taking back a multi-step creation that failed part way (RunPodSandbox,
CreateContainer): each step that made something pushes how to unmake it; on failure
the steps run newest first, and one that fails is logged and does not stop the rest.
A creation cut short by skiffd's own death has no one to roll it back: what it left is
found at the next start by its directory, which has no record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container
from pathlib import Path

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


async def remove_unrecorded(
    directory: Path,
    recorded: Container[str],
    remove: Callable[[Path], Awaitable[None]],
    id_key: str,
) -> None:
    """Calls ``remove`` on each subdirectory of ``directory`` named by no recorded id
    (what a creation cut short left); one that cannot be removed is logged and does not
    stop the rest, nor the start."""
    for entry in await asyncio.to_thread(_unrecorded, directory, recorded):
        try:
            await remove(entry)
        except Exception as exc:
            log.warning(
                "cannot remove what an interrupted creation left",
                extra={id_key: entry.name, "error": str(exc)},
            )
        else:
            log.info("removed what an interrupted creation left", extra={id_key: entry.name})


def _unrecorded(directory: Path, recorded: Container[str]) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(e for e in directory.iterdir() if e.name not in recorded and e.is_dir())
