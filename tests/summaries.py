"""Lines a suite leaves for the end of a `make test` run: a worker writes its summary
to a file the controlling pytest process prints in its terminal summary
(tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

SUITES = ("critest", "soak")


def summary_path(suite: str) -> Path:
    # The pytest process that prints the summary: this one, or xdist's controller.
    controller = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    return Path("/tmp") / f"skiff-{suite}-summary-{controller}"
