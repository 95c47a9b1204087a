"""Soak: a kubelet-shaped load (tests/integration/soak.py) on a real skiffd, whose
memory, file descriptors, threads and asyncio tasks must stay flat after a warm-up, and
which must leave nothing behind.

`make test` runs it briefly (SOAK_SECONDS, SOAK_PODS below); SKIFF_SOAK_SECONDS and
SKIFF_SOAK_PODS make it as long and as large as wanted (a node's 110 pods for 30
minutes: README). The table of each window goes to the end of the pytest run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.nodes import MakeNode, _assert_no_container_leaks, assert_only_the_node_pod
from tests.integration.soak import Limits, Margin, SoakLoad, growth, open_files, span, table
from tests.integration.test_metrics import METRICS_ON, metrics_url
from tests.summaries import summary_path

SOAK_SECONDS = float(os.environ.get("SKIFF_SOAK_SECONDS", "60"))
SOAK_PODS = int(os.environ.get("SKIFF_SOAK_PODS", "14"))
SAMPLE_SECONDS = 3.0

# What the last third of the run may add to the middle third (tests/integration/soak.py
# `growth`). Memory: the allocator keeps a little slack. Descriptors, threads and tasks
# are sampled between churn cycles, after a stats call: their peaks move with the probes,
# relists and stats in flight, their floors (an exec in flight at most) only with what
# skiffd keeps; a worker thread started late in the run (thread pools grow on demand, up
# to their size) lifts the thread floor by one.
# In `make test` that catches about one descriptor or task kept per replaced pod, or
# 0.3 MiB a second (checked by adding such leaks to skiffd); longer runs catch less.
LIMITS = {
    "RSS": Limits(peak=Margin(3 * 1024, 0.03), floor=Margin(3 * 1024, 0.03)),
    "fds": Limits(peak=Margin(12, 0.02), floor=Margin(6)),
    "threads": Limits(peak=Margin(3), floor=Margin(2)),
    "tasks": Limits(peak=Margin(8), floor=Margin(4)),
}
# Once every pod of the load is gone: back to what skiffd held before it.
IDLE_MARGINS = {"fds": 2, "tasks": 1}


def test_kubelet_shaped_load_does_not_grow(
    make_node: MakeNode, record_property: Callable[[str, object], None]
) -> None:
    node = make_node(config={**METRICS_ON, "log_level": "info"})
    load = SoakLoad(node, SOAK_PODS, metrics_url(node.daemon))
    load.stats()  # the cgroup files of the node's pod, kept open from now on
    idle = load.sample()
    report = ""
    try:
        load.fill()
        load.start()
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline and not load.stop.is_set():
            load.samples.append(load.sample())
            load.stop.wait(SAMPLE_SECONDS)
    finally:
        load.finish()
        report = _report(load)
        summary_path("soak").write_text(report + "\n")
        record_property("soak", report)
    assert load.errors == [], report + "\n" + "\n".join(load.errors)
    problems = [
        problem
        for name, values in (
            ("RSS", [s.rss_kib for s in load.samples]),
            ("fds", [s.fds for s in load.between_cycles]),
            ("threads", [s.threads for s in load.between_cycles]),
            ("tasks", [s.tasks for s in load.between_cycles]),
        )
        for problem in growth(name, values, LIMITS[name], " KiB" if name == "RSS" else "")
    ]
    assert problems == [], report + "\n" + "\n".join(problems)

    load.remove_all()
    _assert_no_container_leaks(node)
    assert_only_the_node_pod(node)
    for pod_id in load.removed_ids:
        left = [
            h
            for h in Path("/sys/fs/cgroup").iterdir()
            if (h / "skiff" / f"pod-{pod_id[:12]}").exists()
        ]
        assert left == [], f"pod {pod_id} cgroups left in {left}"
    after = load.sample()  # no stats call since: skiffd let go of their cgroups by itself
    assert after.fds <= idle.fds + IDLE_MARGINS["fds"], f"{idle}\n{after}\n{open_files(load.pid)}"
    assert after.tasks <= idle.tasks + IDLE_MARGINS["tasks"], (idle, after)


def _report(load: SoakLoad) -> str:
    window = max(10.0, round(SOAK_SECONDS / 10, -1))
    counts = ", ".join(f"{n} {what}" for what, n in load.counts.items())
    calm = load.between_cycles
    third = max(1, len(calm) // 3)
    thirds = [calm[:third], calm[third : 2 * third], calm[2 * third :]]
    steady = "; ".join(
        f"{label} fds {span([s.fds for s in part], 'd')}"
        f" threads {span([s.threads for s in part], 'd')}"
        f" tasks {span([s.tasks for s in part], 'd')}"
        for label, part in zip(("warm-up", "middle", "last"), thirds, strict=True)
    )
    return (
        f"soak: {SOAK_PODS} pods for {load.now():.0f}s ({counts}); skiffd per {window:g}s window:\n"
        + table(load.samples + calm, load.list_latencies, window)
        + f"\nbetween churn cycles: {steady}"
    )
