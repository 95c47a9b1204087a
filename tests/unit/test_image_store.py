"""The on-disk image store: atomic appearance, derived layer references, crash
leftovers removed on open, tags moving between images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from base.files import temp_path
from image.pull import chain_ids
from image.store import ImageInUse, ImageRecord, ImageStore, LayerRecord


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _layer(store: ImageStore, chain_id: str, content: str = "x") -> None:
    """A layer as a pull adds it: held while the pull runs (see `_done`)."""
    store.hold([chain_id])
    work = store.new_work_dir()
    (work / "diff").mkdir()
    (work / "diff" / "file").write_text(content)
    store.commit_layer(work, LayerRecord(chain_id, chain_id, len(content), 2))


def _image(name: str, chains: list[str], tags: list[str]) -> ImageRecord:
    config = _digest(f"config-{name}")
    return ImageRecord(
        id=config,
        repo_tags=tags,
        repo_digests=[f"docker.io/library/{name}@{_digest('m-' + name)}"],
        size=10,
        chain_ids=chains,
        manifest_digest=_digest("m-" + name),
        config_digest=config,
        config={"config": {"User": "1000"}},
    )


def _done(store: ImageStore, *chain_ids: str) -> None:
    """The pulls that held these layers have ended."""
    store.release(list(chain_ids))


def test_a_layer_no_pull_holds_is_not_added(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    store.open()
    work = store.new_work_dir()
    (work / "diff").mkdir()
    store.commit_layer(work, LayerRecord(_digest("late"), _digest("late"), 1, 1))
    assert not store.has_layer(_digest("late"))
    assert not work.exists()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(tmp_path / "root")
    s.open()
    return s


def test_chain_ids_follow_the_oci_rule() -> None:
    a, b = _digest("a"), _digest("b")
    expected_second = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b]) == [a, expected_second]
    assert chain_ids([]) == []


def test_layers_shared_by_images_go_with_the_last_one(store: ImageStore) -> None:
    base, top1, top2 = _digest("base"), _digest("top1"), _digest("top2")
    for chain in (base, top1, top2):
        _layer(store, chain)
    one = store.save_image(_image("one", [base, top1], ["docker.io/library/one:1"]))
    two = store.save_image(_image("two", [base, top2], ["docker.io/library/two:1"]))
    _done(store, base, top1, top2)
    assert store.remove(one, None, set())
    assert not store.has_layer(top1)
    assert store.has_layer(base)  # still used by two
    assert store.remove(two, None, set())
    assert not store.has_layer(base)
    assert not any(store.layers.iterdir())
    assert not any(store.blobs.iterdir())


def test_an_image_in_use_is_refused(store: ImageStore) -> None:
    _layer(store, _digest("l"))
    image = store.save_image(_image("app", [_digest("l")], ["docker.io/library/app:1"]))
    _done(store, _digest("l"))
    with pytest.raises(ImageInUse, match="used by a container"):
        store.remove(image, None, {image.id})
    assert store.find(image.id, []) is not None


def test_untag_keeps_an_image_with_other_tags(store: ImageStore) -> None:
    _layer(store, _digest("l"))
    image = store.save_image(_image("app", [_digest("l")], ["r/app:1", "r/app:latest"]))
    _done(store, _digest("l"))
    assert not store.remove(image, "r/app:1", set())
    found = store.find("r/app:latest", ["r/app:latest"])
    assert found is not None
    assert found.repo_tags == ["r/app:latest"]


def test_a_tag_moves_to_the_newer_image(store: ImageStore) -> None:
    _layer(store, _digest("l"))
    old = store.save_image(_image("old", [_digest("l")], ["r/app:latest"]))
    new = store.save_image(_image("new", [_digest("l")], ["r/app:latest"]))
    assert store.find("r/app:latest", ["r/app:latest"]) == new
    assert old.repo_tags == []


def test_records_survive_and_leftovers_go_on_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = ImageStore(root)
    first.open()
    kept, orphan = _digest("kept"), _digest("orphan")
    _layer(first, kept)
    _layer(first, orphan)  # as if a crash hit between layers and the record
    first.put_blob(_digest("stray"), b"stray")
    image = first.save_image(_image("app", [kept], ["r/app:1"]))
    first.put_blob(image.config_digest, b"{}")
    half = first.new_work_dir()  # an unpack interrupted by the crash
    (half / "partial").write_text("x")

    second = ImageStore(root)
    second.open()
    assert [i.id for i in second.images()] == [image.id]
    assert second.has_layer(kept)
    assert not second.has_layer(orphan)
    assert not (root / "layers" / orphan.split(":")[1]).exists()
    assert not any((root / "tmp").iterdir())
    assert [p.name for p in (root / "blobs" / "sha256").iterdir()] == [
        image.config_digest.split(":")[1]
    ]
    assert second.usage() == (1, 2)


def test_find_by_id_prefix(store: ImageStore) -> None:
    _layer(store, _digest("l"))
    image = store.save_image(_image("app", [_digest("l")], []))
    hex_id = image.id.split(":")[1]
    assert store.find(hex_id[:12], []) == image
    assert store.find(image.id, []) == image
    assert store.find("sha256:" + "0" * 64, []) is None


def test_a_blob_being_written_survives_another_images_removal(store: ImageStore) -> None:
    """A RemoveImage's garbage collection during a pull: the pull's blob, still a temp
    file, is not the collector's to delete (the pull failed INTERNAL at its rename)."""
    _layer(store, _digest("l"))
    image = store.save_image(_image("gone", [_digest("l")], ["docker.io/library/gone:1"]))
    _done(store, _digest("l"))
    being_written = temp_path(store.blobs / _digest("next").split(":")[1])
    being_written.write_bytes(b"half a blob")
    assert store.remove(image, None, set())
    assert being_written.exists()
