"""Per-interface counters of a pod's network namespace.

``/proc/thread-self/net/dev`` shows the interfaces of the reading thread's network
namespace, so a namespace worker thread (`network.netns_thread`) enters the pod's
pinned namespace, reads the file (one small read, no subprocess, no netlink socket)
and goes back; the parsing runs on the caller's side.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.errors import Internal
from network.netns_thread import NetnsThreadError, run_in_each_netns

_NET_DEV = "/proc/thread-self/net/dev"
LOOPBACK = "lo"
# The interface the kubelet reports as the pod's (CNI's default name).
DEFAULT_INTERFACE = "eth0"


class NetStatsError(Internal):
    pass


@dataclass(frozen=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> list[InterfaceCounters]:
    """The interfaces of a ``/proc/net/dev`` text, in the kernel's order.

    After two header lines, each line is ``name: `` and 16 counters: receive bytes,
    packets, errs, drop, fifo, frame, compressed, multicast, then transmit bytes,
    packets, errs, drop, fifo, colls, carrier, compressed.
    """
    out: list[InterfaceCounters] = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16:
            continue
        numbers = [int(f) for f in fields[:16]]
        out.append(
            InterfaceCounters(
                name=name.strip(),
                rx_bytes=numbers[0],
                rx_packets=numbers[1],
                rx_errors=numbers[2],
                rx_dropped=numbers[3],
                tx_bytes=numbers[8],
                tx_packets=numbers[9],
                tx_errors=numbers[10],
                tx_dropped=numbers[11],
            )
        )
    return out


def default_interface(interfaces: list[InterfaceCounters]) -> InterfaceCounters | None:
    """eth0 when the pod has it, else its first interface that is not loopback."""
    for counters in interfaces:
        if counters.name == DEFAULT_INTERFACE:
            return counters
    return next((c for c in interfaces if c.name != LOOPBACK), None)


def _read_net_dev() -> str:
    with open(_NET_DEV, "rb") as f:
        return f.read().decode()


async def read_each_netns_counters(
    netns_paths: list[str],
) -> list[list[InterfaceCounters] | NetStatsError]:
    """:func:`read_netns_counters` for many namespaces at once (one worker-thread hop);
    a namespace that cannot be read gives a NetStatsError naming it, in its place."""
    try:
        texts = await run_in_each_netns(netns_paths, _read_net_dev)
    except NetnsThreadError as exc:
        failed = NetStatsError(f"reading interface counters: {exc}")
        return [failed for _ in netns_paths]
    out: list[list[InterfaceCounters] | NetStatsError] = []
    for path, text in zip(netns_paths, texts, strict=True):
        if isinstance(text, FileNotFoundError):
            out.append(NetStatsError(f"network namespace {path} is gone"))
        elif isinstance(text, OSError):
            out.append(NetStatsError(f"reading interface counters in {path}: {text}"))
        else:
            out.append(parse_net_dev(text))
    return out


async def read_netns_counters(netns_path: str) -> list[InterfaceCounters]:
    """Every interface's counters (loopback included) in the network namespace at
    ``netns_path``. Raises NetStatsError naming the namespace when it cannot be read."""
    (result,) = await read_each_netns_counters([netns_path])
    if isinstance(result, NetStatsError):
        raise result
    return result
