"""Removing a directory tree, however deep.

A container can make a tree thousands of levels deep in its writable layer (or a
request can make skiff create one, as a working directory): `shutil.rmtree` recurses
once per level and fails with RecursionError past Python's limit, and paths that long
pass PATH_MAX. Such a tree goes through `rm`, which walks it relative to open
directories, however deep.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

from base import failpoints

RM_TIMEOUT = 600.0


class TreeRemovalError(OSError):
    """The tree could not be removed; the message names it."""


def remove_tree(path: Path | str, *, missing_ok: bool = True) -> None:
    """Remove `path` and everything below it (not following symlinks, staying on its
    filesystem). Blocking: call it from a worker thread."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    except RecursionError:
        _remove_with_rm(Path(path))
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        _remove_with_rm(Path(path))
    failpoints.step("tree-remove")


def _remove_with_rm(path: Path) -> None:
    # subprocess.run, not base.processes: this is blocking code for worker threads, with
    # no event loop, and run() already does for rm what processes does: SIGKILL past the
    # deadline (rm starts no children, so no group to kill), wait for the reap, close the
    # pipes. A thread cannot be cancelled, so there is no cancellation to outlive.
    try:
        done = subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)],
            capture_output=True,
            text=True,
            timeout=RM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TreeRemovalError(f"removing {path}: rm ran past {RM_TIMEOUT:.0f}s") from None
    if done.returncode != 0 or path.exists():
        raise TreeRemovalError(f"removing {path}: {done.stderr.strip()[:300] or 'rm failed'}")
