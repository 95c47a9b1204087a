"""Directories made with exact modes, and a trail of which a call made, so that its
rollback removes those and nothing that was there before.

Blocking; async callers run these on a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def make_directory(path: Path, mode: int) -> bool:
    """Make ``path`` with exactly ``mode`` (not through the umask); False when a
    directory was there already. NotADirectoryError when something else is there, a
    symlink included: a path is never followed out of the tree it names."""
    try:
        path.mkdir(mode)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise NotADirectoryError(
                f"{path} exists and is not a directory (or is a symlink)"
            ) from None
        return False
    os.chmod(path, mode)
    return True


def make_parents(path: Path, mode: int = 0o755) -> list[Path]:
    """Make the missing parents of ``path``; the ones made, outermost first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return [parent for parent in reversed(missing) if make_directory(parent, mode)]


def make_directories(path: Path, mode: int = 0o755) -> list[Path]:
    """Make ``path`` and its missing parents; the ones made, outermost first."""
    made = make_parents(path, mode)
    if make_directory(path, mode):
        made.append(path)
    return made


def remove_made(made: Sequence[Path]) -> None:
    """Remove directories a call made (outermost first, as the makers return them),
    innermost first, up to the first that is not empty: something else moved in."""
    for directory in reversed(made):
        try:
            os.rmdir(directory)
        except OSError:
            return
