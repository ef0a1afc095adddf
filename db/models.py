"""Table declarations. The Alembic migrations are the only schema source; these declarations
are what the store queries with, and a test checks they match the migrated schema.

Text that comes from outside (what upstreams and users write) is declared ``StoredText`` or
``StoredString``: the same column types, with what PostgreSQL refuses made storable there (a
NUL character becomes U+FFFD, which keeps every length and offset; a string longer than its
``VARCHAR`` is cut to fit). SQLite stores both as they are, and so do these types there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NUL, REPLACEMENT = "\x00", "\ufffd"


def storable(value: Any) -> Any:
    """``value`` with each NUL character (which PostgreSQL cannot store in text) as U+FFFD."""
    if isinstance(value, str) and NUL in value:
        return value.replace(NUL, REPLACEMENT)
    return value


class StoredText(TypeDecorator[str]):
    """``Text``; on PostgreSQL a NUL character is stored as U+FFFD."""

    impl = Text
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        inner = self.impl_instance.bind_processor(dialect)
        if dialect.name != "postgresql":
            return inner
        if inner is None:
            return storable
        return lambda value: inner(storable(value))


class StoredString(TypeDecorator[str]):
    """``String(length)``; on PostgreSQL a NUL character is stored as U+FFFD, and a longer
    string is cut to ``length`` characters (SQLite does not enforce lengths)."""

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        inner = self.impl_instance.bind_processor(dialect)
        if dialect.name != "postgresql":
            return inner
        length = self.length

        def fit(value: Any) -> Any:
            value = storable(value)
            if isinstance(value, str) and len(value) > length:
                value = value[:length]
            return value if inner is None else inner(value)

        return fit


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(StoredString(200))
    profile: Mapped[str] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(StoredString(200), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # The highest seq that may have been emitted: a reservation ceiling while the server runs,
    # the exact last seq after a clean shutdown.
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_session_id_id", "session_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    run_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(StoredText, default="")
    reasoning: Mapped[str] = mapped_column(StoredText, default="")
    tool_calls: Mapped[str | None] = mapped_column(StoredText, nullable=True)  # JSON array
    tool_call_id: Mapped[str | None] = mapped_column(StoredString(128), nullable=True)
    tool_name: Mapped[str | None] = mapped_column(StoredString(200), nullable=True)
    token_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    finish_reason: Mapped[str | None] = mapped_column(StoredString(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("session_id", "queue_id", name="uq_runs_session_queue_id"),
        Index("ix_runs_session_status_position", "session_id", "status", "position"),
        Index("ix_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    queue_id: Mapped[str] = mapped_column(String(128))
    input: Mapped[str] = mapped_column(StoredText)  # JSON: a string or content blocks
    model: Mapped[str | None] = mapped_column(StoredString(200), nullable=True)
    instructions: Mapped[str | None] = mapped_column(StoredText, nullable=True)
    profile: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    upstream_run_id: Mapped[str | None] = mapped_column(StoredString(200), nullable=True)
    usage: Mapped[str | None] = mapped_column(StoredText, nullable=True)  # JSON object
    error: Mapped[str | None] = mapped_column(StoredText, nullable=True)
    error_code: Mapped[str | None] = mapped_column(StoredString(64), nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(StoredString(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class MessageChunk(Base):
    """Text appended to a streaming message since its row was last written whole.

    Streaming text is stored append-only, so a flush writes only what is new; the chunks are
    folded into ``messages`` when the message ends (or at start-up after a crash).
    """

    __tablename__ = "message_chunks"
    __table_args__ = (Index("ix_message_chunks_message_id_id", "message_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    field: Mapped[str] = mapped_column(String(16))  # "content" | "reasoning"
    text: Mapped[str] = mapped_column(StoredText)


class UpstreamConfigRow(Base):
    """An upstream configuration (a profile) a connection selects with ``query.profile``.

    ``api_key`` is write-only through the API: it is never returned, logged or put in an error.
    ``sampling`` and ``overrides`` are JSON objects; ``last_check`` is the JSON result of the
    latest prepare-and-smoke check.
    """

    __tablename__ = "upstream_configs"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(2048))
    api_key: Mapped[str] = mapped_column(StoredText, default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    context_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sampling: Mapped[str] = mapped_column(StoredText, default="{}")
    overrides: Mapped[str] = mapped_column(StoredText, default="{}")
    draft_model: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[int] = mapped_column(Integer, default=0)
    last_check: Mapped[str | None] = mapped_column(StoredText, nullable=True)
    # digest of the CHATRUN_UPSTREAM_* settings it was last taken from (the default config)
    env_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ContextSnapshot(Base):
    """A summary of a session's history up to ``last_message_id``; the newest one is used."""

    __tablename__ = "context_snapshots"
    __table_args__ = (Index("ix_context_snapshots_session_id_id", "session_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    summary: Mapped[str] = mapped_column(StoredText)
    last_message_id: Mapped[int] = mapped_column(Integer)
    message_count: Mapped[int] = mapped_column(Integer)  # messages the summary covers, in all
    covered_tokens: Mapped[int] = mapped_column(Integer)  # their token count
    summary_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class Node(Base):
    """A server process sharing the database, with its lease (times on the database's clock)."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    address: Mapped[str] = mapped_column(String(256))


class SessionOwner(Base):
    """Which node runs a session's queue; ``fence`` grows on every change of owner and is
    kept when a node lets a session go (``node_id`` NULL), so it is never reused."""

    __tablename__ = "session_owners"

    session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    fence: Mapped[int] = mapped_column(BigInteger)
    since: Mapped[float] = mapped_column(Float)
