"""Parsing /proc/net/dev and choosing the pod's default interface."""

from __future__ import annotations

from network.netstats import default_interface, parse_net_dev

# A pod's namespace as the kernel shows it (6.x).
NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast"
    "|bytes    packets errs drop fifo colls carrier compressed\n"
    "    lo:    1400      14    0    0    0     0          0         0"
    "     1400      14    0    0    0     0       0          0\n"
    "  eth0: 5267891    4021    3    7    0     0          0        12"
    "   871234    2950    1    2    0     0       0          0\n"
)


def test_every_interface_with_receive_and_transmit_counters() -> None:
    lo, eth0 = parse_net_dev(NET_DEV)
    assert lo.name == "lo" and lo.rx_bytes == 1400 and lo.tx_packets == 14
    assert (eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped) == (
        5267891,
        4021,
        3,
        7,
    )
    assert (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped) == (
        871234,
        2950,
        1,
        2,
    )


def test_default_interface_is_eth0_else_the_first_that_is_not_loopback() -> None:
    interfaces = parse_net_dev(NET_DEV)
    found = default_interface(interfaces)
    assert found is not None and found.name == "eth0"
    renamed = parse_net_dev(NET_DEV.replace("eth0:", "net1:"))
    found = default_interface(renamed)
    assert found is not None and found.name == "net1"
    assert (
        default_interface(
            parse_net_dev(
                NET_DEV.splitlines(keepends=True)[0] * 2 + NET_DEV.splitlines(keepends=True)[2]
            )
        )
        is None
    )


def test_malformed_lines_are_skipped() -> None:
    assert parse_net_dev("h1\nh2\nbroken line\n  x: 1 2 3\n") == []
