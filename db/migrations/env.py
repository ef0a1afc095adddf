"""Alembic environment.

Chatrun applies migrations itself at start-up, passing an open connection in
``config.attributes["connection"]`` (see ``db.engine.migrate``). Run from the command line
(``alembic upgrade head``), it migrates the database that ``CHATRUN_DATABASE_URL`` names, or
the SQLite file in ``CHATRUN_DATA_DIR`` (default ``data``), as the server would.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection

from db.engine import create_engine, default_url
from db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
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
