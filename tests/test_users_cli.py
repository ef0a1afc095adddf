"""Users managed from the command line: tokens stored hashed, revocation takes effect."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import socketio

from tests.fakes.hermes import FakeHermes
from tests.helpers import ServerFactory, Tab, TabFactory

ROOT = Path(__file__).resolve().parent.parent


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATRUN_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "server", "users", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_users_add_list_revoke(
    tmp_path: Path, hermes: FakeHermes, make_server: ServerFactory, tab_factory: TabFactory
) -> None:
    data_dir = tmp_path / "data"
    added = cli(data_dir, "add", "carol")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert len(token) == 64
    assert cli(data_dir, "add", "carol").returncode == 1  # the name is taken
    assert cli(data_dir, "add", "bad name").returncode == 2
    listing = cli(data_dir, "list").stdout
    assert "carol\tactive" in listing
    db = sqlite3.connect(data_dir / "chatrun.db")
    stored = [r[0] for r in db.execute("SELECT token_hash FROM users")]
    db.close()
    assert token not in stored and all(len(h) == 64 for h in stored)

    server = await make_server(upstream_url=hermes.url, data_dir=data_dir)
    tab = await tab_factory(server, token=token)
    ack = await tab.call("run", {"session_id": "carols", "input": "hi"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    await tab.close()
    assert cli(data_dir, "revoke", "carol").returncode == 0
    assert cli(data_dir, "revoke", "carol").returncode == 1
    assert "carol\trevoked" in cli(data_dir, "list").stdout
    refused = Tab(server.url, token=token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect()
    await refused.close()
