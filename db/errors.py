"""What the database layer raises for refusals a caller may pass on to a client (the server
translates them into its own error tree)."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's refusals."""


class NotOwner(StoreError):
    """The session belongs to another user."""


class NameTaken(StoreError):
    """A user with that name exists already."""


class UnsupportedDatabase(StoreError):
    """The database URL names a database or driver Chatrun does not support (or cannot be
    read at all)."""


class DatabaseUnavailable(StoreError):
    """The database does not answer (not running, wrong address, refused login, no such
    database)."""


class NotHeld(StoreError):
    """Several nodes: the write was for a session this node no longer holds (``db.fences``)."""
