"""containerd 2.x, the benchmarks' second peer, built from the Go module pinned in
``bench/tools/containerd`` (go.mod + go.sum: ``github.com/containerd/containerd/v2``).

The daemon (``cmd/containerd``) and its runc shim (``cmd/containerd-shim-runc-v2``, which
the daemon must find in ``PATH``) are built, as the e2e tools are
(`tests.e2e.toolchain`), into ``<cache>/containerd-<hash>/``: the hash covers go.mod,
go.sum, the recipe and the Go version, so a second run builds nothing. The cache is the
e2e tools' (``/var/cache/skiff-e2e-tools``, or ``$SKIFF_E2E_TOOLS_CACHE``), outside the
checkout. ``python -m bench.containerd2`` (``make bench-tools``) builds it.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.toolchain import Program, ToolModule, build_dir, build_module

TOOLS_ROOT = Path(__file__).resolve().parent / "tools"
MODULE_PATH = "github.com/containerd/containerd/v2"
DAEMON = "containerd"
SHIM = "containerd-shim-runc-v2"


def _version_flags(version: str) -> list[str]:
    # As containerd's Makefile does: the tag (v2.x.y) into version.Version.
    return [f"-X {MODULE_PATH}/version.Version={version}"]


MODULE = ToolModule(
    directory="containerd",
    programs=(
        Program(DAEMON, f"{MODULE_PATH}/cmd/containerd"),
        Program(SHIM, f"{MODULE_PATH}/cmd/containerd-shim-runc-v2"),
    ),
    version_module=MODULE_PATH,
    version_flags=_version_flags,
    # Without cgo the btrfs snapshotter is left out by its own build constraint; the
    # CLI's man-page generator is not needed.
    tags="urfave_cli_no_docs",
    root=TOOLS_ROOT,
)


def can_build() -> bool:
    """Go is there to build it (or it is built already)."""
    return shutil.which("go") is not None or built() is not None


def built() -> Path | None:
    """The directory holding both programs when they are built; None otherwise."""
    if shutil.which("go") is None:
        return None
    directory = build_dir(MODULE)
    return directory if all((directory / p.name).is_file() for p in MODULE.programs) else None


def build(log: Callable[[str], None] = print) -> Path:
    """The directory holding ``containerd`` and ``containerd-shim-runc-v2``, built first
    when missing (minutes the first time); RuntimeError when Go fails."""
    return build_module(MODULE, log)


def main() -> int:
    started = time.monotonic()
    try:
        directory = build(lambda line: print(f"bench-tools: {line}", flush=True))
    except RuntimeError as exc:
        print(f"bench-tools: {exc}", file=sys.stderr)
        return 1
    for program in MODULE.programs:
        print(f"bench-tools: {program.name:24} {directory / program.name}")
    print(f"bench-tools: ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
