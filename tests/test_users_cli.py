"""Users managed from the command line: tokens stored hashed, revocation takes effect (in the
database the server uses: SQLite, or PostgreSQL with ``CHATRUN_TEST_DATABASE=postgres``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import socketio

from tests.databases import Databases
from tests.fakes.hermes import FakeHermes
from tests.helpers import ServerFactory, Tab, TabFactory

ROOT = Path(__file__).resolve().parent.parent


def cli(database: dict[str, str], data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **database, "CHATRUN_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "server", "users", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_users_add_list_revoke(
    tmp_path: Path,
    hermes: FakeHermes,
    make_server: ServerFactory,
    tab_factory: TabFactory,
    databases: Databases,
) -> None:
    data_dir = tmp_path / "data"
    database = await databases.env(data_dir)
    added = cli(database, data_dir, "add", "carol")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert len(token) == 64
    assert cli(database, data_dir, "add", "carol").returncode == 1  # the name is taken
    assert cli(database, data_dir, "add", "bad name").returncode == 2
    listing = cli(database, data_dir, "list").stdout
    assert "carol\tactive" in listing
    db = await databases.stored(data_dir)
    stored = [r[0] for r in db.query("SELECT token_hash FROM users")]
    assert token not in stored and all(len(h) == 64 for h in stored)

    server = await make_server(upstream_url=hermes.url, data_dir=data_dir)
    tab = await tab_factory(server, token=token)
    ack = await tab.call("run", {"session_id": "carols", "input": "hi"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    await tab.close()
    assert cli(database, data_dir, "revoke", "carol").returncode == 0
    assert cli(database, data_dir, "revoke", "carol").returncode == 1
    assert "carol\trevoked" in cli(database, data_dir, "list").stdout
    refused = Tab(server.url, token=token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect()
    await refused.close()
