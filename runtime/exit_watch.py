"""Noticing container exits as they happen: inotify on each running container's state
directory, where conmon renames the ``exit`` file into place when the init exits.

One inotify descriptor serves every container; it is read on the asyncio loop, so an
exit costs one small read and no container is ever polled. A container whose exit file
appeared before its watch was added is reported right away by :meth:`ExitWatcher.watch`.
When the kernel's event queue overflows, :attr:`on_overflow` runs so the owner can look
at every container once.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

from runtime import conmon

log = logging.getLogger(__name__)

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


class ExitWatchError(Exception):
    """The kernel refused an inotify call; the message says which and why."""


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        hint = ""
        if err == errno.ENOSPC:
            hint = " (raise fs.inotify.max_user_watches)"
        elif err == errno.EMFILE:
            hint = " (raise fs.inotify.max_user_instances)"
        raise ExitWatchError(f"{what}: {os.strerror(err)}{hint}")
    return result


class ExitWatcher:
    """Calls ``on_exit(container_id)`` once conmon has written a container's exit file."""

    def __init__(
        self,
        on_exit: Callable[[str], None],
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.on_exit = on_exit
        self.on_overflow = on_overflow
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_wd: dict[int, str] = {}
        self._by_id: dict[str, int] = {}

    def start(self) -> None:
        """Open the inotify descriptor and read it on the running loop."""
        if self._fd >= 0:
            return
        self._fd = _check(_libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC), "inotify_init1")
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._read)

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._by_wd.clear()
        self._by_id.clear()

    def watching(self) -> int:
        return len(self._by_id)

    def watch(self, container_id: str, state_dir: Path) -> None:
        """Watch ``state_dir`` for the exit file; report at once if it is already there
        (the container may have exited before this call)."""
        if self._fd < 0:
            raise ExitWatchError("the exit watcher is not started")
        if container_id in self._by_id:
            return
        wd = _check(
            _libc.inotify_add_watch(
                self._fd, os.fsencode(state_dir), _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_ONLYDIR
            ),
            f"watching {state_dir} for the exit of container {container_id}",
        )
        self._by_wd[wd] = container_id
        self._by_id[container_id] = wd
        if (state_dir / conmon.EXIT_FILE).exists():
            assert self._loop is not None
            self._loop.call_soon(self._report, container_id)

    def unwatch(self, container_id: str) -> None:
        wd = self._by_id.pop(container_id, None)
        if wd is None:
            return
        self._by_wd.pop(wd, None)
        # EINVAL: the directory is already gone and the kernel dropped the watch.
        _libc.inotify_rm_watch(self._fd, wd)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        exited: list[str] = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                log.warning("exit watch queue overflowed; checking every container")
                if self.on_overflow is not None:
                    self.on_overflow()
                continue
            if mask & _IN_IGNORED:
                container_id = self._by_wd.pop(wd, None)
                if container_id is not None:
                    self._by_id.pop(container_id, None)
                continue
            if name.decode(errors="replace") == conmon.EXIT_FILE:
                container_id = self._by_wd.get(wd)
                if container_id is not None and container_id not in exited:
                    exited.append(container_id)
        for container_id in exited:
            self._report(container_id)

    def _report(self, container_id: str) -> None:
        if container_id not in self._by_id:
            return
        self.unwatch(container_id)
        try:
            self.on_exit(container_id)
        except Exception:
            log.exception("exit handler failed", extra={"container_id": container_id})
