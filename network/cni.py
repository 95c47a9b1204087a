"""Running CNI plugin chains: ADD, DEL and CHECK of one pod attachment.

One attachment is (network, sandbox id, interface name). ADD runs the network's plugins
in order, each one getting the network's ``name`` and ``cniVersion``, the previous
plugin's result as ``prevResult`` (config versions 0.3.0 and later) and, in
``runtimeConfig``, the runtime values of the capabilities it declares. A failing ADD is
rolled back by a DEL of the whole chain, so an ADD either completes or leaves nothing.

The exact network config, the capability values and the final result are cached (one
JSON file per attachment, written atomically) before ADD returns, so a DEL after a
daemon restart, or after the config file changed or went away, tears down exactly what
ADD set up. The cache entry is first written before the first plugin runs (without a
result), so even a crash in the middle of an ADD leaves enough to clean up.

Callers serialize lifecycle calls on one sandbox (per-object locks in cri/); this
module does not lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base import failpoints, processes
from base.errors import DeadlineExceeded, Unknown
from base.files import fsync_directory, remove_unfinished, write_atomic
from base.processes import ProgramTimedOut
from network.cni_config import CniNetwork, find_plugin

log = logging.getLogger("skiff.cni")

CACHE_KIND = "skiffCniCacheV1"
CACHE_SUFFIX = ".json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROTOCOLS = ("tcp", "udp", "sctp")
# How much of a plugin's stderr goes into an error message when it printed no JSON.
STDERR_TAIL = 800

# Told of every plugin run: (plugin type, command, seconds, succeeded). The daemon
# turns these into metrics; this layer does not know about them.
PluginObserver = Callable[[str, str, float, bool], None]

# CNI spec: container ids start alphanumeric, then alphanumerics, "_", "." or "-".
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"  # tcp | udp | sctp
    host_ip: str = ""


@dataclass(frozen=True)
class PodNetworkRequest:
    container_id: str  # the sandbox id (CNI_CONTAINERID)
    netns: str  # path of the pinned netns ("" allowed for DEL when it's gone)
    pod_namespace: str
    pod_name: str
    pod_uid: str
    ifname: str = "eth0"
    port_mappings: tuple[PortMapping, ...] = ()
    # {"ingressRate", "ingressBurst", "egressRate", "egressBurst"}: the bandwidth capability
    bandwidth: Mapping[str, int] | None = None
    # the ipRanges capability: a list of range sets, each a list of subnets
    ip_ranges: tuple[tuple[str, ...], ...] = ()
    dns: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PodNetworkResult:
    ips: tuple[str, ...]  # pod addresses without prefix length, in result order
    interfaces: tuple[dict[str, Any], ...]
    raw: Mapping[str, Any]  # the final result JSON


class CniError(Unknown):
    """A CNI operation failed; the message names the plugin, network and command."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str = "",
        network: str = "",
        command: str = "",
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.plugin = plugin
        self.network = network
        self.command = command
        self.code = code

    def __str__(self) -> str:
        return self.message

    def naming(self, subject: str) -> CniError:
        """This error with ``subject`` (the pod) named first: the plugins' own words
        name the plugin and network, not whose network it was."""
        self.message = f"{subject}: {self.message}"
        self.args = (self.message,)
        return self


class CniTimeout(DeadlineExceeded, CniError):
    pass


# --------------------------------------------------------------------------- pure logic


def version_tuple(version: str) -> tuple[int, int, int]:
    """The version as numbers: "0.4.0" -> (0, 4, 0); unparsable parts count as 0."""
    parts = version.split(".")
    numbers: list[int] = []
    for part in parts[:3]:
        digits = re.match(r"\d+", part)
        numbers.append(int(digits.group()) if digits else 0)
    while len(numbers) < 3:
        numbers.append(0)
    return (numbers[0], numbers[1], numbers[2])


def chains_prev_result(cni_version: str) -> bool:
    """ADD passes the previous plugin's result along from spec 0.3.0 on."""
    return version_tuple(cni_version) >= (0, 3, 0)


def del_gets_prev_result(cni_version: str) -> bool:
    """DEL gets the cached result as prevResult from spec 0.4.0 on."""
    return version_tuple(cni_version) >= (0, 4, 0)


def supports_check(cni_version: str) -> bool:
    return version_tuple(cni_version) >= (0, 4, 0)


def cni_args(request: PodNetworkRequest) -> str:
    """The CNI_ARGS value for a pod, as the kubelet's network plugins expect it."""
    pairs = [
        ("K8S_POD_NAMESPACE", request.pod_namespace),
        ("K8S_POD_NAME", request.pod_name),
        ("K8S_POD_INFRA_CONTAINER_ID", request.container_id),
        ("K8S_POD_UID", request.pod_uid),
    ]
    for key, value in pairs:
        if ";" in value or "=" in value:
            raise CniError(f"CNI_ARGS: {key} {value!r} must not contain ';' or '='")
    return "IgnoreUnknown=1;" + ";".join(f"{key}={value}" for key, value in pairs)


def capability_args(request: PodNetworkRequest) -> dict[str, Any]:
    """The runtime values of the well-known capabilities this request carries.

    Only values that are present are listed (a plugin declaring ``portMappings`` gets no
    ``runtimeConfig.portMappings`` for a pod without host ports). Port mappings with no
    host port (0, as the CRI sends for "container port only") are left out.
    """
    args: dict[str, Any] = {}
    ports = []
    for mapping in request.port_mappings:
        if mapping.host_port <= 0:
            continue
        protocol = (mapping.protocol or "tcp").lower()
        if protocol not in PROTOCOLS:
            raise CniError(
                f"port mapping {mapping.host_port}->{mapping.container_port}: protocol "
                f"{mapping.protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if not (0 < mapping.host_port < 65536 and 0 < mapping.container_port < 65536):
            raise CniError(
                f"port mapping {mapping.host_port}->{mapping.container_port}: "
                "ports must be between 1 and 65535"
            )
        ports.append(
            {
                "hostPort": mapping.host_port,
                "containerPort": mapping.container_port,
                "protocol": protocol,
                "hostIP": mapping.host_ip,
            }
        )
    if ports:
        args["portMappings"] = ports
    if request.bandwidth:
        args["bandwidth"] = dict(request.bandwidth)
    ranges = [[{"subnet": subnet} for subnet in rng] for rng in request.ip_ranges if rng]
    if ranges:
        args["ipRanges"] = ranges
    if request.dns:
        args["dns"] = copy.deepcopy(dict(request.dns))
    return args


def plugin_config(
    plugin: Mapping[str, Any],
    *,
    name: str,
    cni_version: str,
    prev_result: Mapping[str, Any] | None,
    capabilities: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON one plugin of a chain gets on stdin.

    The network's ``name`` and ``cniVersion`` are injected (replacing any the plugin's
    entry has), ``prevResult`` when given, and ``runtimeConfig`` holding the values of
    exactly those capabilities the plugin declares as true in ``capabilities``; a
    plugin declaring none, or none that this pod has values for, keeps its own
    ``runtimeConfig`` (if any) untouched.
    """
    config = copy.deepcopy(dict(plugin))
    config["cniVersion"] = cni_version
    config["name"] = name
    declared = plugin.get("capabilities")
    runtime: dict[str, Any] = {}
    if isinstance(declared, Mapping):
        for capability, enabled in declared.items():
            if enabled is True and capability in capabilities:
                runtime[capability] = copy.deepcopy(capabilities[capability])
    if runtime:
        config["runtimeConfig"] = runtime
    if prev_result is not None:
        config["prevResult"] = copy.deepcopy(dict(prev_result))
    else:
        config.pop("prevResult", None)
    return config


def _address(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"address {text!r} is not a string")
    return str(ipaddress.ip_interface(text).ip)


def parse_result(raw: Mapping[str, Any]) -> PodNetworkResult:
    """Read a CNI result (spec 0.1.0 .. 1.x) into the pod's addresses and interfaces.

    For 0.3.0 and later, ``ips[].address`` in result order, without the prefix length;
    an address whose ``interface`` index points at a host-side interface (one with no
    ``sandbox``) is not a pod address and is left out. For 0.1.0/0.2.0, ``ip4.ip`` then
    ``ip6.ip``. Raises ValueError for a malformed result.
    """
    interfaces_raw = raw.get("interfaces", [])
    if interfaces_raw is None:
        interfaces_raw = []
    if not isinstance(interfaces_raw, list) or not all(isinstance(i, dict) for i in interfaces_raw):
        raise ValueError("interfaces must be a list of objects")
    interfaces = tuple(dict(i) for i in interfaces_raw)
    ips: list[str] = []
    if "ips" in raw and raw["ips"] is not None:
        entries = raw["ips"]
        if not isinstance(entries, list):
            raise ValueError("ips must be a list")
        for entry in entries:
            if not isinstance(entry, dict):
                raise ValueError("ips entries must be objects")
            index = entry.get("interface")
            if isinstance(index, int) and not isinstance(index, bool):
                if not 0 <= index < len(interfaces):
                    raise ValueError(
                        f"ips entry {entry.get('address')!r} names interface {index}, "
                        f"but the result has {len(interfaces)} interface(s)"
                    )
                if not interfaces[index].get("sandbox"):
                    continue
            ips.append(_address(entry.get("address")))
    else:
        for key in ("ip4", "ip6"):
            legacy = raw.get(key)
            if isinstance(legacy, dict) and legacy.get("ip"):
                ips.append(_address(legacy["ip"]))
    return PodNetworkResult(ips=tuple(ips), interfaces=interfaces, raw=raw)


def plugin_error_message(stdout: bytes, stderr: bytes, returncode: int) -> tuple[str, int | None]:
    """What a failed plugin said: its CNI error JSON (msg, details) when it printed one,
    else the exit status and the tail of its stderr (or stdout)."""
    try:
        error = json.loads(stdout)
    except (ValueError, UnicodeDecodeError):
        error = None
    if isinstance(error, dict) and (error.get("msg") or error.get("code") is not None):
        msg = str(error.get("msg") or f"error code {error.get('code')}")
        details = error.get("details")
        if details:
            msg = f"{msg}: {details}"
        code = error.get("code")
        return msg, code if isinstance(code, int) and not isinstance(code, bool) else None
    status = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    tail = (stderr.strip() or stdout.strip()).decode(errors="replace")[-STDERR_TAIL:]
    return (f"{status}: {tail}" if tail else f"{status} (no output)"), None


def _check_request(request: PodNetworkRequest) -> None:
    if not _CONTAINER_ID.fullmatch(request.container_id):
        raise CniError(
            f"sandbox id {request.container_id!r} is not a valid CNI container id "
            "(alphanumerics, '_', '.', '-'; starting alphanumeric)"
        )
    ifname = request.ifname
    if (
        not ifname
        or len(ifname) > 15
        or ifname in (".", "..")
        or any(c in ifname for c in "/:")
        or any(c.isspace() for c in ifname)
    ):
        raise CniError(
            f"interface name {ifname!r} is not valid (1-15 characters, not '.' or '..', "
            "no '/', ':' or whitespace)"
        )


def _is_live_netns(path: str) -> bool:
    """True when path is a network namespace file (nsfs), not a leftover mount point."""
    if not path:
        return False
    try:
        st = os.stat(path)
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return st.st_dev == ours.st_dev


# ------------------------------------------------------------------------------- cache


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data)


def _remove_durably(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_directory(path.parent)


@dataclass(frozen=True)
class _Attachment:
    """Everything a DEL or CHECK of one attachment needs."""

    network_name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    capabilities: dict[str, Any]
    cni_args: str
    netns: str
    result: dict[str, Any] | None

    def cache_entry(self, container_id: str, ifname: str) -> dict[str, Any]:
        return {
            "kind": CACHE_KIND,
            "containerId": container_id,
            "ifName": ifname,
            "networkName": self.network_name,
            "config": {
                "cniVersion": self.cni_version,
                "name": self.network_name,
                "plugins": list(self.plugins),
            },
            "capabilityArgs": self.capabilities,
            "cniArgs": self.cni_args,
            "netns": self.netns,
            "result": self.result,
        }

    @staticmethod
    def from_cache(entry: Mapping[str, Any]) -> _Attachment:
        config = entry["config"]
        plugins = config["plugins"]
        if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
            raise ValueError("config.plugins is not a list of objects")
        result = entry.get("result")
        capabilities = entry.get("capabilityArgs") or {}
        if not isinstance(capabilities, dict):
            raise ValueError("capabilityArgs is not an object")
        return _Attachment(
            network_name=str(config["name"]),
            cni_version=str(config["cniVersion"]),
            plugins=tuple(plugins),
            capabilities=capabilities,
            cni_args=str(entry.get("cniArgs") or ""),
            netns=str(entry.get("netns") or ""),
            result=result if isinstance(result, dict) else None,
        )


# ------------------------------------------------------------------------------ runner


class CniPlugins:
    """Runs CNI plugin chains for pod attachments and keeps the result cache."""

    def __init__(
        self,
        plugin_dirs: list[str],
        cache_dir: Path,
        timeout: float = 60.0,
        observer: PluginObserver | None = None,
    ) -> None:
        self.plugin_dirs = list(plugin_dirs)
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.observer = observer

    # ---- public API

    async def add(self, network: CniNetwork, request: PodNetworkRequest) -> PodNetworkResult:
        """Attach the pod to the network; on any failure the chain is DELeted again."""
        paths, attachment = self._plan_add(network, request)
        cache_path = self._cache_path(network.name, request.container_id, request.ifname)
        await self._store_before_add(cache_path, attachment, request)
        parsed = await self._add_or_roll_back(cache_path, attachment, paths, request)
        failpoints.step("cni-add")
        log.info(
            "CNI ADD done",
            extra={
                "sandbox_id": request.container_id,
                "network": network.name,
                "ips": list(parsed.ips),
            },
        )
        return parsed

    async def delete(self, network: CniNetwork | None, request: PodNetworkRequest) -> None:
        """Detach the pod. Uses the cached config and result when there is a cache entry
        (so what ADD set up is what gets torn down), else ``network``. With
        ``network=None`` and no cache entry there is nothing to do. Idempotent."""
        _check_request(request)
        work: list[tuple[Path | None, _Attachment]] = []
        if network is not None:
            path = self._cache_path(network.name, request.container_id, request.ifname)
            entry = await asyncio.to_thread(self._read_entry, path)
            if entry is not None:
                work.append((path, entry))
            else:
                work.append(
                    (
                        None,
                        _Attachment(
                            network_name=network.name,
                            cni_version=network.cni_version,
                            plugins=network.plugins,
                            capabilities=capability_args(request),
                            cni_args=cni_args(request),
                            netns=request.netns,
                            result=None,
                        ),
                    )
                )
        else:
            work.extend(
                await asyncio.to_thread(self._entries_for, request.container_id, request.ifname)
            )
            if not work:
                log.debug(
                    "CNI DEL: nothing cached, nothing to do",
                    extra={"sandbox_id": request.container_id, "ifname": request.ifname},
                )
                return
        errors: list[CniError] = []
        for cache_path, attachment in work:
            failures = await self._del_chain(attachment, request)
            if failures:
                errors.extend(failures)
                continue
            if cache_path is not None:
                await asyncio.to_thread(_remove_durably, cache_path)
            failpoints.step("cni-del")
            log.info(
                "CNI DEL done",
                extra={"sandbox_id": request.container_id, "network": attachment.network_name},
            )
        if errors:
            raise _combine(errors)

    async def check(self, network: CniNetwork, request: PodNetworkRequest) -> None:
        """Ask every plugin whether the attachment is still as ADD made it."""
        _check_request(request)
        if not supports_check(network.cni_version):
            raise CniError(
                f"CNI network {network.name} has cniVersion {network.cni_version}; "
                "CHECK needs 0.4.0 or later",
                network=network.name,
                command="CHECK",
            )
        path = self._cache_path(network.name, request.container_id, request.ifname)
        entry = await asyncio.to_thread(self._read_entry, path)
        if entry is None or entry.result is None:
            raise CniError(
                f"CNI CHECK for sandbox {request.container_id} (network {network.name}): "
                f"no cached ADD result for interface {request.ifname}; attach it first",
                network=network.name,
                command="CHECK",
            )
        paths = self._resolve_all(network.name, network.plugin_types, "CHECK")
        attachment = _Attachment(
            network_name=network.name,
            cni_version=network.cni_version,
            plugins=network.plugins,
            capabilities=capability_args(request),
            cni_args=cni_args(request),
            netns=request.netns or entry.netns,
            result=entry.result,
        )
        for plugin, plugin_path in zip(network.plugins, paths, strict=True):
            config = plugin_config(
                plugin,
                name=network.name,
                cni_version=network.cni_version,
                prev_result=entry.result,
                capabilities=attachment.capabilities,
            )
            await self._exec(plugin_path, config, "CHECK", request, attachment)

    def cached(self, container_id: str, ifname: str = "eth0") -> Mapping[str, Any] | None:
        """The cache entry of this attachment (newest, if several networks have one):
        ``config`` (the network config ADD used), ``capabilityArgs``, ``cniArgs``,
        ``netns`` and ``result`` (None while an ADD is under way, or after a failed ADD
        whose rollback failed too)."""
        best: tuple[float, dict[str, Any]] | None = None
        for path in self._candidate_paths(container_id, ifname):
            raw = self._read_raw(path, container_id, ifname)
            if raw is None:
                continue
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if best is None or mtime > best[0]:
                best = (mtime, raw)
        return None if best is None else best[1]

    # ---- ADD, step by step

    def _plan_add(
        self, network: CniNetwork, request: PodNetworkRequest
    ) -> tuple[list[str], _Attachment]:
        """Everything an ADD checks before it runs anything: the request, the plugins'
        paths, and the attachment as it will be cached."""
        _check_request(request)
        if not request.netns:
            raise CniError(
                f"CNI ADD for sandbox {request.container_id} (network {network.name}): "
                "no network namespace path"
            )
        paths = self._resolve_all(network.name, network.plugin_types, "ADD")
        attachment = _Attachment(
            network_name=network.name,
            cni_version=network.cni_version,
            plugins=tuple(copy.deepcopy(p) for p in network.plugins),
            capabilities=capability_args(request),
            cni_args=cni_args(request),
            netns=request.netns,
            result=None,
        )
        return paths, attachment

    async def _store_before_add(
        self, cache_path: Path, attachment: _Attachment, request: PodNetworkRequest
    ) -> None:
        """Cache the attachment, without a result, before the first plugin runs: a crash
        mid-ADD still leaves the exact config (and capability values) for the DEL that
        cleans up."""
        if await asyncio.to_thread(cache_path.exists):
            log.warning(
                "CNI ADD over an attachment that was never deleted; its cache entry is replaced",
                extra={"sandbox_id": request.container_id, "network": attachment.network_name},
            )
        await self._store_or_fail(cache_path, attachment, request)

    async def _add_or_roll_back(
        self,
        cache_path: Path,
        attachment: _Attachment,
        paths: list[str],
        request: PodNetworkRequest,
    ) -> PodNetworkResult:
        """ADD each plugin in order and cache the final result; on any failure, DEL the
        chain again, handing it the last result a plugin gave."""
        chain = chains_prev_result(attachment.cni_version)
        prev: dict[str, Any] | None = None
        try:
            for plugin, path in zip(attachment.plugins, paths, strict=True):
                config = plugin_config(
                    plugin,
                    name=attachment.network_name,
                    cni_version=attachment.cni_version,
                    prev_result=prev if chain else None,
                    capabilities=attachment.capabilities,
                )
                out = await self._exec(path, config, "ADD", request, attachment)
                prev = self._parse_add_output(out, str(plugin["type"]), attachment.network_name)
            parsed = _pod_result(attachment.network_name, prev)
            await self._store_or_fail(cache_path, _replace_result(attachment, prev), request)
        except (Exception, asyncio.CancelledError) as exc:
            await self._roll_back(cache_path, _replace_result(attachment, prev), request, exc)
            raise
        return parsed

    # ---- plugin execution

    def _resolve_all(self, network: str, kinds: tuple[str, ...], command: str) -> list[str]:
        paths: list[str] = []
        for kind in kinds:
            path = find_plugin(kind, self.plugin_dirs)
            if path is None:
                raise CniError(
                    f"CNI plugin {kind} (network {network}) not found in "
                    f"{':'.join(self.plugin_dirs) or '(no plugin directories)'}",
                    plugin=kind,
                    network=network,
                    command=command,
                )
            paths.append(path)
        return paths

    def _env(
        self, command: str, request: PodNetworkRequest, attachment: _Attachment
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.setdefault("PATH", DEFAULT_PATH)
        netns = attachment.netns if command != "DEL" else _del_netns(request, attachment)
        env.update(
            {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": request.container_id,
                "CNI_NETNS": netns,
                "CNI_IFNAME": request.ifname,
                "CNI_PATH": ":".join(self.plugin_dirs),
                "CNI_ARGS": attachment.cni_args,
            }
        )
        return env

    async def _exec(
        self,
        path: str,
        config: Mapping[str, Any],
        command: str,
        request: PodNetworkRequest,
        attachment: _Attachment,
    ) -> bytes:
        """:meth:`_run_plugin`, telling the observer how long it took and whether it
        worked (a cancelled run is not reported: it neither failed nor finished)."""
        started = time.monotonic()
        try:
            out = await self._run_plugin(path, config, command, request, attachment)
        except Exception:
            self._observe(path, config, command, started, ok=False)
            raise
        self._observe(path, config, command, started, ok=True)
        return out

    def _observe(
        self, path: str, config: Mapping[str, Any], command: str, started: float, ok: bool
    ) -> None:
        if self.observer is not None:
            self.observer(_plugin_type(path, config), command, time.monotonic() - started, ok)

    async def _run_plugin(
        self,
        path: str,
        config: Mapping[str, Any],
        command: str,
        request: PodNetworkRequest,
        attachment: _Attachment,
    ) -> bytes:
        """Run one plugin; its stdout on success, CniError/CniTimeout otherwise."""
        kind = _plugin_type(path, config)
        network = attachment.network_name
        where = f"CNI plugin {kind} (network {network})"
        fields: dict[str, Any] = {
            "sandbox_id": request.container_id,
            "network": network,
            "plugin": kind,
            "command": command,
        }
        started = time.monotonic()
        try:
            done = await processes.run(
                [path],
                timeout=self.timeout,
                stdin=json.dumps(config).encode(),
                env=self._env(command, request, attachment),
                # Its own process group, so a timeout also ends what it started
                # (bridge runs its IPAM plugin as a child).
                new_session=True,
            )
        except OSError as exc:
            raise CniError(
                f"{where} failed on {command}: cannot run {path}: {exc.strerror}",
                plugin=kind,
                network=network,
                command=command,
            ) from None
        except ProgramTimedOut as late:
            pid = late.finished.pid
            fields["duration_ms"] = _ms(started)
            log.warning("CNI plugin timed out, killed", extra={**fields, "pid": pid})
            raise CniTimeout(
                f"{where} timed out on {command} after {self.timeout:g}s (killed pid {pid})",
                plugin=kind,
                network=network,
                command=command,
            ) from None
        fields["duration_ms"] = _ms(started)
        return _plugin_output(done, kind, network, command, fields)

    @staticmethod
    def _parse_add_output(out: bytes, kind: str, network: str) -> dict[str, Any]:
        where = f"CNI plugin {kind} (network {network})"
        if not out.strip():
            raise CniError(
                f"{where} failed on ADD: it printed no result",
                plugin=kind,
                network=network,
                command="ADD",
            )
        try:
            result = json.loads(out)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CniError(
                f"{where} failed on ADD: its result is not JSON: {exc}",
                plugin=kind,
                network=network,
                command="ADD",
            ) from None
        if not isinstance(result, dict):
            raise CniError(
                f"{where} failed on ADD: its result is not a JSON object",
                plugin=kind,
                network=network,
                command="ADD",
            )
        return result

    async def _del_chain(
        self, attachment: _Attachment, request: PodNetworkRequest
    ) -> list[CniError]:
        """DEL every plugin in reverse order; the failures (none: all done)."""
        prev = attachment.result if del_gets_prev_result(attachment.cni_version) else None
        errors: list[CniError] = []
        for plugin in reversed(attachment.plugins):
            kind = str(plugin.get("type", ""))
            path = find_plugin(kind, self.plugin_dirs) if kind else None
            if path is None:
                errors.append(
                    CniError(
                        f"CNI plugin {kind or '(no type)'} (network {attachment.network_name}) "
                        f"not found in {':'.join(self.plugin_dirs)}",
                        plugin=kind,
                        network=attachment.network_name,
                        command="DEL",
                    )
                )
                continue
            config = plugin_config(
                plugin,
                name=attachment.network_name,
                cni_version=attachment.cni_version,
                prev_result=prev,
                capabilities=attachment.capabilities,
            )
            try:
                await self._exec(path, config, "DEL", request, attachment)
            except CniError as exc:
                errors.append(exc)
        return errors

    async def _roll_back(
        self,
        cache_path: Path,
        attachment: _Attachment,
        request: PodNetworkRequest,
        cause: BaseException,
    ) -> None:
        """Undo a failed ADD: DEL the whole chain, then drop the cache entry. When the
        DEL fails too, the entry stays, so a later DEL can finish the job."""
        log.warning(
            "CNI ADD failed, deleting the chain",
            extra={
                "sandbox_id": request.container_id,
                "network": attachment.network_name,
                "error": str(cause) or type(cause).__name__,
            },
        )
        failures = await self._del_chain(attachment, request)
        if failures:
            for failure in failures:
                log.error(
                    "CNI rollback DEL failed; the attachment stays cached for a later DEL",
                    extra={
                        "sandbox_id": request.container_id,
                        "network": attachment.network_name,
                        "plugin": failure.plugin,
                        "error": str(failure),
                    },
                )
            if isinstance(cause, CniError):
                cause.message += "; cleaning up also failed: " + "; ".join(str(f) for f in failures)
            with contextlib.suppress(OSError):
                await self._store(cache_path, attachment, request)
            return
        try:
            await asyncio.to_thread(_remove_durably, cache_path)
        except OSError as exc:
            log.error(
                "CNI cache entry not removed",
                extra={
                    "sandbox_id": request.container_id,
                    "path": str(cache_path),
                    "error": exc.strerror,
                },
            )

    # ---- cache

    def remove_unfinished_writes(self) -> list[str]:
        """The temp files of cache writes cut short by a death before their rename: no
        entry is in them that its final file does not have. Call at start."""
        return remove_unfinished(self.cache_dir)

    def _cache_path(self, network: str, container_id: str, ifname: str) -> Path:
        if not network or "/" in network or "\0" in network or network.startswith("."):
            raise CniError(f"CNI network name {network!r} cannot name a cache file")
        return self.cache_dir / f"{network}-{container_id}-{ifname}{CACHE_SUFFIX}"

    async def _store(self, path: Path, attachment: _Attachment, request: PodNetworkRequest) -> None:
        data = json.dumps(attachment.cache_entry(request.container_id, request.ifname)).encode()
        await asyncio.to_thread(_write_atomically, path, data)

    async def _store_or_fail(
        self, path: Path, attachment: _Attachment, request: PodNetworkRequest
    ) -> None:
        try:
            await self._store(path, attachment, request)
        except OSError as exc:
            raise CniError(
                f"CNI ADD for sandbox {request.container_id} (network "
                f"{attachment.network_name}): cannot write the result cache {path}: "
                f"{exc.strerror or exc}",
                network=attachment.network_name,
                command="ADD",
            ) from None

    def _candidate_paths(self, container_id: str, ifname: str) -> list[Path]:
        suffix = f"-{container_id}-{ifname}{CACHE_SUFFIX}"
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        return sorted(
            self.cache_dir / n for n in names if n.endswith(suffix) and not n.startswith(".")
        )

    def _read_raw(self, path: Path, container_id: str, ifname: str) -> dict[str, Any] | None:
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("unreadable CNI cache entry", extra={"path": str(path), "error": str(exc)})
            return None
        if (
            not isinstance(raw, dict)
            or raw.get("kind") != CACHE_KIND
            or raw.get("containerId") != container_id
            or raw.get("ifName") != ifname
        ):
            return None
        return raw

    def _read_entry(self, path: Path) -> _Attachment | None:
        try:
            return _Attachment.from_cache(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            log.warning(
                "unusable CNI cache entry, ignored", extra={"path": str(path), "error": str(exc)}
            )
            return None

    def _entries_for(self, container_id: str, ifname: str) -> list[tuple[Path | None, _Attachment]]:
        found: list[tuple[Path | None, _Attachment]] = []
        for path in self._candidate_paths(container_id, ifname):
            if self._read_raw(path, container_id, ifname) is None:
                continue
            entry = self._read_entry(path)
            if entry is not None:
                found.append((path, entry))
        return found


def _replace_result(attachment: _Attachment, result: dict[str, Any] | None) -> _Attachment:
    return _Attachment(
        network_name=attachment.network_name,
        cni_version=attachment.cni_version,
        plugins=attachment.plugins,
        capabilities=attachment.capabilities,
        cni_args=attachment.cni_args,
        netns=attachment.netns,
        result=result,
    )


def _pod_result(network: str, result: dict[str, Any] | None) -> PodNetworkResult:
    """The pod's addresses and interfaces from the chain's final result."""
    if result is None:
        raise CniError(f"CNI network {network} produced no result on ADD")
    try:
        return parse_result(result)
    except ValueError as exc:
        raise CniError(
            f"CNI network {network} returned a malformed result on ADD: {exc}",
            network=network,
            command="ADD",
        ) from None


def _del_netns(request: PodNetworkRequest, attachment: _Attachment) -> str:
    """CNI_NETNS for a DEL: the request's path (or the cached one) while it still is a
    network namespace; "" once it is gone, which plugins take as "nothing to undo
    inside the namespace"."""
    for candidate in (request.netns, attachment.netns):
        if candidate:
            return candidate if _is_live_netns(candidate) else ""
    return ""


def _combine(errors: list[CniError]) -> CniError:
    if len(errors) == 1:
        return errors[0]
    kind = CniTimeout if all(isinstance(e, CniTimeout) for e in errors) else CniError
    first = errors[0]
    return kind(
        "; ".join(str(e) for e in errors),
        plugin=first.plugin,
        network=first.network,
        command=first.command,
        code=first.code,
    )


def _plugin_output(
    done: processes.Finished, kind: str, network: str, command: str, fields: dict[str, Any]
) -> bytes:
    """The stdout of a plugin that finished, logged; CniError with the plugin's own
    words when it failed."""
    stdout, stderr, returncode = done.stdout, done.stderr, done.returncode
    if stderr.strip():
        log.debug(
            "CNI plugin stderr",
            extra={**fields, "stderr": stderr.decode(errors="replace")[-STDERR_TAIL:]},
        )
    if returncode != 0:
        message, code = plugin_error_message(stdout, stderr, returncode)
        log.warning(
            "CNI plugin failed", extra={**fields, "exit_code": returncode, "error": message}
        )
        raise CniError(
            f"CNI plugin {kind} (network {network}) failed on {command}: {message}",
            plugin=kind,
            network=network,
            command=command,
            code=code,
        )
    log.info("CNI plugin ran", extra=fields)
    return stdout


def _plugin_type(path: str, config: Mapping[str, Any]) -> str:
    return str(config.get("type", os.path.basename(path)))


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
