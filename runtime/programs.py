"""Finding the external programs the runner drives (runc, crun, conmon) and checking
that they run.

A program counts as usable when it is found, is executable and answers ``--version``
with exit status 0 within a timeout. The answer is cached per file identity (inode,
size, mtime), so a kubelet polling Status every few seconds costs a stat, not a fork,
while a package upgrade or removal is noticed on the next call.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from base import processes
from base.processes import ProgramTimedOut

T = TypeVar("T")


@dataclass(frozen=True)
class ProgramStatus:
    name: str
    path: str | None
    usable: bool
    version: str
    problem: str


def find_program(name_or_path: str) -> str | None:
    """An absolute path is taken as is; a bare name is looked up in PATH."""
    if name_or_path.startswith("/"):
        return name_or_path if os.path.exists(name_or_path) else None
    return shutil.which(name_or_path)


class ProgramProber:
    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._cache: dict[tuple[str, str], tuple[tuple[int, int, int, int], object]] = {}

    async def probe(self, name_or_path: str) -> ProgramStatus:
        path = find_program(name_or_path)
        if path is None:
            where = "at that path" if name_or_path.startswith("/") else "in PATH"
            return ProgramStatus(name_or_path, None, False, "", f"{name_or_path} not found {where}")
        try:
            return await self._cached(path, "--version", lambda: self._version(name_or_path, path))
        except OSError as exc:
            return ProgramStatus(name_or_path, path, False, "", f"{path}: {exc.strerror}")

    async def mount_options(self, name_or_path: str) -> frozenset[str]:
        """The mount options an OCI runtime accepts, from its ``features`` command (OCI
        runtime spec "features"); empty when it has none (crun before 1.9) or fails."""
        path = find_program(name_or_path)
        if path is None:
            return frozenset()
        try:
            return await self._cached(path, "features", lambda: self._mount_options(path))
        except OSError:
            return frozenset()

    async def _cached(self, path: str, question: str, ask: Callable[[], Awaitable[T]]) -> T:
        """The answer to ``question`` for the program at ``path``, asked again only when
        the file changed. OSError when it cannot be looked at."""
        identity = _identity(path)
        cached = self._cache.get((path, question))
        if cached is not None and cached[0] == identity:
            return cast(T, cached[1])
        answer = await ask()
        self._cache[(path, question)] = (identity, answer)
        return answer

    async def _mount_options(self, path: str) -> frozenset[str]:
        try:
            code, out = await self._run(path, "features")
            if code == 0:
                listed = json.loads(out).get("mountOptions") or []
                return frozenset(o for o in listed if isinstance(o, str))
        except (OSError, ProgramTimedOut, ValueError, AttributeError):
            pass
        return frozenset()

    async def _version(self, name: str, path: str) -> ProgramStatus:
        if not os.access(path, os.X_OK):
            return ProgramStatus(name, path, False, "", f"{path} is not executable")
        try:
            code, out = await self._run(path, "--version")
        except ProgramTimedOut:
            return ProgramStatus(
                name, path, False, "", f"{path} --version did not answer in {self.timeout:g}s"
            )
        except OSError as exc:
            return ProgramStatus(name, path, False, "", f"{path} cannot be run: {exc.strerror}")
        text = out.decode(errors="replace").strip()
        if code != 0:
            last = text.splitlines()[-1] if text else "no output"
            return ProgramStatus(
                name, path, False, "", f"{path} --version failed with exit status {code}: {last}"
            )
        first = text.splitlines()[0] if text else ""
        return ProgramStatus(name, path, True, first, "")

    async def _run(self, path: str, argument: str) -> tuple[int, bytes]:
        """Runs ``path argument`` and returns its exit status and its output (stdout and
        stderr together); ProgramTimedOut when it does not answer in time."""
        done = await processes.run([path, argument], timeout=self.timeout, merge_stderr=True)
        return done.returncode, done.stdout


def _identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
