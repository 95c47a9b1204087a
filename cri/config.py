"""skiffd's configuration: typed, validated, with a default for every key.

Sources, later ones winning: the built-in defaults, the main file
(``/etc/skiff/skiff.yaml``), its drop-ins (``/etc/skiff/skiff.d/*.yaml``, in name
order), then command-line flags. Each file is checked on its own first, so an error
names the file it came from; mappings merge key by key, everything else is replaced.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

DEFAULT_CONFIG_FILE = Path("/etc/skiff/skiff.yaml")
DEFAULT_DROPIN_DIR = Path("/etc/skiff/skiff.d")

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
CgroupDriver = Literal["cgroupfs", "systemd"]


def _absolute(value: str) -> str | None:
    return None if value.startswith("/") else "must be an absolute path"


# sockaddr_un holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107


def _absolute_or_unix_url(value: str) -> str | None:
    path = value.removeprefix("unix://")
    if not path.startswith("/"):
        return "must be an absolute socket path or unix:///path"
    if len(path.encode()) > MAX_SOCKET_PATH:
        return f"a unix socket path can be at most {MAX_SOCKET_PATH} bytes long"
    return None


def _binary(value: str) -> str | None:
    if not value:
        return "must name a program (a name looked up in PATH, or an absolute path)"
    if "/" in value and not value.startswith("/"):
        return "must be a program name or an absolute path"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _key(doc: str, check: Any = None) -> Any:
    """Field metadata: a one-line help text and an optional value check."""
    return {"doc": doc, "check": check}


@dataclass(frozen=True)
class RuntimeHandlerConfig:
    """An OCI runtime the kubelet can ask for by RuntimeClass handler name."""

    path: str = field(
        default="runc", metadata=_key("the OCI runtime program (name or path)", _binary)
    )


def _default_handlers() -> dict[str, RuntimeHandlerConfig]:
    return {
        "runc": RuntimeHandlerConfig(path="runc"),
        "crun": RuntimeHandlerConfig(path="crun"),
    }


@dataclass(frozen=True)
class RuntimeConfig:
    default_handler: str = field(
        default="runc", metadata=_key("the handler used when a pod names none")
    )
    handlers: dict[str, RuntimeHandlerConfig] = field(
        default_factory=_default_handlers,
        metadata=_key("runtime handlers by name (RuntimeClass handler)"),
    )
    conmon: str = field(
        default="conmon", metadata=_key("the container monitor program (name or path)", _binary)
    )
    cgroup_driver: CgroupDriver = field(
        default="cgroupfs", metadata=_key("how pod and container cgroups are made")
    )
    command_timeout: float = field(
        default=30.0,
        metadata=_key(
            "seconds a runtime command (create, start, kill, delete) or conmon's start may "
            "take before it is killed and the call fails",
            _positive,
        ),
    )
    restrict_oom_score_adj: bool = field(
        default=True,
        metadata=_key(
            "raise a container's oom_score_adj to skiffd's own when lower (nodes that "
            "refuse negative values)"
        ),
    )
    pod_shm_size: int = field(
        default=64 * 1024 * 1024,
        metadata=_key("bytes of the tmpfs a pod gets as /dev/shm", _at_least_one),
    )


@dataclass(frozen=True)
class NetworkConfig:
    cni_config_dir: str = field(
        default="/etc/cni/net.d", metadata=_key("where CNI network configs are read", _absolute)
    )
    cni_plugin_dirs: list[str] = field(
        default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"],
        metadata=_key("where CNI plugin programs are looked up, in order", _absolute),
    )
    cni_default_network: str = field(
        default="",
        metadata=_key("the CNI network to use; empty takes the first config by file name"),
    )
    cni_plugin_timeout: float = field(
        default=60.0, metadata=_key("seconds a CNI plugin may run before it is killed", _positive)
    )


@dataclass(frozen=True)
class ImageConfig:
    registries_conf: str = field(
        default="/etc/containers/registries.conf",
        metadata=_key("registry mirrors, short names, insecure and blocked registries", _absolute),
    )
    certs_dir: str = field(
        default="/etc/containers/certs.d",
        metadata=_key("per-registry CAs and client certificates (<host[:port]>/)", _absolute),
    )
    auth_file: str = field(
        default="/run/containers/0/auth.json",
        metadata=_key("registry credentials (containers-auth.json format)", _absolute),
    )
    max_parallel_layers: int = field(
        default=4, metadata=_key("layers downloaded at once per pull", _at_least_one)
    )
    pull_progress_timeout: float = field(
        default=60.0,
        metadata=_key("seconds a pull may go without receiving a byte", _positive),
    )
    pull_retries: int = field(
        default=3, metadata=_key("retries of a failed request or layer download", _at_least_one)
    )
    pull_progress_log_interval: float = field(
        default=5.0, metadata=_key("seconds between log lines on a running pull", _positive)
    )


def _optional_absolute(value: str) -> str | None:
    return None if not value or value.startswith("/") else "must be empty or an absolute path"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number from 0 (any free port) to 65535"


@dataclass(frozen=True)
class StreamingConfig:
    address: str = field(
        default="127.0.0.1", metadata=_key("where the exec/attach/port-forward server listens")
    )
    port: int = field(default=0, metadata=_key("its port; 0 picks a free one", _port))
    token_ttl: float = field(
        default=60.0,
        metadata=_key("seconds an Exec/Attach/PortForward URL stays usable", _positive),
    )
    tls_cert: str = field(
        default="", metadata=_key("PEM certificate for https streaming", _optional_absolute)
    )
    tls_key: str = field(default="", metadata=_key("its PEM private key", _optional_absolute))


def _not_empty(value: str) -> str | None:
    return None if value else "must name an address (0.0.0.0 or :: for every interface)"


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = field(
        default=False, metadata=_key("serve Prometheus metrics over HTTP at /metrics")
    )
    address: str = field(
        default="127.0.0.1", metadata=_key("where the metrics endpoint listens", _not_empty)
    )
    port: int = field(default=9090, metadata=_key("its port; 0 picks a free one", _port))


@dataclass(frozen=True)
class Config:
    root: str = field(
        default="/var/lib/skiff", metadata=_key("persistent state (images, records)", _absolute)
    )
    runroot: str = field(
        default="/run/skiff", metadata=_key("volatile state (namespaces, bundles)", _absolute)
    )
    listen: str = field(
        default="/run/skiff/skiff.sock",
        metadata=_key("the CRI socket", _absolute_or_unix_url),
    )
    log_level: LogLevel = field(default="info", metadata=_key("log verbosity"))
    log_format: LogFormat = field(default="text", metadata=_key("log line format"))
    shutdown_grace: float = field(
        default=10.0,
        metadata=_key("seconds in-flight calls get to finish on SIGTERM", _positive),
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def socket_path(self) -> Path:
        return Path(self.listen.removeprefix("unix://"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


class ConfigError(Exception):
    """A config problem, naming where it came from, the key and what is allowed."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"config {where}: {problem}")


# --- checking a raw mapping against the dataclasses -------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(v) for v in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, str(tp)
    )


def _describe(value: Any) -> str:
    kind = type(value).__name__
    kind = {"NoneType": "null", "dict": "mapping", "list": "list", "str": "string"}.get(kind, kind)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(tp: Any, value: Any, key: str, source: str, check: Any) -> Any:
    """Check one value against its declared type; return it converted to that type."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(source, key, f"must be {_type_name(tp)} (got {_describe(value)})")
        return value
    if origin in (Union, types.UnionType):
        raise TypeError("unions are not used in the config schema")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"must be {_type_name(tp)} (got {_describe(value)})")
        (item_tp,) = get_args(tp)
        return [
            _check_value(item_tp, item, f"{key}[{i}]", source, check)
            for i, item in enumerate(value)
        ]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"must be {_type_name(tp)} (got {_describe(value)})")
        _, item_tp = get_args(tp)
        out = {}
        for name, item in value.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(source, key, f"names must be non-empty strings (got {name!r})")
            out[name] = _check_value(item_tp, item, f"{key}.{name}", source, None)
        return out
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"must be a mapping (got {_describe(value)})")
        return _check_mapping(tp, value, key, source)
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(source, key, f"must be {_type_name(tp)} (got {_describe(value)})")
    if check is not None:
        problem = check(value)
        if problem:
            raise ConfigError(source, key, f"{problem} (got {_describe(value)})")
    return value


def _check_mapping(cls: Any, raw: Mapping[str, Any], prefix: str, source: str) -> dict[str, Any]:
    """Check a (partial) mapping for the dataclass `cls`; unknown keys are errors."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            allowed = ", ".join(fields)
            raise ConfigError(source, key, f"unknown key; allowed here: {allowed}")
        check = fields[name].metadata.get("check")
        out[name] = _check_value(hints[name], value, key, source, check)
    return out


def _build(cls: Any, raw: Mapping[str, Any]) -> Any:
    """Make the dataclass `cls` from an already checked mapping, defaults filling gaps."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp, value = hints[f.name], raw[f.name]
        if dataclasses.is_dataclass(tp):
            value = _build(tp, value)
        elif get_origin(tp) is dict and dataclasses.is_dataclass(get_args(tp)[1]):
            value = {k: _build(get_args(tp)[1], v) for k, v in value.items()}
        kwargs[f.name] = value
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- loading -------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigSources:
    """Where the config comes from; kept so SIGHUP can read the same sources again."""

    config_file: Path = DEFAULT_CONFIG_FILE
    config_file_required: bool = False
    dropin_dir: Path = DEFAULT_DROPIN_DIR
    overrides: Mapping[str, Any] = field(default_factory=dict)


def read_file(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "the file is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "", f"must be a mapping of keys (got {_describe(raw)})")
    return _check_mapping(Config, raw, "", source)


def dropin_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(str(directory), "", f"cannot list drop-ins: {exc.strerror}") from None
    return [p for p in entries if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")]


def load(sources: ConfigSources) -> Config:
    # Files merge over the defaults, so a drop-in adding a handler keeps the built-in ones.
    merged: dict[str, Any] = Config().to_dict()
    if sources.config_file_required or sources.config_file.exists():
        merged = _merge(merged, read_file(sources.config_file))
    for path in dropin_files(sources.dropin_dir):
        merged = _merge(merged, read_file(path))
    merged = _merge(merged, _check_mapping(Config, sources.overrides, "", "command line"))
    config: Config = _build(Config, merged)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks that involve more than one key."""
    handlers = config.runtime.handlers
    if not handlers:
        raise ConfigError("effective config", "runtime.handlers", "at least one handler is needed")
    if config.runtime.default_handler not in handlers:
        raise ConfigError(
            "effective config",
            "runtime.default_handler",
            f"names no configured handler (got {config.runtime.default_handler!r}; "
            f"configured: {', '.join(sorted(handlers))})",
        )
    if config.root == config.runroot:
        raise ConfigError("effective config", "runroot", "must differ from root")
    if bool(config.streaming.tls_cert) != bool(config.streaming.tls_key):
        raise ConfigError(
            "effective config", "streaming.tls_key", "tls_cert and tls_key go together"
        )
