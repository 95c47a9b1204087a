"""Each fuzz target runs for a bounded time (SKIFF_FUZZ_SECONDS each, default 6) from
its seed corpus; a crash fails the test with the fuzzer's report and the input."""

from __future__ import annotations

import pytest

from tests.fuzz.__main__ import default_seconds, fuzz
from tests.fuzz.seeds import SEEDS


@pytest.mark.parametrize("target", list(SEEDS))
def test_fuzz_target_finds_no_crash(target: str) -> None:
    passed, output = fuzz(target, default_seconds())
    assert passed, output[-6000:]
