"""Engine creation (SQLite pragmas) and in-process migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DATABASE_FILE = "chatrun.db"


def default_url(data_dir: Path) -> str:
    """The SQLite database in ``data_dir``, where Chatrun keeps it unless told otherwise."""
    return f"sqlite+aiosqlite:///{data_dir.resolve()}/{DATABASE_FILE}"


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite connections get WAL, a busy timeout and foreign keys."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url)
    # Every connection is used in a ``begin()`` block (committed or rolled back) or a
    # ``connect()`` block (rolled back when it closes), so the pool's extra rollback on return
    # would be one more trip to the database thread after every commit.
    engine = create_async_engine(url, pool_reset_on_return=None)
    event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (safe inside a running event loop)."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
