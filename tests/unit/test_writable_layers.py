"""Writable layers measured once when new, then by the background refresh only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cri import stats
from cri.container_record import Container
from cri.stats import WritableLayers, filesystem_name
from tests.unit.records import container_record


def _containers(tmp_path: Path, count: int) -> list[Container]:
    made = []
    for i in range(count):
        upper = tmp_path / f"c{i}" / "rootfs" / "upper"
        upper.mkdir(parents=True)
        (upper / "file").write_bytes(b"x" * 10000)
        made.append(container_record(id=f"{i:064x}", container_dir=str(tmp_path / f"c{i}")))
    return made


def test_new_layers_are_measured_once_then_only_by_the_refresh(tmp_path: Path) -> None:
    containers = _containers(tmp_path, 3)

    async def listed() -> list[Container]:
        return containers

    layers = WritableLayers(tmp_path, listed)

    async def body() -> None:
        await layers.measure_new(containers[:1])
        first = layers.get(containers[0].id)
        assert first is not None and first.used_bytes >= 10000 and first.inodes_used == 2
        assert layers.get(containers[1].id) is None
        # Measured already: a new file shows only after a refresh.
        (Path(containers[0].container_dir) / "rootfs" / "upper" / "more").write_bytes(b"y" * 20000)
        await layers.measure_new(containers[:1])
        again = layers.get(containers[0].id)
        assert again is not None and again.used_bytes == first.used_bytes
        took = await layers.refresh()
        assert took >= 0
        refreshed = layers.get(containers[0].id)
        assert refreshed is not None and refreshed.used_bytes >= first.used_bytes + 20000
        assert all(layers.get(c.id) is not None for c in containers)
        total = layers.total()
        assert total.mountpoint == str(tmp_path)
        assert total.used_bytes == sum(
            u.used_bytes for c in containers if (u := layers.get(c.id)) is not None
        )

    asyncio.run(body())


def test_a_call_measures_a_bounded_number_of_new_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    containers = _containers(tmp_path, 5)

    async def listed() -> list[Container]:
        return containers

    layers = WritableLayers(tmp_path, listed)
    monkeypatch.setattr(stats, "MEASURED_PER_CALL", 2)
    asyncio.run(layers.measure_new(containers))
    assert [layers.get(c.id) is not None for c in containers] == [True, True, False, False, False]


def test_the_filesystem_is_named_after_the_image_one_on_the_same_device(tmp_path: Path) -> None:
    images = tmp_path / "layers"
    images.mkdir()
    # containers/ need not exist yet: its nearest existing parent tells the device.
    assert filesystem_name(tmp_path / "containers", images) == str(images)
    assert filesystem_name(tmp_path / "containers", None) == str(tmp_path / "containers")
    # /proc is another filesystem than the test's temp dir.
    assert filesystem_name(Path("/proc/self"), images) == "/proc/self"
