"""Interface counters read from inside a real network namespace."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from network import netns_thread
from network.netstats import (
    NetStatsError,
    parse_net_dev,
    read_each_netns_counters,
    read_netns_counters,
)
from tests.integration import netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)


def test_counters_of_the_namespace_grow_with_its_traffic() -> None:
    with netns.netns("skiff-ns-") as ns:
        assert ns.run("ip", "link", "set", "lo", "up").returncode == 0
        before = {c.name: c for c in asyncio.run(read_netns_counters(ns.path))}
        assert set(before) == {"lo"}, "a fresh namespace has only loopback"
        payload = "x" * 5000
        with netns.tcp_server(ns, 18080, payload):
            assert netns.tcp_fetch("127.0.0.1", 18080, ns) == payload
        after = {c.name: c for c in asyncio.run(read_netns_counters(ns.path))}
        assert after["lo"].rx_bytes >= before["lo"].rx_bytes + len(payload)
        assert after["lo"].tx_packets > before["lo"].tx_packets
        # The host's own loopback is not what was read.
        with open("/proc/net/dev") as f:
            host = {c.name: c for c in parse_net_dev(f.read())}
        assert host["lo"].rx_bytes != after["lo"].rx_bytes


def test_a_gone_namespace_is_named_in_the_error() -> None:
    with pytest.raises(NetStatsError, match="skiff-ns-no-such"):
        asyncio.run(read_netns_counters("/run/netns/skiff-ns-no-such"))


def test_many_namespaces_in_one_go_each_answers_for_itself() -> None:
    with netns.netns("skiff-ns-") as up, netns.netns("skiff-ns-") as down:
        assert up.run("ip", "link", "set", "lo", "up").returncode == 0
        made = up.run("ip", "link", "add", "skv0", "type", "veth", "peer", "name", "skv1")
        assert made.returncode == 0, made.stderr
        gone = "/run/netns/skiff-ns-no-such"
        first, missing, second = asyncio.run(read_each_netns_counters([up.path, gone, down.path]))
        assert isinstance(first, list) and {c.name for c in first} == {"lo", "skv0", "skv1"}
        assert isinstance(missing, NetStatsError) and gone in str(missing)
        assert isinstance(second, list) and [c.name for c in second] == ["lo"]
        assert _threads_at_home()  # back home after each namespace


def _threads_at_home() -> bool:
    host = os.stat("/proc/self/ns/net")
    for task in os.listdir("/proc/self/task"):
        try:
            st = os.stat(f"/proc/self/task/{task}/ns/net")
        except FileNotFoundError:
            continue  # the thread just ended
        if (st.st_dev, st.st_ino) != (host.st_dev, host.st_ino):
            return False
    return True


def test_work_that_fails_still_brings_the_thread_back() -> None:
    def broken() -> int:
        raise ZeroDivisionError("a bug in the work")

    with netns.netns("skiff-ns-") as ns:
        with pytest.raises(ZeroDivisionError):
            asyncio.run(netns_thread.run_in_netns(ns.path, broken))
        assert _threads_at_home()
        with pytest.raises(ZeroDivisionError):
            asyncio.run(netns_thread.run_in_each_netns([ns.path], broken))
        assert _threads_at_home()
        # The pool is still good.
        assert asyncio.run(netns_thread.run_in_netns(ns.path, lambda: 7)) == 7
