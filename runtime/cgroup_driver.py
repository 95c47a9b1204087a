"""Which cgroup drivers this node can use."""

from __future__ import annotations

import os

SYSTEMD_RUNTIME_DIR = "/run/systemd/system"


def systemd_running() -> bool:
    """True when systemd manages this node (what sd_booted(3) checks)."""
    return os.path.isdir(SYSTEMD_RUNTIME_DIR)


def driver_problem(driver: str) -> str | None:
    """Why `driver` cannot work on this node, or None when it can."""
    if driver == "systemd" and not systemd_running():
        return (
            "cgroup driver 'systemd' needs systemd running as init, and this node has none "
            f"({SYSTEMD_RUNTIME_DIR} is missing); set runtime.cgroup_driver: cgroupfs "
            "(and the kubelet's cgroupDriver to match)"
        )
    return None
