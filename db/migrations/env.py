"""Alembic environment.

Chatrun applies migrations itself at start-up, passing an open connection in
``config.attributes["connection"]`` (see ``db.engine.migrate``). Run from the command line
(``alembic upgrade head``), it migrates the database that the ``CHATRUN_*`` settings name.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from db.engine import create_engine
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
    from server.settings import Settings

    url = config.get_main_option("sqlalchemy.url") or ""
    if not url:
        url = Settings.from_env(os.environ).resolved_database_url
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
