"""Finding the external programs the runner drives (runc, crun, conmon) and checking
that they run.

A program counts as usable when it is found, is executable and answers ``--version``
with exit status 0 within a timeout. The answer is cached per file identity (inode,
size, mtime), so a kubelet polling Status every few seconds costs a stat, not a fork,
while a package upgrade or removal is noticed on the next call.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass


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
        self._cache: dict[str, tuple[tuple[int, int, int, int], ProgramStatus]] = {}

    async def probe(self, name_or_path: str) -> ProgramStatus:
        path = find_program(name_or_path)
        if path is None:
            where = "at that path" if name_or_path.startswith("/") else "in PATH"
            return ProgramStatus(name_or_path, None, False, "", f"{name_or_path} not found {where}")
        try:
            st = os.stat(path)
        except OSError as exc:
            return ProgramStatus(name_or_path, path, False, "", f"{path}: {exc.strerror}")
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == identity:
            return cached[1]
        status = await self._run_version(name_or_path, path)
        self._cache[path] = (identity, status)
        return status

    async def _run_version(self, name: str, path: str) -> ProgramStatus:
        if not os.access(path, os.X_OK):
            return ProgramStatus(name, path, False, "", f"{path} is not executable")
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                "--version",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return ProgramStatus(name, path, False, "", f"{path} cannot be run: {exc.strerror}")
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ProgramStatus(
                name, path, False, "", f"{path} --version did not answer in {self.timeout:g}s"
            )
        except asyncio.CancelledError:
            # The caller went away (a cancelled RPC, shutdown): leave no process behind.
            if proc.returncode is None:
                proc.kill()
            raise
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            last = text.splitlines()[-1] if text else "no output"
            return ProgramStatus(
                name,
                path,
                False,
                "",
                f"{path} --version failed with exit status {proc.returncode}: {last}",
            )
        first = text.splitlines()[0] if text else ""
        return ProgramStatus(name, path, True, first, "")
