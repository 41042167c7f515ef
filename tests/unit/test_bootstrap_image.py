"""A new client's database as one SQLite file: built by the server, adopted by the client.

``build_image`` makes the file a brand-new client would hold after the streamed initial
sync of a snapshot; ``adopt_image`` checks such a file (trusting none of its bytes) and
copies it into the client's empty database.  These tests pin that an adopted image is
the streamed sync's database (same rows, LSN and flags, its own client id, a working
client database), and that every image that is not exactly that is refused with
``ImageRejected`` while the target database stays empty and usable.

Real SQLite throughout: client databases are files opened with the browser's settings;
images come from a seeded server store through ``Snapshot``; tampered images are made
by deserializing a good one, changing it with SQL and serializing it again.
"""

from __future__ import annotations

import gzip
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes.bootstrap_image import (
    ImageInfo,
    ImageRejected,
    adopt_image,
    build_image,
    check_page_size,
)
from tidesync.changes.db import open_connection
from tidesync.changes.worker import ChangesWorker
from tidesync.schema import Schema, quote_ident
from tidesync.server.seed import seed_tasks
from tidesync.server.snapshot import Snapshot
from tidesync.worker_sync.shared.message_types import encode_init_rows_body

#: The browser's settings for the client database (``changes.worker.mjs``).
BROWSER_PRAGMAS: dict[str, str | int] = {
    "page_size": 2048,
    "locking_mode": "EXCLUSIVE",
    "journal_mode": "WAL",
    "synchronous": "FULL",
}
PAGE_SIZE = 2048
TASKS = 300
PROJECTS = 10  # ``seed_tasks`` adds ten projects for its tasks
CHUNK_ROWS = 100  # several chunks of tasks per snapshot
T0 = 1_800_000_000_000

Chunk = tuple[str, Sequence[str], Sequence[Sequence[Any]], Sequence[Any]]
Image = tuple[bytes, ImageInfo]

#: A table with a column of BLOB affinity (no declared type), and a chunk of it.
UNTYPED_SQL = "CREATE TABLE items (id TEXT PRIMARY KEY, v, updated_at TEXT NOT NULL);"
UNTYPED_AT = "2027-01-15T08:00:00.000Z"
UNTYPED_CHUNK: Chunk = (
    "items",
    ["id", "v", "updated_at"],
    [
        ["a", "text", UNTYPED_AT],
        ["b", 7, UNTYPED_AT],
        ["c", 1.25, UNTYPED_AT],
        ["d", None, UNTYPED_AT],
    ],
    [None, None, None, None],
)


# --- helpers --------------------------------------------------------------------------------


def client_conn(path: Path) -> sqlite3.Connection:
    """A client database file opened as the browser opens it."""
    return open_connection(str(path), BROWSER_PRAGMAS)


def snapshot_chunks(snap: Snapshot, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Every ``srv_init_rows`` chunk of ``snap``: ``(table, columns, rows, versions)``."""
    for table in snap.tables:
        for _ in range(snap.chunks_of(table, chunk_rows)):
            yield (table, *snap.read_rows(table, chunk_rows))


def image_of_store(
    db_path: Path, schema: Schema, *, page_size: int = PAGE_SIZE, chunk_rows: int = CHUNK_ROWS
) -> Image:
    """The bootstrap image of the server database ``db_path``, as the server builds it."""
    snap = Snapshot(db_path, schema)
    try:
        return build_image(schema, snap.lsn, snapshot_chunks(snap, chunk_rows), page_size=page_size)
    finally:
        snap.close()


def deserialized(image: bytes) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.deserialize(image)
    return conn


def tamper(image: bytes, *statements: str) -> bytes:
    """``image`` after ``statements`` (with the recording triggers off, as for server data,
    unless a statement switches them on: ``UPDATE _ts_ctx SET applying = 0``)."""
    conn = deserialized(image)
    try:
        conn.execute("UPDATE _ts_ctx SET applying = 1")
        for statement in statements:
            conn.execute(statement)
        conn.execute("UPDATE _ts_ctx SET applying = 0")
        return conn.serialize()
    finally:
        conn.close()


def raw_tamper(image: bytes, *statements: str) -> bytes:
    """``image`` after ``statements``, run as they are (the recording triggers stay on)."""
    conn = deserialized(image)
    try:
        for statement in statements:
            conn.execute(statement)
        return conn.serialize()
    finally:
        conn.close()


def _reloaded(conn: sqlite3.Connection) -> sqlite3.Connection:
    """The same content on a new connection, so a schema edited in place is read again."""
    data = conn.serialize()
    conn.close()
    return deserialized(data)


def _set_master_sql(conn: sqlite3.Connection, name: str, sql: str) -> sqlite3.Connection:
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (sql, name))
    conn.execute("PRAGMA writable_schema = OFF")
    return _reloaded(conn)


def null_in_not_null_column(image: bytes) -> bytes:
    """A NULL ``tasks.title`` (declared NOT NULL): the table's SQL is edited to allow it for
    the update (``writable_schema``), then put back as it was."""
    conn = deserialized(image)
    original = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks'").fetchone()[0]
    relaxed = original.replace("title TEXT NOT NULL", "title TEXT")
    assert relaxed != original
    conn = _set_master_sql(conn, "tasks", relaxed)
    conn.execute("UPDATE _ts_ctx SET applying = 1")
    conn.execute("UPDATE tasks SET title = NULL WHERE rowid = 5")
    conn.execute("UPDATE _ts_ctx SET applying = 0")
    conn = _set_master_sql(conn, "tasks", original)
    try:
        # (``title IS NULL`` would be optimised away: the column is declared NOT NULL)
        nulls = conn.execute("SELECT sum(typeof(title) = 'null') FROM tasks").fetchone()[0]
        assert nulls == 1
        return conn.serialize()
    finally:
        conn.close()


def duplicate_primary_key(image: bytes) -> bytes:
    """A second ``tasks`` row with an existing id, absent from the primary key's index.

    Made with ``writable_schema``: the key's index is taken out of the schema and the
    key out of the table's SQL, the row is copied, then both are put back as they were.
    ``PRAGMA quick_check`` does not compare indexes with their tables; ``integrity_check``
    reports this file ("row ... missing from index sqlite_autoindex_tasks_1").
    """
    conn = deserialized(image)
    original = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks'").fetchone()[0]
    index = conn.execute(
        "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master "
        "WHERE name = 'sqlite_autoindex_tasks_1'"
    ).fetchone()
    assert index is not None
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("DELETE FROM sqlite_master WHERE name = 'sqlite_autoindex_tasks_1'")
    conn.execute("PRAGMA writable_schema = OFF")
    conn = _set_master_sql(conn, "tasks", original.replace("id TEXT PRIMARY KEY", "id TEXT"))
    conn.execute("UPDATE _ts_ctx SET applying = 1")
    conn.execute("INSERT INTO tasks SELECT * FROM tasks WHERE rowid = 5")
    conn.execute("UPDATE _ts_ctx SET applying = 0")
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("INSERT INTO sqlite_master VALUES (?, ?, ?, ?, ?)", index)
    conn.execute("PRAGMA writable_schema = OFF")
    conn = _set_master_sql(conn, "tasks", original)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA integrity_check").fetchall() != [("ok",)]
        assert conn.execute("SELECT count(*) FROM tasks NOT INDEXED").fetchone()[0] == TASKS + 1
        return conn.serialize()
    finally:
        conn.close()


def corrupt_page(image: bytes, page_type: int) -> bytes:
    """``image`` with the B-tree header of the page of ``page_type`` nearest its middle
    (0x0D: a table leaf, 0x0A: an index leaf) overwritten with 0xFF bytes."""
    pages = len(image) // PAGE_SIZE
    middle = pages // 2
    for number in sorted(range(1, pages), key=lambda n: abs(n - middle)):  # page 1: header
        offset = number * PAGE_SIZE
        if image[offset] == page_type:
            return image[:offset] + b"\xff" * 8 + image[offset + 8 :]
    raise AssertionError(f"no page of type {page_type:#x} in the image")


def app_rows(conn: sqlite3.Connection, schema: Schema) -> dict[str, list[tuple[Any, ...]]]:
    """Every app table's rows (values and their SQLite types), by primary key."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for name in schema.order:
        table = schema.tables[name]
        cols = [quote_ident(c) for c in table.column_names]
        keys = ", ".join(quote_ident(k) for k in table.primary_key)
        types = ", ".join(f"typeof({c})" for c in cols)
        out[name] = [
            tuple(r)
            for r in conn.execute(
                f"SELECT {', '.join(cols)}, {types} FROM {quote_ident(name)} ORDER BY {keys}"
            )
        ]
    return out


def state_of(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM sync_state")}


def master_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])


async def assert_left_empty_and_usable(conn: sqlite3.Connection, schema: Schema) -> None:
    """After a refused image: nothing was written, and the client opens the database."""
    assert master_count(conn) == 0
    worker = ChangesWorker(conn, schema, now_ms=lambda: T0)
    try:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
        assert worker.synced_lsn() == 0
        assert (await worker.local_state()).initialized is False
    finally:
        await worker.close()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> Schema:
    return Schema.demo()


@pytest.fixture(scope="module")
def server_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("server") / "server.db"
    seed_tasks(path, TASKS)
    return path


@pytest.fixture(scope="module")
def built(server_db: Path, schema: Schema) -> Image:
    return image_of_store(server_db, schema)


@pytest.fixture
def image(built: Image) -> bytes:
    return built[0]


# --- the image is the streamed sync's database ----------------------------------------------


def test_build_image_reports_the_snapshot_lsn_rows_page_size_and_length(
    server_db: Path, schema: Schema, built: Image
) -> None:
    image, info = built
    snap = Snapshot(server_db, schema)
    try:
        lsn = snap.lsn
    finally:
        snap.close()
    assert lsn > 0
    assert info == ImageInfo(lsn=lsn, rows=TASKS + PROJECTS, page_size=PAGE_SIZE, bytes=len(image))
    assert image[:16] == b"SQLite format 3\x00"
    assert len(image) % PAGE_SIZE == 0


def test_image_holds_no_client_id_no_history_and_a_zero_clock(image: bytes) -> None:
    conn = deserialized(image)
    try:
        assert set(state_of(conn)) == {"lsn", "initialized"}
        assert conn.execute("SELECT count(*) FROM local_changes").fetchone()[0] == 0
        assert conn.execute("SELECT id, applying, now, hlc FROM _ts_ctx").fetchall() == [
            (1, 0, None, 0)
        ]
    finally:
        conn.close()


async def test_adopted_image_equals_the_streamed_initial_sync_of_the_same_snapshot(
    tmp_path: Path, server_db: Path, schema: Schema, built: Image
) -> None:
    image, info = built
    adopted = client_conn(tmp_path / "adopted.db")
    assert adopt_image(adopted, schema, image) == info

    streamed = ChangesWorker(client_conn(tmp_path / "streamed.db"), schema, now_ms=lambda: T0)
    snap = Snapshot(server_db, schema)
    try:
        assert snap.lsn == info.lsn  # the store has not moved: the same snapshot
        await streamed.begin_initial_sync(snap.lsn)
        chunks = 0
        for table, columns, rows, versions in snapshot_chunks(snap):
            body = encode_init_rows_body(columns, rows, versions)
            await streamed.stage_initial_json(table, '{"type":"srv_init_rows",' + body + "}")
            chunks += 1
        outcome = await streamed.commit_initial_sync(snap.lsn)
    finally:
        snap.close()
    assert chunks == TASKS // CHUNK_ROWS + 1  # tasks in several chunks, projects in one
    assert (outcome.applied, outcome.failed) == (TASKS + PROJECTS, 0)

    worker = ChangesWorker(adopted, schema, now_ms=lambda: T0)
    try:
        streamed_conn = streamed._conn
        assert app_rows(adopted, schema) == app_rows(streamed_conn, schema)
        assert len(app_rows(adopted, schema)["tasks"]) == TASKS
        assert await worker.table_checksums() == await streamed.table_checksums()
        for key in ("lsn", "initialized"):
            assert state_of(adopted)[key] == state_of(streamed_conn)[key]
        assert state_of(adopted)["lsn"] == str(info.lsn)
        assert state_of(adopted)["initialized"] == "1"

        assert worker.synced_lsn() == info.lsn == streamed.synced_lsn()
        local = await worker.local_state()
        assert local.initialized is True
        assert local.pending_count == 0
        assert worker.client_id
        assert worker.client_id != streamed.client_id
        assert state_of(adopted)["client_id"] == worker.client_id
    finally:
        await worker.close()
        await streamed.close()


async def test_each_adoption_of_one_image_makes_its_own_client_id(
    tmp_path: Path, schema: Schema, image: bytes
) -> None:
    ids = []
    for name in ("a.db", "b.db"):
        conn = client_conn(tmp_path / name)
        adopt_image(conn, schema, image)
        assert "client_id" not in state_of(conn)
        worker = ChangesWorker(conn, schema, now_ms=lambda: T0)
        ids.append(worker.client_id)
        await worker.close()
    assert all(ids)
    assert ids[0] != ids[1]


def test_adopted_image_is_durable_and_intact_after_reopening_the_file(
    tmp_path: Path, schema: Schema, built: Image
) -> None:
    image, info = built
    path = tmp_path / "client.db"
    conn = client_conn(path)
    autocheckpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    adopt_image(conn, schema, image)
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == autocheckpoint
    before = app_rows(conn, schema)
    conn.close()

    conn = client_conn(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        assert [tuple(r) for r in conn.execute("PRAGMA integrity_check")] == [("ok",)]
        assert app_rows(conn, schema) == before
        assert state_of(conn) == {"lsn": str(info.lsn), "initialized": "1"}
    finally:
        conn.close()


async def test_adopted_database_records_a_local_insert_as_pending(
    tmp_path: Path, schema: Schema, image: bytes
) -> None:
    conn = client_conn(tmp_path / "client.db")
    adopt_image(conn, schema, image)
    worker = ChangesWorker(conn, schema, now_ms=lambda: T0)
    try:
        project = conn.execute("SELECT id FROM projects ORDER BY id LIMIT 1").fetchone()[0]
        await worker.insert(
            "tasks", {"id": "local-1", "project_id": project, "title": "Written here", "done": 0}
        )
        rows = conn.execute(
            "SELECT table_name, operation, pk, state, from_server FROM local_changes"
        ).fetchall()
        assert [tuple(r) for r in rows] == [("tasks", "insert", '["local-1"]', "pending", 0)]
        assert (await worker.local_state()).pending_count == 1
        unsynced = await worker.unsynced_changes(10)
        assert [(c.table, c.data["id"], c.data["title"]) for c in unsynced] == [
            ("tasks", "local-1", "Written here")
        ]
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == TASKS + 1
    finally:
        await worker.close()


async def test_database_left_by_a_refused_image_still_adopts_the_genuine_one(
    tmp_path: Path, schema: Schema, built: Image
) -> None:
    image, info = built
    conn = client_conn(tmp_path / "client.db")
    try:
        with pytest.raises(ImageRejected):
            adopt_image(conn, schema, tamper(image, "CREATE TABLE extra (x)"))
        assert adopt_image(conn, schema, image) == info
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == TASKS
    finally:
        conn.close()


def test_untyped_column_image_round_trips_text_and_numbers(tmp_path: Path) -> None:
    """A column of BLOB affinity (no declared type) stores text and numbers as given."""
    schema = Schema.from_sql(UNTYPED_SQL)
    image, info = build_image(schema, 5, [UNTYPED_CHUNK], page_size=PAGE_SIZE)
    conn = client_conn(tmp_path / "client.db")
    try:
        assert adopt_image(conn, schema, image) == info
        assert [
            tuple(r) for r in conn.execute("SELECT id, v, typeof(v) FROM items ORDER BY id")
        ] == [
            ("a", "text", "text"),
            ("b", 7, "integer"),
            ("c", 1.25, "real"),
            ("d", None, "null"),
        ]
    finally:
        conn.close()


# --- refused images -------------------------------------------------------------------------

#: (test id, how the genuine image is changed, the message ``ImageRejected`` carries)
REFUSED: list[tuple[str, Callable[[bytes], bytes], str]] = [
    # not a (whole) SQLite file
    ("not_sqlite", lambda image: b"<!doctype html>" + b"\x00" * 4000, "not an SQLite database"),
    ("empty_bytes", lambda image: b"", "not an SQLite database"),
    ("gzipped_image", lambda image: gzip.compress(image), "not an SQLite database"),
    ("truncated_to_the_header", lambda image: image[:64], "not an SQLite database"),
    ("truncated_by_a_page", lambda image: image[:-PAGE_SIZE], "do not hold the"),
    ("truncated_mid_page", lambda image: image[: len(image) // 2 + 7], "do not hold the"),
    ("one_page_too_many", lambda image: image + b"\x00" * PAGE_SIZE, "do not hold the"),
    # the schema: nothing of the image's own, nothing changed, nothing missing
    (
        "extra_trigger",
        lambda image: tamper(
            image, "CREATE TRIGGER evil AFTER INSERT ON tasks BEGIN DELETE FROM projects; END"
        ),
        r"schema differs .*\['evil'\]",
    ),
    ("extra_table", lambda image: tamper(image, "CREATE TABLE extra (x)"), r"\['extra'\]"),
    ("extra_view", lambda image: tamper(image, "CREATE VIEW v AS SELECT 1"), r"\['v'\]"),
    ("statistics_table", lambda image: tamper(image, "ANALYZE"), r"\['sqlite_stat1'\]"),
    (
        "changed_index",
        lambda image: tamper(
            image, "DROP INDEX tasks_project_id", "CREATE INDEX tasks_project_id ON tasks (title)"
        ),
        r"schema differs .*\['tasks_project_id'\], missing \['tasks_project_id'\]",
    ),
    (
        "dropped_index",
        lambda image: tamper(image, "DROP INDEX tasks_project_id"),
        r"missing \['tasks_project_id'\]",
    ),
    (
        "changed_table",
        lambda image: tamper(image, "ALTER TABLE tasks ADD COLUMN extra TEXT"),
        r"schema differs .*\['tasks'\], missing \['tasks'\]",
    ),
    (
        "dropped_recording_trigger",
        lambda image: tamper(image, "DROP TRIGGER _ts_lc_tasks_insert"),
        r"missing \['_ts_lc_tasks_insert'\]",
    ),
    ("user_version", lambda image: tamper(image, "PRAGMA user_version = 3"), "settings differ"),
    ("application_id", lambda image: tamper(image, "PRAGMA application_id = 7"), "settings"),
    # history and state: nothing but the LSN and the initialized flag
    (
        "pending_local_change",
        lambda image: tamper(
            image,
            "UPDATE _ts_ctx SET applying = 0",  # the recording triggers on: a local write
            "UPDATE tasks SET title = 'edited' WHERE rowid = 1",
        ),
        "holds local changes",
    ),
    (
        "server_history_row",
        lambda image: tamper(
            image,
            "INSERT INTO local_changes (id, table_name, operation, pk, data, updated_at, "
            "from_server, state) VALUES ('c1', 'tasks', 'insert', '[\"x\"]', '{}', "
            "'2027-01-15T08:00:00.000Z', 1, 'applied')",
        ),
        "holds local changes",
    ),
    (
        "client_id_in_state",
        lambda image: tamper(image, "INSERT INTO sync_state VALUES ('client_id', 'shared')"),
        r"unexpected sync state \['client_id', 'initialized', 'lsn'\]",
    ),
    (
        "extra_state_key",
        lambda image: tamper(image, "INSERT INTO sync_state VALUES ('hlc_last', '99')"),
        "unexpected sync state",
    ),
    (
        "not_initialized",
        lambda image: tamper(image, "UPDATE sync_state SET value = '0' WHERE key = 'initialized'"),
        "unexpected sync state",
    ),
    (
        "no_lsn",
        lambda image: tamper(image, "DELETE FROM sync_state WHERE key = 'lsn'"),
        "unexpected sync state",
    ),
    (
        "trigger_time_left_set",
        lambda image: tamper(image, "UPDATE _ts_ctx SET now = '2027-01-15T08:00:00.000Z'"),
        "unexpected trigger context",
    ),
    (
        "clock_set",
        lambda image: tamper(image, "UPDATE _ts_ctx SET hlc = 5"),
        "unexpected trigger context",
    ),
    (
        "triggers_switched_off",
        lambda image: raw_tamper(image, "UPDATE _ts_ctx SET applying = 1"),
        "unexpected trigger context",
    ),
    # app values the streamed path would never store
    (
        "blob_in_text_column",
        lambda image: tamper(image, "UPDATE tasks SET title = x'00ff' WHERE rowid = 5"),
        r"tasks\.title: a value that is not text",
    ),
    (
        "text_in_integer_column",
        lambda image: tamper(image, "UPDATE tasks SET done = 'yes' WHERE rowid = 5"),
        r"tasks\.done: a value that is not a number",
    ),
    (
        "blob_in_integer_column",
        lambda image: tamper(image, "UPDATE tasks SET done = x'01' WHERE rowid = 5"),
        r"tasks\.done: a value that is not a number",
    ),
    (
        "infinity_in_integer_column",
        lambda image: tamper(image, "UPDATE tasks SET done = 1e999 WHERE rowid = 5"),
        r"tasks\.done: a value that is an infinity",
    ),
    (
        "negative_infinity_in_integer_column",
        lambda image: tamper(image, "UPDATE tasks SET done = -1e999 WHERE rowid = 5"),
        r"tasks\.done: a value that is an infinity",
    ),
    (
        "null_primary_key",  # SQLite itself lets a TEXT PRIMARY KEY of a rowid table be NULL
        lambda image: tamper(image, "UPDATE tasks SET id = NULL WHERE rowid = 5"),
        r"tasks\.id: a value that is NULL",
    ),
    (
        "null_in_not_null_column",  # caught by quick_check, which checks NOT NULL
        null_in_not_null_column,
        r"corrupt: NULL value in tasks\.title",
    ),
    # damaged pages
    (
        "corrupt_index_page",  # quick_check reports it
        lambda image: corrupt_page(image, 0x0A),
        r"(?s)corrupt: .*btreeInitPage",
    ),
    (
        "corrupt_table_page",  # quick_check fails with SQLITE_CORRUPT instead of reporting it
        lambda image: corrupt_page(image, 0x0D),
        "unreadable: database disk image is malformed",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), [(c, m) for _, c, m in REFUSED], ids=[i for i, _, _ in REFUSED]
)
async def test_refused_image_raises_image_rejected_and_leaves_the_database_empty(
    tmp_path: Path,
    schema: Schema,
    image: bytes,
    change: Callable[[bytes], bytes],
    message: str,
) -> None:
    bad = change(image)
    assert bad != image
    conn = client_conn(tmp_path / "client.db")
    with pytest.raises(ImageRejected, match=message):
        adopt_image(conn, schema, bad)
    await assert_left_empty_and_usable(conn, schema)


@pytest.mark.parametrize(
    "lsn",
    ["0", "-1", "", "abc", "1.5", " 7", "18446744073709551616", "\u00b2", "1" * 5000],
    ids=[
        "zero",
        "negative",
        "empty",
        "letters",
        "fraction",
        "space",
        "above_64_bits",
        "superscript_two",
        "five_thousand_digits",
    ],
)
async def test_image_whose_lsn_is_not_a_positive_64_bit_decimal_is_refused(
    tmp_path: Path, schema: Schema, image: bytes, lsn: str
) -> None:
    bad = tamper(image, f"UPDATE sync_state SET value = '{lsn}' WHERE key = 'lsn'")
    conn = client_conn(tmp_path / "client.db")
    with pytest.raises(ImageRejected):
        adopt_image(conn, schema, bad)
    await assert_left_empty_and_usable(conn, schema)


async def test_image_with_a_duplicate_primary_key_missing_from_its_index_is_refused(
    tmp_path: Path, schema: Schema, image: bytes
) -> None:
    """Two ``tasks`` rows with one id, the second absent from the key's index: a file the
    streamed path cannot produce (it upserts by key) and ``integrity_check`` calls corrupt."""
    conn = client_conn(tmp_path / "client.db")
    with pytest.raises(ImageRejected):
        adopt_image(conn, schema, duplicate_primary_key(image))
    await assert_left_empty_and_usable(conn, schema)


async def test_image_built_with_another_page_size_is_refused(
    tmp_path: Path, server_db: Path, schema: Schema
) -> None:
    other, info = image_of_store(server_db, schema, page_size=4096)
    assert info.page_size == 4096
    conn = client_conn(tmp_path / "client.db")
    with pytest.raises(ImageRejected, match="page size 4096, this database uses 2048"):
        adopt_image(conn, schema, other)
    await assert_left_empty_and_usable(conn, schema)


async def test_image_of_another_schema_is_refused(
    tmp_path: Path, schema: Schema, image: bytes
) -> None:
    wider = Schema.from_sql(
        schema.sql.replace("title TEXT NOT NULL,", "title TEXT NOT NULL, note TEXT,")
    )
    assert wider.tables["tasks"].column("note") is not None
    conn = client_conn(tmp_path / "client.db")
    with pytest.raises(ImageRejected, match="schema differs"):
        adopt_image(conn, wider, image)
    await assert_left_empty_and_usable(conn, wider)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("UPDATE items SET v = x'00' WHERE id = 'a'", r"items\.v: a value that is a blob"),
        (
            "UPDATE items SET v = 1e999 WHERE id = 'b'",
            r"items\.v: a value that is a blob or an inf",
        ),
        (
            "UPDATE items SET v = -1e999 WHERE id = 'b'",
            r"items\.v: a value that is a blob or an inf",
        ),
    ],
    ids=["blob", "infinity", "negative_infinity"],
)
def test_untyped_column_refuses_a_blob_or_an_infinity(
    tmp_path: Path, statement: str, message: str
) -> None:
    schema = Schema.from_sql(UNTYPED_SQL)
    image, _ = build_image(schema, 5, [UNTYPED_CHUNK], page_size=PAGE_SIZE)
    conn = client_conn(tmp_path / "client.db")
    try:
        with pytest.raises(ImageRejected, match=message):
            adopt_image(conn, schema, tamper(image, statement))
        assert master_count(conn) == 0
    finally:
        conn.close()


def test_largest_finite_real_in_an_integer_column_is_accepted(
    tmp_path: Path, schema: Schema, image: bytes
) -> None:
    """The infinity check's bound is the largest double itself: that value is finite."""
    edge = tamper(image, "UPDATE tasks SET done = 1.7976931348623157e308 WHERE rowid = 5")
    conn = client_conn(tmp_path / "client.db")
    try:
        adopt_image(conn, schema, edge)
        assert conn.execute("SELECT max(done) FROM tasks").fetchone()[0] == 1.7976931348623157e308
    finally:
        conn.close()


# --- a database that is not empty -----------------------------------------------------------


async def test_non_empty_database_is_refused_and_left_unchanged(
    tmp_path: Path, schema: Schema, image: bytes
) -> None:
    conn = client_conn(tmp_path / "client.db")
    worker = ChangesWorker(conn, schema, now_ms=lambda: T0)
    try:
        await worker.insert("projects", {"id": "p-own", "name": "Mine"})
        before = (
            app_rows(conn, schema),
            state_of(conn),
            [tuple(r) for r in conn.execute("SELECT * FROM local_changes ORDER BY seq")],
            sorted(tuple(r) for r in conn.execute("SELECT type, name, sql FROM sqlite_master")),
        )
        with pytest.raises(ImageRejected, match="not empty"):
            adopt_image(conn, schema, image)
        after = (
            app_rows(conn, schema),
            state_of(conn),
            [tuple(r) for r in conn.execute("SELECT * FROM local_changes ORDER BY seq")],
            sorted(tuple(r) for r in conn.execute("SELECT type, name, sql FROM sqlite_master")),
        )
        assert after == before
        assert worker.synced_lsn() == 0
        assert (await worker.local_state()).pending_count == 1
    finally:
        await worker.close()


async def test_prepared_database_without_rows_is_refused(
    tmp_path: Path, schema: Schema, image: bytes
) -> None:
    conn = client_conn(tmp_path / "client.db")
    worker = ChangesWorker(conn, schema, now_ms=lambda: T0)
    try:
        client_id = worker.client_id
        with pytest.raises(ImageRejected, match="not empty"):
            adopt_image(conn, schema, image)
        assert state_of(conn) == {"client_id": client_id}
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    finally:
        await worker.close()


# --- page sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1 << n for n in range(9, 17)])
def test_check_page_size_accepts_powers_of_two_from_512_to_65536(size: int) -> None:
    assert check_page_size(size) == size


@pytest.mark.parametrize(
    "size",
    [0, -512, 1, 256, 511, 513, 1000, 3072, 4095, 65535, 131072, 2048.0, "2048", True, None],
)
def test_check_page_size_rejects_other_values(size: Any) -> None:
    with pytest.raises(ValueError, match="page size"):
        check_page_size(size)


def test_build_image_refuses_a_page_size_sqlite_does_not_accept(schema: Schema) -> None:
    with pytest.raises(ValueError, match="power of two"):
        build_image(schema, 1, [], page_size=3000)
