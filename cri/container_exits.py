"""Containers' exits, taken in once each however they are noticed: conmon's exit file
changing (watched, so List reads memory only), a status asked for, a stop that ended
the process, or skiffd's start after exits it missed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from cri import events
from cri.container_record import EXITED, RUNNING, Container
from cri.daemon_state import DaemonState
from runtime.exit_watch import ExitWatcher, ExitWatchError
from runtime.oci_runtime import ExitStatus, OciRuntime

log = logging.getLogger("skiff.container")


class ContainerExits:
    def __init__(
        self,
        state: DaemonState,
        containers: Mapping[str, Container],
        runtime_of: Callable[[Container], OciRuntime],
        lock_of: Callable[[str], asyncio.Lock],
    ) -> None:
        self.state = state
        self._containers = containers
        self._runtime_of = runtime_of
        self._lock_of = lock_of
        self._watcher = ExitWatcher(self._on_exit_file, self._check_all)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._watcher.start()
        for container in list(self._containers.values()):
            if container.state == RUNNING:
                self.watch(container)

    def close(self) -> None:
        self._watcher.close()
        for task in list(self._tasks):
            task.cancel()

    def watch(self, container: Container) -> None:
        try:
            self._watcher.watch(container.id, self._runtime_of(container).state_path(container.id))
        except ExitWatchError as exc:
            # Its exit is still seen on the next status or stop call.
            log.warning(
                "cannot watch for the container's exit",
                extra={"container_id": container.id, "error": str(exc)},
            )

    async def refresh(self, container: Container) -> None:
        """Take in an exit conmon recorded (while skiffd was down, or since)."""
        if container.state != RUNNING:
            return
        status = self._runtime_of(container).exit_status(container.id)
        if status is not None:
            await self.record(container, status)

    async def record(self, container: Container, status: ExitStatus) -> None:
        """Record the exit once, however it was noticed."""
        if container.state == EXITED:
            return
        container.state = EXITED
        container.exit_code = status.exit_code
        container.finished_ns = max(status.finished_ns, container.started_ns)
        if status.oom_killed:
            container.reason = "OOMKilled"
            self.state.metrics.record_oom_kill()
        else:
            container.reason = "Completed" if status.exit_code == 0 else "Error"
        self._watcher.unwatch(container.id)
        await self.state.store.update(container.to_record())
        self.state.events.publish(events.STOPPED, container.id, container.sandbox_id)
        log.info(
            "container exited",
            extra={
                "container_id": container.id,
                "exit_code": container.exit_code,
                "reason": container.reason,
            },
        )

    def _on_exit_file(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None:
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(container))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_all(self) -> None:
        for container in list(self._containers.values()):
            if container.state == RUNNING:
                self._on_exit_file(container.id)

    async def _refresh_quietly(self, container: Container) -> None:
        try:
            # After the call working on the container (a stop): it records the exit
            # it caused itself, as part of that call.
            async with self._lock_of(container.id):
                await self.refresh(container)
        except Exception as exc:
            log.warning(
                "exit check failed", extra={"container_id": container.id, "error": str(exc)}
            )
