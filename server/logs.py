"""Logging set-up: one line per record, and no library line that could carry a secret."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Keep library loggers that would print secrets or noise at DEBUG to INFO and above:
    the database driver logs each statement with its parameters (API keys of upstream
    configs), httpx one line per upstream request."""
    level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, level))
    logging.getLogger("httpx").setLevel(max(logging.WARNING, level))
    logging.getLogger("httpcore").setLevel(max(logging.INFO, level))


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries()
