"""Pod namespace pinning, the pure parts: which sysctls a pod may set, how their names
are spelled, the helper's argument and error-line formats. The real namespaces are
exercised in tests/integration/test_namespaces.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from cri.errors import status_of
from network import pin
from network.namespaces import (
    InvalidSysctl,
    NamespaceError,
    PinnedNamespaces,
    PinRequest,
    pin_namespaces,
    sysctl_name,
    sysctl_parts,
    validate_sysctls,
)

ALLOWED = [
    "net.ipv4.ip_forward",
    "net.ipv4.ip_unprivileged_port_start",
    "net.core.somaxconn",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv6.conf.default.disable_ipv6",
    "kernel.shm_rmid_forced",
    "kernel.shmmax",
    "kernel.shmall",
    "kernel.shmmni",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "fs.mqueue.msg_max",
    "fs.mqueue.queues_max",
    # slash form of the same
    "net/ipv4/ip_forward",
    "kernel/shm_rmid_forced",
    "fs/mqueue/msgsize_max",
    # interface names with dots, in both spellings
    "net/ipv4/conf/eth0.100/rp_filter",
    "net.ipv4.conf.eth0/100.rp_filter",
]


@pytest.mark.parametrize("name", ALLOWED)
def test_namespaced_sysctls_are_allowed(name: str) -> None:
    validate_sysctls({name: "1"}, host_network=False, host_ipc=False)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("vm.swappiness", "not namespaced"),
        ("kernel.panic", "not namespaced"),
        ("kernel.pid_max", "not namespaced"),
        ("kernel.shm_next_id", "not namespaced"),
        ("fs.file-max", "not namespaced"),
        ("fs.mqueue", "not namespaced"),
        ("net", "not namespaced"),
        ("kernel", "not namespaced"),
        ("vm/overcommit_memory", "not namespaced"),
        ("kernel.hostname", "hostname in its spec"),
        ("kernel/domainname", "hostname in its spec"),
    ],
)
def test_other_sysctls_are_refused_naming_them(name: str, why: str) -> None:
    with pytest.raises(InvalidSysctl) as caught:
        validate_sysctls({name: "1"}, host_network=False, host_ipc=False)
    assert name in str(caught.value)
    assert why in str(caught.value)
    assert status_of(caught.value) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "name",
    [
        "",
        "net..ipv4.ip_forward",
        "net.ipv4.",
        ".net.ipv4.ip_forward",
        "net/ipv4//ip_forward",
        # ways out of /proc/sys, in both spellings
        "net/../kernel/panic",
        "net/./ipv4/ip_forward",
        "net.//.kernel",
        "net./.ipv4",
        "net.ipv4.ip forward",
        "net.ipv4.ip_forward\n",
        "net.ipv4.ip\0forward",
    ],
)
def test_malformed_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidSysctl, match=r"not a well-formed|is empty"):
        validate_sysctls({name: "1"}, host_network=False, host_ipc=False)


@pytest.mark.parametrize(
    ("name", "host_network", "host_ipc", "refused_because"),
    [
        ("net.ipv4.ip_forward", True, False, "host's network namespace"),
        ("net/ipv4/ip_forward", True, True, "host's network namespace"),
        ("kernel.shmmax", False, True, "host's IPC namespace"),
        ("kernel/sem", True, True, "host's IPC namespace"),
        ("fs.mqueue.msg_max", False, True, "host's IPC namespace"),
        ("net.core.somaxconn", False, True, None),
        ("kernel.msgmax", True, False, None),
        ("fs.mqueue.msg_max", True, False, None),
    ],
)
def test_host_namespaces_forbid_their_sysctls(
    name: str, host_network: bool, host_ipc: bool, refused_because: str | None
) -> None:
    if refused_because is None:
        validate_sysctls({name: "1"}, host_network, host_ipc)
        return
    with pytest.raises(InvalidSysctl) as caught:
        validate_sysctls({name: "1"}, host_network, host_ipc)
    assert name in str(caught.value)
    assert refused_because in str(caught.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("", "empty value"), ("1\n", "line break"), ("1\r2", "line break"), ("1\0", "NUL")],
)
def test_values_must_be_one_nonempty_line(value: str, problem: str) -> None:
    with pytest.raises(InvalidSysctl, match=problem):
        validate_sysctls({"net.ipv4.ip_forward": value}, host_network=False, host_ipc=False)


def test_values_with_spaces_are_fine() -> None:
    validate_sysctls({"kernel.sem": "250 32000 32 128"}, host_network=False, host_ipc=False)


def test_empty_and_many_at_once() -> None:
    validate_sysctls({}, host_network=True, host_ipc=True)
    validate_sysctls(
        {"net.ipv4.ip_forward": "1", "kernel.shmmni": "4096", "fs.mqueue.msg_max": "20"},
        host_network=False,
        host_ipc=False,
    )


def test_the_same_sysctl_in_both_spellings_is_refused() -> None:
    with pytest.raises(InvalidSysctl, match="given twice"):
        validate_sysctls(
            {"net.ipv4.ip_forward": "1", "net/ipv4/ip_forward": "0"},
            host_network=False,
            host_ipc=False,
        )


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("net.ipv4.ip_forward", ("net", "ipv4", "ip_forward")),
        ("net/ipv4/ip_forward", ("net", "ipv4", "ip_forward")),
        ("net/ipv4/conf/eth0.100/rp_filter", ("net", "ipv4", "conf", "eth0.100", "rp_filter")),
        ("net.ipv4.conf.eth0/100.rp_filter", ("net", "ipv4", "conf", "eth0.100", "rp_filter")),
        ("kernel.shm_rmid_forced", ("kernel", "shm_rmid_forced")),
        ("kernel/shm_rmid_forced", ("kernel", "shm_rmid_forced")),
        # the first separator decides the spelling, like sysctl(8) and the kubelet
        ("net/ipv4.ip_forward", ("net", "ipv4.ip_forward")),
        ("net.ipv4/ip_forward", ("net", "ipv4.ip_forward")),
    ],
)
def test_both_spellings_give_the_same_path(name: str, parts: tuple[str, ...]) -> None:
    assert sysctl_parts(name) == parts
    assert sysctl_parts(sysctl_name(parts)) == parts


def test_canonical_name_is_dotted() -> None:
    assert sysctl_name(sysctl_parts("net/ipv4/conf/eth0.100/rp_filter")) == (
        "net.ipv4.conf.eth0/100.rp_filter"
    )


# --- pin_namespaces checks that need no namespaces ---------------------------------------


def test_nothing_requested_pins_nothing(tmp_path: Path) -> None:
    request = PinRequest("abc", tmp_path / "ns", net=False, ipc=False, uts=False, hostname="h")
    assert asyncio.run(pin_namespaces(request)) == PinnedNamespaces(None, None, None)
    assert not (tmp_path / "ns").exists()


def test_sysctls_for_host_namespaces_are_refused_before_anything(tmp_path: Path) -> None:
    request = PinRequest("abc", tmp_path / "ns", net=False, sysctls={"net.ipv4.ip_forward": "1"})
    with pytest.raises(InvalidSysctl, match="host's network namespace"):
        asyncio.run(pin_namespaces(request))
    assert not (tmp_path / "ns").exists()


@pytest.mark.parametrize("sandbox_id", ["", ".", "..", "a/b", "a\0b"])
def test_sandbox_id_must_be_a_file_name(tmp_path: Path, sandbox_id: str) -> None:
    with pytest.raises(NamespaceError, match="file name"):
        asyncio.run(pin_namespaces(PinRequest(sandbox_id, tmp_path / "ns")))
    assert not (tmp_path / "ns").exists()


# --- the helper's own formats ------------------------------------------------------------


def test_helper_arguments() -> None:
    spec = pin.parse_args(
        [
            "--net",
            "/r/net/x",
            "--uts",
            "/r/uts/x",
            "--hostname",
            "pod",
            "--sysctl",
            "net.ipv4.conf.eth0/1.rp_filter",
            "net/ipv4/conf/eth0.1/rp_filter",
            "--2",
        ]
    )
    assert spec.targets == {"net": "/r/net/x", "uts": "/r/uts/x"}
    assert spec.hostname == "pod"
    assert spec.sysctls == [
        ("net.ipv4.conf.eth0/1.rp_filter", "net/ipv4/conf/eth0.1/rp_filter", "--2")
    ]


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        ([], "namespace"),
        (["--net"], "namespace"),
        (["--pid", "/x"], "namespace"),
        (["--net", "/x", "--sysctl", "a", "b"], "namespace"),
        # the helper's own guard: never a sysctl of a namespace it does not create
        (["--uts", "/x", "--sysctl", "n", "net/ipv4/ip_forward", "1"], "sysctl"),
        (["--net", "/x", "--sysctl", "k", "kernel/shmmax", "1"], "sysctl"),
        (["--net", "/x", "--sysctl", "v", "vm/swappiness", "1"], "sysctl"),
        (["--net", "/x", "--sysctl", "e", "net/../kernel/panic", "1"], "sysctl"),
    ],
)
def test_helper_refuses_bad_arguments(argv: list[str], kind: str) -> None:
    with pytest.raises(pin.PinFailure) as caught:
        pin.parse_args(argv)
    assert caught.value.kind == kind


@pytest.mark.parametrize(
    "message",
    ["plain", 'with "quotes" and \\ backslash', "tab\tnew\nline\x7f", "ünïcödé"],
)
def test_helper_error_line_is_one_line_of_json(message: str) -> None:
    line = pin.error_line(pin.PinFailure("sysctl", message, 22))
    assert "\n" not in line
    assert json.loads(line) == {"kind": "sysctl", "message": message, "errno": 22}
    assert json.loads(pin.error_line(pin.PinFailure("namespace", "x")))["errno"] is None
