"""The state store: sandbox, container and image records that survive restarts and
crashes, with in-memory indexes for the List and Status RPCs.

Records live in SQLite (WAL mode, synchronous=FULL: a write that returned is on disk).
Every write goes to the database first and to the in-memory index only once committed,
so the index never shows something a crash would lose. Reads never touch the database:
they come from the index, so a List call never waits behind a slow write.

SQLite runs on one dedicated thread: its connection is not shared across threads and
the event loop never blocks on fsync.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from base import failpoints
from cri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, clip

Kind = Literal["sandbox", "container", "image"]
KINDS: tuple[Kind, ...] = ("sandbox", "container", "image")

SCHEMA_VERSION = 1

# Each entry takes the database from version N to N+1 (index 0: empty → 1).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE records (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            name TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (kind, id)
        )""",
        "CREATE UNIQUE INDEX records_name ON records (kind, name) WHERE name != ''",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)

T = TypeVar("T")


class StoreError(Exception):
    pass


@dataclass(frozen=True)
class Record:
    """One stored object. `name` is unique per kind when not empty (CRI names are)."""

    kind: Kind
    id: str
    name: str
    created_ns: int
    data: dict[str, Any] = field(default_factory=dict)


class _Index:
    def __init__(self) -> None:
        self.by_id: dict[str, Record] = {}
        self.by_name: dict[str, str] = {}
        # Moves with every change: what was built from the records (a List answer)
        # holds while it stays.
        self.generation = 0

    def add(self, record: Record) -> None:
        self.generation += 1
        old = self.by_id.get(record.id)
        if old is not None and old.name:
            self.by_name.pop(old.name, None)
        self.by_id[record.id] = record
        if record.name:
            self.by_name[record.name] = record.id

    def remove(self, record_id: str) -> None:
        self.generation += 1
        old = self.by_id.pop(record_id, None)
        if old is not None and old.name:
            self.by_name.pop(old.name, None)


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skiff-store")
        self._conn: sqlite3.Connection | None = None
        self._indexes: dict[Kind, _Index] = {kind: _Index() for kind in KINDS}
        self._settings: dict[str, str] = {}

    # --- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            self._migrate(conn)
            rows = conn.execute("SELECT kind, id, name, created_ns, data FROM records").fetchall()
            settings = conn.execute("SELECT key, value FROM settings").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"state database {self.path} cannot be used: {exc}; "
                "move it aside to start with no records"
            ) from None
        for kind, rid, name, created_ns, data in rows:
            if kind in self._indexes:
                self._indexes[kind].add(Record(kind, rid, name, created_ns, json.loads(data)))
        self._settings = dict(settings)
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"skiffd understands ({SCHEMA_VERSION}); run the newer skiffd, or move the "
                "database aside"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the state store is not open")
        return self._conn

    # --- writes --------------------------------------------------------------------

    async def add(self, record: Record) -> None:
        """Store a new record; its id and (non-empty) name must be free."""
        index = self._indexes[record.kind]
        if record.id in index.by_id:
            raise AlreadyExists(f"{record.kind} {record.id} already exists")
        if record.name and record.name in index.by_name:
            raise AlreadyExists(
                f"{record.kind} name {record.name!r} is reserved by "
                f"{record.kind} {index.by_name[record.name]}"
            )
        await self._run(lambda: self._write(record, insert=True))
        index.add(record)
        failpoints.step(f"{record.kind}-record-add")

    async def update(self, record: Record, *, durable: bool = True) -> None:
        """Replace a stored record's data (its id and name stay). ``durable=False``:
        committed without an fsync (SQLite WAL, synchronous=NORMAL for this write), so
        skiffd's death (kill -9) loses nothing but a power loss may; only for state a
        reboot makes moot and skiffd can learn again (the next durable write syncs it
        too, in order)."""
        index = self._indexes[record.kind]
        old = index.by_id.get(record.id)
        if old is None:
            raise NotFound(f"{record.kind} {record.id} not found")
        if old.name != record.name:
            raise FailedPrecondition(f"{record.kind} {record.id}: a record's name cannot change")
        await self._run(lambda: self._write(record, insert=False, durable=durable))
        index.add(record)
        failpoints.step(f"{record.kind}-record-update")

    async def remove(self, kind: Kind, record_id: str) -> None:
        """Forget a record; forgetting an unknown one is not an error."""
        await self._run(lambda: self._delete(kind, record_id))
        self._indexes[kind].remove(record_id)
        failpoints.step(f"{kind}-record-remove")

    async def set_setting(self, key: str, value: str) -> None:
        await self._run(lambda: self._put_setting(key, value))
        self._settings[key] = value

    def _write(self, record: Record, insert: bool, durable: bool = True) -> None:
        db = self._db()
        data = json.dumps(record.data, sort_keys=True)
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._put(db, record, data, insert)
            finally:
                db.execute("PRAGMA synchronous=FULL")
            return
        self._put(db, record, data, insert)

    @staticmethod
    def _put(db: sqlite3.Connection, record: Record, data: str, insert: bool) -> None:
        if insert:
            db.execute(
                "INSERT INTO records (kind, id, name, created_ns, data) VALUES (?, ?, ?, ?, ?)",
                (record.kind, record.id, record.name, record.created_ns, data),
            )
        else:
            db.execute(
                "UPDATE records SET data = ?, created_ns = ? WHERE kind = ? AND id = ?",
                (data, record.created_ns, record.kind, record.id),
            )

    def _delete(self, kind: str, record_id: str) -> None:
        self._db().execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id))

    def _put_setting(self, key: str, value: str) -> None:
        self._db().execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- reads (memory only) -----------------------------------------------------------

    def get(self, kind: Kind, record_id: str) -> Record | None:
        return self._indexes[kind].by_id.get(record_id)

    def get_by_name(self, kind: Kind, name: str) -> Record | None:
        rid = self._indexes[kind].by_name.get(name)
        return None if rid is None else self._indexes[kind].by_id.get(rid)

    def records(self, kind: Kind) -> Iterator[Record]:
        return iter(list(self._indexes[kind].by_id.values()))

    def count(self, kind: Kind) -> int:
        return len(self._indexes[kind].by_id)

    def generation(self, kind: Kind) -> int:
        """A number that changes whenever a record of ``kind`` is written or removed."""
        return self._indexes[kind].generation

    def setting(self, key: str) -> str | None:
        return self._settings.get(key)

    def resolve(self, kind: Kind, id_or_prefix: str) -> Record:
        """The record whose id is, or starts with, the given string (crictl takes
        truncated ids); a prefix matching several records is an error."""
        if not id_or_prefix:
            raise InvalidArgument(f"{kind} id must not be empty")
        index = self._indexes[kind]
        exact = index.by_id.get(id_or_prefix)
        if exact is not None:
            return exact
        matches = [rid for rid in index.by_id if rid.startswith(id_or_prefix)]
        if not matches:
            raise NotFound(f"{kind} {clip(id_or_prefix)!r} not found")
        if len(matches) > 1:
            raise InvalidArgument(
                f"{kind} id prefix {clip(id_or_prefix)!r} is ambiguous: it matches {len(matches)} "
                f"{kind}s; give more of the id"
            )
        return index.by_id[matches[0]]
