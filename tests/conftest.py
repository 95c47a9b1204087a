"""Scheduling of the suites under pytest-xdist (``--dist loadgroup``), and what the
end-to-end and soak suites report at the end of a run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.summaries import SUITES, summary_path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The Kubernetes suite runs in order on one worker, which brings its node up before
    # the first test and stops it after the last (nothing else runs beside the node in
    # that process); critest gets a skiffd of its own and runs as one test.
    for item in items:
        path = Path(str(item.fspath))
        if "e2e" not in path.parts:
            continue
        item.add_marker(pytest.mark.e2e)
        if path.parent.name == "k8s":
            item.add_marker(pytest.mark.xdist_group("k8s-node"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller prints it, once
    for suite in SUITES:
        summary = summary_path(suite)
        if summary.exists():
            terminalreporter.write_sep("=", suite)
            terminalreporter.write_line(summary.read_text().strip())
            summary.unlink()
