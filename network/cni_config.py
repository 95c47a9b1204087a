"""CNI network configurations: finding, parsing and checking them.

Files in the config directory ending in ``.conflist``, ``.conf`` or ``.json`` are read
in name order. A ``.conflist`` holds a list of plugins; a ``.conf``/``.json`` holds a
single plugin and is taken as a list of one. A network is usable when its config is
well formed, names a CNI version we speak, and every plugin it lists exists as an
executable in one of the plugin directories.

Parsed files are cached by (size, mtime), so asking again is a directory listing and a
stat per file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_CNI_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class CniNetwork:
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: Path

    @property
    def plugin_types(self) -> tuple[str, ...]:
        return tuple(str(p["type"]) for p in self.plugins)


@dataclass(frozen=True)
class NetworkReadiness:
    ready: bool
    network: CniNetwork | None
    message: str
    skipped: tuple[str, ...] = field(default=())


class CniConfigError(Exception):
    pass


def parse_network(path: Path, data: bytes) -> CniNetwork:
    """Parse one config file; raises CniConfigError naming the file and the problem."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CniConfigError(f"{path}: must be a JSON object")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniConfigError(f"{path}: cniVersion is missing")
    if version not in SUPPORTED_CNI_VERSIONS:
        raise CniConfigError(
            f"{path}: cniVersion {version!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_CNI_VERSIONS)})"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CniConfigError(f"{path}: name is missing")
    if path.suffix == ".conflist":
        plugins = raw.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise CniConfigError(f"{path}: plugins must be a non-empty list")
    else:
        plugins = [raw]
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise CniConfigError(f"{path}: plugins[{i}] must be a JSON object")
        kind = plugin.get("type")
        if not isinstance(kind, str) or not kind or "/" in kind:
            raise CniConfigError(f"{path}: plugins[{i}].type must name a plugin program")
    return CniNetwork(name=name, cni_version=version, plugins=tuple(plugins), source=path)


def find_plugin(kind: str, plugin_dirs: list[str]) -> str | None:
    for directory in plugin_dirs:
        candidate = os.path.join(directory, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class CniConfigDir:
    """The networks configured in one directory, re-read when files change."""

    def __init__(self, directory: str, plugin_dirs: list[str], default_network: str = "") -> None:
        self.directory = Path(directory)
        self.plugin_dirs = plugin_dirs
        self.default_network = default_network
        self._parsed: dict[str, tuple[tuple[int, int], CniNetwork | CniConfigError]] = {}

    def _files(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        return [
            self.directory / n
            for n in names
            if n.endswith(CONFIG_SUFFIXES) and not n.startswith(".")
        ]

    def _load(self, path: Path) -> CniNetwork | CniConfigError:
        try:
            st = path.stat()
        except OSError as exc:
            return CniConfigError(f"{path}: {exc.strerror}")
        identity = (st.st_size, st.st_mtime_ns)
        cached = self._parsed.get(str(path))
        if cached is not None and cached[0] == identity:
            return cached[1]
        try:
            result: CniNetwork | CniConfigError = parse_network(path, path.read_bytes())
        except CniConfigError as exc:
            result = exc
        except OSError as exc:
            result = CniConfigError(f"{path}: {exc.strerror}")
        self._parsed[str(path)] = (identity, result)
        return result

    def readiness(self) -> NetworkReadiness:
        problems: list[str] = []
        files = self._files()
        live = {str(p) for p in files}
        for stale in set(self._parsed) - live:
            del self._parsed[stale]
        for path in files:
            loaded = self._load(path)
            if isinstance(loaded, CniConfigError):
                problems.append(str(loaded))
                continue
            if self.default_network and loaded.name != self.default_network:
                continue
            missing = [t for t in loaded.plugin_types if find_plugin(t, self.plugin_dirs) is None]
            if missing:
                problems.append(
                    f"{path}: network {loaded.name!r} needs CNI plugin(s) "
                    f"{', '.join(missing)}, not found in {':'.join(self.plugin_dirs)}"
                )
                continue
            return NetworkReadiness(True, loaded, "", tuple(problems))
        wanted = f"CNI network {self.default_network!r}" if self.default_network else "CNI network"
        message = f"no usable {wanted} config in {self.directory}"
        if problems:
            message += ": " + "; ".join(problems)
        else:
            message += "; install one (or start your network provider)"
        return NetworkReadiness(False, None, message, tuple(problems))
