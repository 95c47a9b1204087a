"""Each fuzz target runs for a bounded time (SKIFF_FUZZ_SECONDS each, default 6) from
its seed corpus; a crash fails the test with the fuzzer's report and the input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fuzz.__main__ import default_seconds
from tests.fuzz.seeds import SEEDS


@pytest.mark.parametrize("target", list(SEEDS))
def test_fuzz_target_finds_no_crash(target: str) -> None:
    seconds = default_seconds()
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", target, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=seconds + 180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:]
