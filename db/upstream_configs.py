"""Upstream configs (profiles): where runs go, edited through the admin API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from db.database import Database
from db.models import UpstreamConfigRow
from db.records import UpstreamConfigRecord, dump_json
from db.rows import config_record, config_row


class UpstreamConfigs:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[UpstreamConfigRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(UpstreamConfigRow).order_by(UpstreamConfigRow.name))
            return [config_record(r._mapping) for r in rows]

    async def create(self, record: UpstreamConfigRecord) -> bool:
        """Insert a config; False when the name is taken. An active one deactivates the rest."""

        async def tx(conn: AsyncConnection) -> bool:
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(UpstreamConfigRow).values(**config_row(record)))
            except IntegrityError:
                return False
            if record.active:
                await _only_active(conn, record.name)
            return True

        return await self.db.transact(tx)

    async def update(self, record: UpstreamConfigRecord) -> bool:
        """Replace a config; False when it does not exist."""

        async def tx(conn: AsyncConnection) -> bool:
            row = config_row(record)
            del row["created_at"]
            result = await conn.execute(
                update(UpstreamConfigRow).where(UpstreamConfigRow.name == record.name).values(**row)
            )
            if result.rowcount and record.active:
                await _only_active(conn, record.name)
            return bool(result.rowcount)

        return await self.db.transact(tx)

    async def delete(self, name: str) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                delete(UpstreamConfigRow).where(UpstreamConfigRow.name == name)
            )
            return bool(result.rowcount)

        return await self.db.transact(tx)

    async def save_check(self, name: str, check: dict[str, Any]) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                update(UpstreamConfigRow)
                .where(UpstreamConfigRow.name == name)
                .values(last_check=dump_json(check))
            )

        await self.db.transact(tx)


async def _only_active(conn: AsyncConnection, name: str) -> None:
    await conn.execute(
        update(UpstreamConfigRow).where(UpstreamConfigRow.name != name).values(active=0)
    )
