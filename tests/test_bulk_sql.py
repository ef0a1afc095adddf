"""Multi-row statements write exactly what ``executemany`` of the single-row statement writes,
for any rows, however they are cut into statements."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.sqlite.bulk import execute_rows, existing_keys, multi_row
from tests.services import sqlite_only

pytestmark = sqlite_only

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, size INTEGER, note TEXT);
CREATE TABLE tags (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, tag TEXT);
CREATE INDEX tags_item ON tags (item_id);
"""
INSERT = "INSERT INTO items (id, name, size, note) VALUES (?, ?, ?, ?)"
UPDATE = "UPDATE items SET name=?, size=coalesce(?, items.size) WHERE items.id = ?"
DELETE = "DELETE FROM tags WHERE tags.item_id = ?"
INSERT_TAG = "INSERT INTO tags (item_id, tag) VALUES (?, ?)"

ids = st.integers(1, 40)
texts = st.text(max_size=8)
inserts = st.dictionaries(
    ids, st.tuples(texts, st.none() | st.integers(-(2**63), 2**63 - 1), texts), max_size=40
)
updates = st.lists(st.tuples(texts, st.none() | st.integers(-5, 5), ids), max_size=60)
tags = st.lists(st.tuples(ids, texts), max_size=60)
deletes = st.lists(ids, max_size=20)


@contextmanager
def database(path: Path, variables: int) -> Iterator[sqlite3.Connection]:
    path.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA)
        db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
        yield db


def dump(db: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
    return (
        db.execute("SELECT * FROM items ORDER BY id").fetchall(),
        db.execute("SELECT * FROM tags ORDER BY id").fetchall(),
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    inserted=inserts,
    updated=updates,
    tagged=tags,
    deleted=deletes,
    variables=st.sampled_from([4, 9, 50, 32766]),
)
def test_multi_row_statements_write_what_executemany_writes(
    tmp_path: Path,
    inserted: dict[int, tuple[str, int | None, str]],
    updated: list[tuple[str, int | None, int]],
    tagged: list[tuple[int, str]],
    deleted: list[int],
    variables: int,
) -> None:
    rows = [[key, *values] for key, values in inserted.items()]
    with (
        database(tmp_path / "one.db", 32766) as one,
        database(tmp_path / "bulk.db", variables) as bulk,
    ):
        for sql, batch in ((INSERT, rows), (INSERT_TAG, tagged), (UPDATE, updated)):
            one.executemany(sql, batch)
            execute_rows(bulk, sql, batch)
        one.executemany(DELETE, [[key] for key in deleted])
        execute_rows(bulk, DELETE, [[key] for key in deleted])
        assert dump(bulk) == dump(one)
        stored = [row[0] for row in dump(one)[0]]
        assert existing_keys(bulk, "SELECT id FROM items WHERE id IN ({keys})", deleted) == {
            key for key in deleted if key in stored
        }


def test_a_long_batch_is_cut_into_statements_within_sqlite_limits(tmp_path: Path) -> None:
    with database(tmp_path / "bulk.db", 32766) as db:
        rows = [[i, f"item {i}", i, None] for i in range(1, 1_201)]
        execute_rows(db, INSERT, rows)  # 1,200 rows: three statements of at most 500
        execute_rows(db, UPDATE, [[f"new {i}", None, i] for i in range(1, 1_201)])
        assert db.execute("SELECT count(*), min(name), sum(size) FROM items").fetchone() == (
            1_200,
            "new 1",
            sum(range(1, 1_201)),
        )


def test_a_failing_row_fails_the_statement_it_is_in(tmp_path: Path) -> None:
    with database(tmp_path / "bulk.db", 32766) as db:
        with pytest.raises(sqlite3.IntegrityError):
            execute_rows(db, INSERT, [[1, "a", 1, None], [2, None, 2, None]])
        db.rollback()
        assert dump(db) == ([], [])


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO items (id, name) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        "INSERT INTO items (id, name) VALUES (?, ?) RETURNING id",
        "UPDATE items SET name=? WHERE items.id > ?",
        "UPDATE items SET name=?",
        "DELETE FROM tags WHERE tags.item_id = ? AND tags.tag = ?",
        "SELECT * FROM items WHERE id = ?",
    ],
)
def test_statements_without_a_multi_row_form_are_refused(sql: str) -> None:
    with pytest.raises(ValueError):
        multi_row(sql, sql.count("?"), 2)
