"""The files a pod's containers see as /etc/resolv.conf, /etc/hosts and /etc/hostname.

They are written once per sandbox and bind-mounted into each container later. Writes
are atomic (temp file + rename) so a container never sees half a file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from base import failpoints
from base.errors import InvalidArgument
from base.files import write_atomic

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")

# resolv.conf(5): at most 6 search domains were honoured by older glibc; the kubelet
# already trims, so we only refuse what would make a broken file.
MAX_LINE = 4096


class PodFileError(InvalidArgument, ValueError):
    pass


@dataclass(frozen=True)
class DnsSettings:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.servers or self.searches or self.options)


def _clean(values: Sequence[str], what: str) -> list[str]:
    out = []
    for value in values:
        if not value or any(c.isspace() or not c.isprintable() for c in value):
            raise PodFileError(
                f"dns_config.{what}: {value[:80]!r} must be one word without control characters"
            )
        out.append(value)
    return out


def _servers(values: Sequence[str]) -> list[str]:
    for value in _clean(values, "servers"):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise PodFileError(f"dns_config.servers: {value[:80]!r} is not an IP address") from None
    return list(values)


def resolv_conf(dns: DnsSettings, host_resolv_conf: Path = HOST_RESOLV_CONF) -> str:
    """The pod's resolv.conf: from DNSConfig, or the host's when none is given."""
    if dns.empty:
        try:
            return host_resolv_conf.read_text()
        except FileNotFoundError:
            return ""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(_clean(dns.searches, "searches")))
    lines.extend(f"nameserver {s}" for s in _servers(dns.servers))
    if dns.options:
        lines.append("options " + " ".join(_clean(dns.options, "options")))
    text = "\n".join(lines) + "\n"
    if any(len(line) > MAX_LINE for line in lines):
        raise PodFileError("dns_config: a resolv.conf line would exceed 4096 bytes")
    return text


def hosts_file(hostname: str, ips: Sequence[str], host_network: bool) -> str:
    """The pod's /etc/hosts: the host's for host-network pods, else localhost lines
    plus the pod's own addresses under its hostname."""
    if host_network:
        try:
            return HOST_HOSTS.read_text()
        except FileNotFoundError:
            pass
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    lines.extend(f"{ip}\t{hostname}" for ip in ips)
    return "\n".join(lines) + "\n"


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write one of the pod's files (under /run: no fsync, they die with the machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), mode=mode, durable=False)
    failpoints.step("file-write")
