"""Alembic environment.

Chatrun applies migrations itself at start-up, passing an open connection in
``config.attributes["connection"]`` (see ``db.engine.migrate``). Run from the command line
(``alembic upgrade head``), it migrates the database that ``CHATRUN_DATABASE_URL`` names, or
the SQLite file in ``CHATRUN_DATA_DIR`` (default ``data``), as the server would.

On PostgreSQL the upgrade runs under a transaction-level advisory lock: processes that start
together on an empty database (several nodes, a rolling restart) migrate one after the other,
and each one after the first finds the schema at head and does nothing. The lock ends with the
upgrade's transaction, so nothing is held once a process runs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from db.engine import create_engine, default_url
from db.models import Base

config = context.config
target_metadata = Base.metadata
# the advisory lock key of Chatrun's migrations (any fixed 64-bit number, the same in every
# process): the first eight bytes of sha256("chatrun migrations")
MIGRATION_LOCK = 0x614EE409AFE40F37


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # taken before anything is read: the version table is read under the lock
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("CHATRUN_DATABASE_URL", "")
    if not url:
        url = default_url(Path(os.environ.get("CHATRUN_DATA_DIR", "data")))
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
elif context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
else:
    asyncio.run(_run_standalone())
