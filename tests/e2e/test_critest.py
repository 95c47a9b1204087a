"""critest, the CRI's conformance suite, against a skiffd of its own.

critest's images come from a registry of the run's own, reached through skiff's
registries.conf under the names critest uses. Every spec must pass but those listed in
critest-expected.yaml, which must be skipped; the summary is printed at the end of the
pytest run.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.runtime.v1 import api_pb2 as pb
from tests.e2e.critest_images import push_critest_images, registries_conf
from tests.e2e.toolchain import tool
from tests.integration.registry import TestRegistry
from tests.integration.skiffd import (
    Skiffd,
    mounts_below,
    processes_mentioning,
    release_leftovers,
    short_tempdir,
    unmount_below,
)
from tests.summaries import summary_path

EXPECTED = Path(__file__).with_name("critest-expected.yaml")
CNI_BIN = "/usr/lib/cni"
CRITEST_TIMEOUT = 20 * 60


@dataclass(frozen=True)
class Expected:
    pattern: re.Pattern[str]
    how: str
    count: int
    reason: str


def expected_outcomes() -> list[Expected]:
    entries = yaml.safe_load(EXPECTED.read_text())
    out = []
    for entry in entries:
        assert entry["how"] in ("skipped", "not-run"), entry
        assert entry.get("reason"), f"{entry['pattern']}: every expected skip needs a reason"
        out.append(
            Expected(re.compile(entry["pattern"]), entry["how"], entry["count"], entry["reason"])
        )
    return out


@dataclass(frozen=True)
class SpecResult:
    name: str
    status: str  # passed | skipped | failed | ...
    message: str


def parse_junit(path: Path) -> list[SpecResult]:
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if not name.startswith("[It]"):
            if case.get("status") not in ("passed", "skipped"):
                results.append(SpecResult(name, "failed", _message(case)))
            continue
        results.append(SpecResult(name, case.get("status", ""), _message(case)))
    return results


def _message(case: ET.Element) -> str:
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            return (child.get("message") or "") + "\n" + (child.text or "")[:2000]
    return ""


def judge(results: list[SpecResult], expected: list[Expected]) -> list[str]:
    """What does not match the expectations: a failing spec, a listed one that ran, a
    pattern that matches a different number of specs than it says."""
    problems = []
    matched = {e.pattern.pattern: 0 for e in expected}
    for result in results:
        entry = next((e for e in expected if e.pattern.search(result.name)), None)
        if entry is None:
            if result.status != "passed":
                problems.append(f"{result.status}: {result.name}\n{result.message.strip()}")
            continue
        matched[entry.pattern.pattern] += 1
        if result.status != "skipped":
            problems.append(
                f"{result.status} but expected skipped ({entry.reason.strip()}): {result.name}"
            )
    for entry in expected:
        if matched[entry.pattern.pattern] != entry.count:
            problems.append(
                f"{entry.pattern.pattern!r} matched {matched[entry.pattern.pattern]} specs,"
                f" the list says {entry.count}"
            )
    return problems


def _conflist(bridge: str, subnet: str, ipam_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": f"critest-{bridge}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _shm_segments() -> set[str]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {line.split()[1] for line in lines if line.split()}


@pytest.fixture
def critest_skiffd() -> Iterator[Skiffd]:
    tag = secrets.token_hex(3)
    bridge = f"skt{tag}"
    base = short_tempdir("critest")
    ipam = base / "ipam"
    segments = _shm_segments()
    with TestRegistry("insecure") as registry:
        push_critest_images(registry)
        daemon = Skiffd(base, {"network": {"cni_plugin_dirs": [CNI_BIN]}})
        (base / "registries.conf").write_text(registries_conf(registry.host))
        subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}.0/24"
        (daemon.cni_dir / "10-critest.conflist").write_text(
            json.dumps(_conflist(bridge, subnet, ipam))
        )
        try:
            daemon.start()
            yield daemon
            _check_nothing_left(daemon)
        finally:
            daemon.kill()
            release_leftovers(daemon)
            unmount_below(base)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            _remove_segments_made_since(segments)
            shutil.rmtree(base, ignore_errors=True)


def _check_nothing_left(daemon: Skiffd) -> None:
    runtime = daemon.runtime()
    pods = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    containers = runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    assert (list(pods), list(containers)) == ([], []), "critest left pods or containers"
    assert daemon.stop() == 0, daemon.logs()
    left = [m for m in mounts_below(daemon.base)]
    left += [f"process {p}" for p in processes_mentioning(str(daemon.base))]
    containers_dir = daemon.root / "containers"
    left += [str(p) for p in containers_dir.iterdir()] if containers_dir.is_dir() else []
    assert left == [], f"left after critest: {left}"


def _version() -> str:
    done = subprocess.run(
        [str(tool("critest")), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.search(r"critest version: (\S+)", done.stdout)
    return f"v{found.group(1)}" if found else "(version unknown)"


def _remove_segments_made_since(before: set[str]) -> None:
    """critest's HostIpc spec makes a SysV shared memory segment on the host with ipcmk
    and leaves it; ours to remove."""
    for shmid in _shm_segments() - before:
        subprocess.run(["ipcrm", "-m", shmid], capture_output=True, check=False)


def test_critest(critest_skiffd: Skiffd) -> None:
    expected = expected_outcomes()
    report = critest_skiffd.base / "junit.xml"
    endpoint = f"unix://{critest_skiffd.socket}"
    skips = [e.pattern.pattern for e in expected if e.how == "not-run"]
    done = subprocess.run(
        [
            str(tool("critest")),
            f"--runtime-endpoint={endpoint}",
            f"--image-endpoint={endpoint}",
            f"--ginkgo.junit-report={report}",
            "--ginkgo.no-color",
            "--ginkgo.timeout=15m",
            *(f"--ginkgo.skip={pattern}" for pattern in skips),
        ],
        cwd=critest_skiffd.base,
        capture_output=True,
        text=True,
        timeout=CRITEST_TIMEOUT,
        check=False,
    )
    assert report.exists(), (
        f"critest wrote no report:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    results = parse_junit(report)
    counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    problems = judge(results, expected)
    line = (
        f"critest {_version()}: {counts['passed']} passed,"
        f" {len(results) - counts['passed'] - counts['skipped']} failed,"
        f" {counts['skipped']} skipped"
        + (" (every skip listed in critest-expected.yaml)" if not problems else "")
    )
    summary_path("critest").write_text(line + "\n")
    assert problems == [], line + "\n\n" + "\n\n".join(problems)
