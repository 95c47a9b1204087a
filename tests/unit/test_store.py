"""The state store on a real SQLite database in a temp directory."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cri.errors import AlreadyExists, InvalidArgument, NotFound
from cri.store import SCHEMA_VERSION, Record, StateStore, StoreError


def _run(fn: Callable[[StateStore], Awaitable[None]], path: Path) -> None:
    async def main() -> None:
        store = StateStore(path)
        await store.open()
        try:
            await fn(store)
        finally:
            await store.close()

    asyncio.run(main())


def _sandbox(rid: str, name: str = "", **data: object) -> Record:
    return Record("sandbox", rid, name or f"name-{rid}", 1_700_000_000_000_000_000, dict(data))


def test_records_survive_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    async def write(store: StateStore) -> None:
        await store.add(_sandbox("aaa111", state="ready"))
        await store.add(_sandbox("bbb222"))
        await store.update(_sandbox("aaa111", state="notready"))
        await store.remove("sandbox", "bbb222")
        await store.set_setting("pod_cidr", "10.0.0.0/24")

    async def read(store: StateStore) -> None:
        assert [r.id for r in store.records("sandbox")] == ["aaa111"]
        record = store.get("sandbox", "aaa111")
        assert record is not None
        assert record.data == {"state": "notready"}
        assert store.get_by_name("sandbox", "name-aaa111") == record
        assert store.get_by_name("sandbox", "name-bbb222") is None
        assert store.setting("pod_cidr") == "10.0.0.0/24"
        assert store.count("container") == 0

    _run(write, db)
    _run(read, db)


def test_a_write_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    async def write(store: StateStore) -> None:
        await store.add(_sandbox("ccc333"))
        # Another connection (as after a crash) sees it without any close.
        other = sqlite3.connect(db)
        rows = other.execute("SELECT id FROM records").fetchall()
        other.close()
        assert rows == [("ccc333",)]

    _run(write, db)


def test_names_and_ids_are_unique_per_kind(tmp_path: Path) -> None:
    async def check(store: StateStore) -> None:
        await store.add(_sandbox("id1", "pod-a"))
        with pytest.raises(AlreadyExists, match="pod-a"):
            await store.add(_sandbox("id2", "pod-a"))
        with pytest.raises(AlreadyExists, match="id1"):
            await store.add(_sandbox("id1", "pod-b"))
        # Another kind has its own namespace of names.
        await store.add(Record("container", "id1", "pod-a", 0))
        # A removed record frees its name.
        await store.remove("sandbox", "id1")
        await store.add(_sandbox("id3", "pod-a"))
        assert store.get("sandbox", "id2") is None

    _run(check, tmp_path / "state.db")


def test_update_of_unknown_record_is_not_found(tmp_path: Path) -> None:
    async def check(store: StateStore) -> None:
        with pytest.raises(NotFound):
            await store.update(_sandbox("nope"))

    _run(check, tmp_path / "state.db")


def test_id_prefixes_resolve_like_crictl_expects(tmp_path: Path) -> None:
    async def check(store: StateStore) -> None:
        await store.add(_sandbox("abc123"))
        await store.add(_sandbox("abd456"))
        assert store.resolve("sandbox", "abc").id == "abc123"
        assert store.resolve("sandbox", "abd456").id == "abd456"
        with pytest.raises(InvalidArgument, match="ambiguous"):
            store.resolve("sandbox", "ab")
        with pytest.raises(NotFound, match="zzz"):
            store.resolve("sandbox", "zzz")
        with pytest.raises(InvalidArgument, match="empty"):
            store.resolve("sandbox", "")

    _run(check, tmp_path / "state.db")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    async def main() -> None:
        store = StateStore(db)
        with pytest.raises(StoreError, match="newer than this skiffd"):
            await store.open()
        await store.close()

    asyncio.run(main())


def test_a_corrupt_database_is_named(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database" * 100)

    async def main() -> None:
        store = StateStore(db)
        with pytest.raises(StoreError, match=str(db)):
            await store.open()
        await store.close()

    asyncio.run(main())


def test_schema_version_is_recorded(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    async def nothing(store: StateStore) -> None:
        return None

    _run(nothing, db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_a_write_without_fsync_is_read_back_and_leaves_full_sync_on(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    async def write(store: StateStore) -> None:
        await store.add(_sandbox("aaa111", state="created"))
        await store.update(_sandbox("aaa111", state="running"), durable=False)
        # The connection's own setting is back for every later write.
        conn = store._db()
        level = await asyncio.get_running_loop().run_in_executor(
            store._executor, lambda: conn.execute("PRAGMA synchronous").fetchone()[0]
        )
        assert level == 2  # FULL

    _run(write, db)
    # What another process (skiffd started again after kill -9) reads.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT data FROM records WHERE id = 'aaa111'").fetchall()
    assert rows == [('{"state": "running"}',)]
