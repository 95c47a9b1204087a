"""When skiff answers a pull's DEADLINE_EXCEEDED itself (cri/images.py)."""

from __future__ import annotations

import pytest

from cri.images import deadline_margin


@pytest.mark.parametrize("deadline", [1.0, 2.0, 10.0])
def test_short_deadlines_keep_most_of_their_time(deadline: float) -> None:
    assert 0.2 <= deadline_margin(deadline) <= 0.35


def test_long_deadlines_leave_more_than_grpcs_rounding() -> None:
    # At 120 s gRPC may round the server's deadline up by a second.
    assert deadline_margin(120.0) > 1.0
    assert deadline_margin(3600.0) == 1.5
