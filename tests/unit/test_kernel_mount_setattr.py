"""Whether the kernel can apply recursive mount attributes, from its release string."""

from __future__ import annotations

import pytest

from runtime.mounts import kernel_has_mount_setattr


@pytest.mark.parametrize(
    ("release", "has"),
    [
        ("5.12.0", True),
        ("6.1.0-18-amd64", True),
        ("6.18.44-fc-v669", True),
        ("5.11.22", False),
        ("4.19.0-26-amd64", False),
        ("garbage", False),
        ("6", False),
    ],
)
def test_release_strings(release: str, has: bool) -> None:
    assert kernel_has_mount_setattr(release) is has
