"""``python -m server users add|list|revoke``: manage users and their tokens."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import secrets
import sys

from db.errors import NameTaken
from db.store import Store
from server.app import open_store
from server.errors import ConfigError, StartFailed
from server.settings import Settings

USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server users", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user and print its new token (shown once)")
    add.add_argument("name")
    sub.add_parser("list", help="list users")
    revoke = sub.add_parser("revoke", help="revoke a user's token")
    revoke.add_argument("name")
    return p


async def run(settings: Settings, argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if settings.resolved_database_url.startswith("sqlite") and not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.resolved_database_url)
    await open_store(store)
    try:
        if args.command == "add":
            if not USER_NAME.fullmatch(args.name):
                print("a user name is 1-64 characters of A-Z a-z 0-9 . _ -")
                return 2
            token = secrets.token_hex(32)
            await store.users.add(args.name, token)
            print(f"user {args.name} created; token (shown only now):\n{token}")
        elif args.command == "list":
            for name, created, revoked in await store.users.all():
                when = datetime.datetime.fromtimestamp(created).isoformat(timespec="seconds")
                state = "revoked" if revoked else "active"
                print(f"{name}\t{state}\tcreated {when}")
        elif args.command == "revoke":
            if not await store.users.revoke(args.name):
                print(f"no active user called {args.name!r}")
                return 1
            print(f"user {args.name} revoked")
    except NameTaken as exc:
        print(exc)
        return 1
    finally:
        await store.close()
    return 0


def main(settings: Settings, argv: list[str]) -> int:
    try:
        return asyncio.run(run(settings, argv))
    except (ConfigError, StartFailed) as exc:
        print(f"chatrun: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
