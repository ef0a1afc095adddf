"""A write on the database thread while the event loop's thread is busy: ``executemany`` (a
step, and a hand-back of the GIL, per row) against the multi-row statements of ``db.bulk``.

    python -m bench.dbthread [ROWS]

Prints the median and worst time of a ROWS-row insert and update (default 600), idle and next
to a thread that keeps the GIL busy the way a saturated event loop does.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from db.sqlite.bulk import execute_rows

INSERT = "INSERT INTO t (id, a, b, c) VALUES (?, ?, ?, ?)"
UPDATE = "UPDATE t SET a=?, c=? WHERE t.id = ?"
REPEATS = 5


def busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1_000):
            x += i


def timed(db: sqlite3.Connection, write: Callable[[sqlite3.Connection], None]) -> float:
    result: list[float] = []

    def run() -> None:  # on a thread of its own, as the store's writer does
        started = time.perf_counter()
        write(db)
        db.commit()
        result.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0] * 1000


def measure(rows: int, contended: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "bench.db", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c REAL)")
        stop = threading.Event()
        spinner = threading.Thread(target=busy, args=(stop,))
        if contended:
            spinner.start()
        try:
            for name, how in (("executemany", "many"), ("multi-row", "bulk")):
                times = []
                for n in range(REPEATS):
                    base = n * rows
                    insert = [[base + i, "x" * 20, "y" * 30, 1.5] for i in range(rows)]
                    update = [["z" * 20, 2.5, base + i] for i in range(rows)]

                    def write(
                        db: sqlite3.Connection,
                        insert: list[list[Any]] = insert,
                        update: list[list[Any]] = update,
                        how: str = how,
                    ) -> None:
                        for sql, values in ((INSERT, insert), (UPDATE, update)):
                            if how == "many":
                                db.executemany(sql, values)
                            else:
                                execute_rows(db, sql, values)

                    times.append(timed(db, write))
                    db.execute("DELETE FROM t")
                    db.commit()
                figures[name] = {
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                }
        finally:
            stop.set()
            if contended:
                spinner.join()
            db.close()
    return figures


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    out = {"rows": rows, "idle": measure(rows, False), "busy_loop": measure(rows, True)}
    print(json.dumps(out))
    for state in ("idle", "busy_loop"):
        for name, figure in out[state].items():
            median, worst = figure["median_ms"], figure["max_ms"]
            print(f"{state:10} {name:12} median {median:7.1f} ms  max {worst:7.1f} ms")


if __name__ == "__main__":
    main()
