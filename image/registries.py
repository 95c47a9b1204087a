"""Where a reference is pulled from: containers-registries.conf(5), version 2 (TOML).

Used keys: `unqualified-search-registries`, `[aliases]`, and `[[registry]]` tables with
`prefix`, `location`, `insecure`, `blocked` and `[[registry.mirror]]` (`location`,
`insecure`, `pull-from-mirror`). Other keys belong to other tools sharing the file and
are ignored. A missing file means: short names go to docker.io, everything is TLS.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import FailedPrecondition, PermissionDenied
from image.reference import DOCKER_HUB, Reference, ReferenceError, parse

# The registry API host behind docker.io names.
DOCKER_HUB_API_HOST = "registry-1.docker.io"


class RegistriesConfError(FailedPrecondition, ValueError):
    pass


class BlockedError(PermissionDenied):
    pass


@dataclass(frozen=True)
class Endpoint:
    """One place to try: `host` serves the repository `repository` over the v2 API."""

    host: str
    repository: str
    insecure: bool
    mirror: bool

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API_HOST if self.host == DOCKER_HUB else self.host


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from: str = "all"  # all | digest-only | tag-only


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()

    def rest(self, name: str) -> str:
        """What follows the matched prefix in `name` (starts with "/" or is empty)."""
        if self.prefix.startswith("*."):
            return name[len(name.split("/", 1)[0]) :]
        return name[len(self.prefix) :]

    def matches(self, name: str) -> int:
        """Length of the match (longest wins), or -1."""
        prefix = self.prefix
        if prefix.startswith("*."):
            host = name.split("/", 1)[0]
            return len(prefix) if host.endswith(prefix[1:]) else -1
        if name == prefix or name.startswith(prefix + "/"):
            return len(prefix)
        return -1


@dataclass(frozen=True)
class RegistriesConf:
    search: tuple[str, ...] = (DOCKER_HUB,)
    aliases: dict[str, str] = field(default_factory=dict)
    registries: tuple[RegistryEntry, ...] = ()
    source: str = ""

    def entry_for(self, name: str) -> RegistryEntry | None:
        best, best_len = None, -1
        for entry in self.registries:
            length = entry.matches(name)
            if length > best_len:
                best, best_len = entry, length
        return best

    def candidates(self, ref: Reference) -> list[Reference]:
        """Fully qualified references a (possibly short) reference may mean, in order."""
        if not ref.is_short:
            return [ref.with_domain(ref.domain)]
        alias = self.aliases.get(ref.path)
        if alias is not None:
            target = parse(alias)
            return [Reference(target.domain, target.path, ref.tag or target.tag, ref.digest)]
        return [ref.with_domain(domain) for domain in self.search]

    def endpoints(self, ref: Reference) -> list[Endpoint]:
        """Mirrors first (in order), then the registry itself."""
        entry = self.entry_for(ref.name)
        if entry is None:
            return [Endpoint(ref.domain, ref.path, False, False)]
        if entry.blocked:
            raise BlockedError(
                f"pulling {ref.name} is blocked by registry {entry.prefix!r} in {self.source}"
            )
        remapped = entry.location + entry.rest(ref.name) if entry.location else ref.name
        out: list[Endpoint] = []
        for mirror in entry.mirrors:
            if mirror.pull_from == "digest-only" and not ref.digest:
                continue
            if mirror.pull_from == "tag-only" and ref.digest:
                continue
            target = mirror.location + entry.rest(ref.name)
            host, _, repo = target.partition("/")
            out.append(Endpoint(host, repo, mirror.insecure, True))
        host, _, repo = remapped.partition("/")
        out.append(Endpoint(host, repo, entry.insecure, False))
        return out


def _str(raw: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise RegistriesConfError(f"{where}: {key} must be a string")
    return value


def _bool(raw: dict[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise RegistriesConfError(f"{where}: {key} must be true or false")
    return value


def _entry(raw: Any, where: str) -> RegistryEntry:
    if not isinstance(raw, dict):
        raise RegistriesConfError(f"{where} must be a table")
    location = _str(raw, "location", where)
    prefix = _str(raw, "prefix", where) or location
    if not prefix:
        raise RegistriesConfError(f"{where}: needs a prefix or a location")
    mirrors_raw = raw.get("mirror", [])
    if not isinstance(mirrors_raw, list):
        raise RegistriesConfError(f"{where}: mirror must be a list of tables")
    mirrors = []
    for i, m in enumerate(mirrors_raw):
        mwhere = f"{where}.mirror[{i}]"
        if not isinstance(m, dict):
            raise RegistriesConfError(f"{mwhere} must be a table")
        pull_from = _str(m, "pull-from-mirror", mwhere, "all")
        if pull_from not in ("all", "digest-only", "tag-only"):
            raise RegistriesConfError(
                f"{mwhere}: pull-from-mirror must be all, digest-only or tag-only"
            )
        mloc = _str(m, "location", mwhere)
        if not mloc:
            raise RegistriesConfError(f"{mwhere}: location is required")
        mirrors.append(Mirror(mloc, _bool(m, "insecure", mwhere), pull_from))
    return RegistryEntry(
        prefix=prefix,
        location=location,
        insecure=_bool(raw, "insecure", where),
        blocked=_bool(raw, "blocked", where),
        mirrors=tuple(mirrors),
    )


def parse_conf(text: str, source: str) -> RegistriesConf:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistriesConfError(f"{source}: not valid TOML: {exc}") from None
    if "registries" in raw and isinstance(raw["registries"], dict):
        raise RegistriesConfError(
            f"{source}: the version 1 format ([registries.search] ...) is not supported; "
            "use version 2 (unqualified-search-registries, [[registry]])"
        )
    search = raw.get("unqualified-search-registries", [DOCKER_HUB])
    if not isinstance(search, list) or not all(isinstance(s, str) for s in search):
        raise RegistriesConfError(f"{source}: unqualified-search-registries must list hosts")
    aliases_raw = raw.get("aliases", {})
    if not isinstance(aliases_raw, dict):
        raise RegistriesConfError(f"{source}: [aliases] must be a table")
    aliases: dict[str, str] = {}
    for short, target in aliases_raw.items():
        if not isinstance(target, str):
            raise RegistriesConfError(f"{source}: alias {short!r} must map to a string")
        try:
            parsed = parse(target)
        except ReferenceError as exc:
            raise RegistriesConfError(f"{source}: alias {short!r}: {exc}") from None
        if parsed.is_short:
            raise RegistriesConfError(
                f"{source}: alias {short!r} must map to a fully qualified name"
            )
        aliases[short] = target
    entries_raw = raw.get("registry", [])
    if not isinstance(entries_raw, list):
        raise RegistriesConfError(f"{source}: [[registry]] must be an array of tables")
    entries = tuple(_entry(e, f"{source}: registry[{i}]") for i, e in enumerate(entries_raw))
    return RegistriesConf(tuple(search), aliases, entries, source)


def load_conf(path: Path) -> RegistriesConf:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RegistriesConf(source=str(path))
    except OSError as exc:
        raise RegistriesConfError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RegistriesConfError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_conf(text, str(path))
