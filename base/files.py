"""Files that appear whole or not at all: write a temp file beside the target, rename
it over the target. A reader never sees half a file, and a death mid-write leaves at
worst a temp file, named so that `remove_unfinished` finds it at the next start.

Durable writes (state under the persistent root) also fsync the file before the rename
and the directory after it, so the new file survives a power cut once the call returns.
Files under /run need no fsync: they do not outlive the machine anyway.

Blocking; async callers run these on a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

#: Every temp file is ``.<target name>.<random hex>.tmp``: hidden, beside its target,
#: and never a name anything else in skiff's directories has.
TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A new temp file name for a write of ``path``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def is_unfinished(name: str) -> bool:
    """Whether a file name is a temp file of `write_atomic` (one left by a death)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Make ``path`` hold ``data`` with permissions ``mode`` (the umask aside), replacing
    any file there in one rename. ``durable``: fsync the file and its directory too.
    On failure the temp file is removed and ``path`` is as it was."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the first failure is the one to report
            tmp.unlink()
        raise
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_unfinished(directory: Path) -> list[str]:
    """Remove the temp files that writes cut short by a death left in ``directory``
    (none holds anything its target does not: the rename never happened), and return
    their names. Call at start, before anything writes there. A missing directory has
    none."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    unfinished = sorted(name for name in names if is_unfinished(name))
    for name in unfinished:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return unfinished
