"""The tests' own busybox: Debian's dynamic package unpacked from its .deb, not whatever
/bin/busybox the machine has (busybox-static's shell runs applets without exec)."""

from __future__ import annotations

import subprocess

from tests.integration.busybox import DEB_DIR, busybox_binary


def test_busybox_is_the_packages_dynamic_one() -> None:
    binary = busybox_binary()
    assert binary.is_relative_to(DEB_DIR)
    libraries = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    assert "libc.so" in libraries
    applets = subprocess.run(
        [str(binary), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"sh", "httpd", "wget"} <= set(applets)
    assert busybox_binary() == binary  # unpacked once
