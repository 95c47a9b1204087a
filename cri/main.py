"""The `skiffd` command line.

    skiffd [flags]           run the daemon
    skiffd config [flags]    print the effective config (YAML) and exit
    skiffd version           print the version and exit

Exit status: 0 on a clean stop, 2 for a config error, 1 when skiffd cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from base import failpoints
from cri import VERSION
from cri import config as config_mod
from cri import log as log_mod
from cri.config import DEFAULT_CONFIG_FILE, DEFAULT_DROPIN_DIR, ConfigError, ConfigSources
from cri.daemon import Daemon, StartupError
from cri.instance_lock import AlreadyRunning
from cri.interceptor import CRI_RPCS

EXIT_STARTUP = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiffd", description="skiff: a Kubernetes container runtime (CRI v1)"
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("run", "config", "version"),
        default="run",
        help="run the daemon (default), print the effective config, or print the version",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"main config file (default {DEFAULT_CONFIG_FILE}; must exist when given)",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_DROPIN_DIR,
        help=f"directory of *.yaml drop-ins read after the main file ({DEFAULT_DROPIN_DIR})",
    )
    parser.add_argument("--root", help="persistent state directory")
    parser.add_argument("--runroot", help="volatile state directory")
    parser.add_argument("--listen", help="CRI unix socket path")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    parser.add_argument("--log-format", help="text or json")
    parser.add_argument("--cgroup-driver", help="cgroupfs or systemd")
    parser.add_argument("--default-runtime", help="the runtime handler pods get by default")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag in ("root", "runroot", "listen", "log_level", "log_format"):
        value = getattr(args, flag)
        if value is not None:
            out[flag] = value
    runtime: dict[str, Any] = {}
    if args.cgroup_driver is not None:
        runtime["cgroup_driver"] = args.cgroup_driver
    if args.default_runtime is not None:
        runtime["default_handler"] = args.default_runtime
    if runtime:
        out["runtime"] = runtime
    return out


SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"skiffd {VERSION} (CRI v1)")
        return 0
    sources = ConfigSources(
        config_file=args.config or DEFAULT_CONFIG_FILE,
        config_file_required=args.config is not None,
        dropin_dir=args.config_dir,
        overrides=_overrides(args),
    )
    try:
        cfg = config_mod.load(sources)
    except ConfigError as exc:
        print(f"skiffd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "config":
        sys.stdout.write(cfg.to_yaml())
        return 0
    log_mod.configure(cfg.log_level, cfg.log_format)
    try:
        failpoints.arm_from_environment(CRI_RPCS | {failpoints.STARTUP})
    except failpoints.UnknownFailpoint as exc:
        print(f"skiffd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Worker threads (layer walks, unpacking, mounts) hold the GIL while the event loop
    # waits for it; at the default 5 ms interval that wait is what a List call's tail
    # latency is made of.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        asyncio.run(Daemon(sources, cfg).run())
    except (StartupError, AlreadyRunning) as exc:
        print(f"skiffd: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


if __name__ == "__main__":
    sys.exit(main())
