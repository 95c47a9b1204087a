"""The busybox every test image is built from: Debian's dynamic `busybox` package as a
.deb the test command downloads (deploy/install-packages --test), unpacked here, so the
tests build the same images whatever busybox the machine has installed (or none:
`busybox-static` replaces it, and its shell runs applets in-process, hiding what masked
paths, seccomp and no_new_privs do to an exec)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: Where install-packages --test puts the .deb (SKIFF_TEST_BUSYBOX_DEB_DIR to move it).
DEB_DIR = Path(os.environ.get("SKIFF_TEST_BUSYBOX_DEB_DIR", "/var/cache/skiff-tests"))


@functools.cache
def busybox_binary() -> Path:
    """The unpacked dynamic busybox (its libraries are the host's libc, as ldd finds)."""
    debs = sorted(DEB_DIR.glob("busybox_*.deb"))
    if not debs:
        raise RuntimeError(
            f"no busybox .deb in {DEB_DIR}: run `deploy/install-packages --test` (make test "
            "does), which downloads Debian's busybox package there"
        )
    deb = debs[-1]
    unpacked = DEB_DIR / deb.stem
    binary = unpacked / "bin" / "busybox"
    if not binary.is_file():
        staging = Path(tempfile.mkdtemp(prefix=f".{deb.stem}-", dir=DEB_DIR))
        try:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, timeout=60)
            try:
                staging.rename(unpacked)
            except OSError:
                if not binary.is_file():  # not another test's unpacking, won just now
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return binary
