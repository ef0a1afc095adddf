"""The project's declarations agree with each other: docs/settings.md ↔ Settings, models ↔
migrations, the README's links ↔ the docs."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from db.models import Base
from db.store import Store
from server.errors import ConfigError
from server.settings import Settings, setting_docs
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, ServerFactory, Tab, free_port, until_async

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_SETTINGS = [
    "CHATRUN_HOST",
    "CHATRUN_PORT",
    "CHATRUN_DATA_DIR",
    "CHATRUN_DATABASE_URL",
    "CHATRUN_AUTH_TOKEN",
    "CHATRUN_AUTH_TOKENS",
    "CHATRUN_AUTH_DISABLED",
    "CHATRUN_UPSTREAM_KIND",
    "CHATRUN_UPSTREAM_URL",
    "CHATRUN_UPSTREAM_API_KEY",
    "CHATRUN_UPSTREAM_MODEL",
    "CHATRUN_FLUSH_INTERVAL_MS",
]


def documented_settings() -> dict[str, str]:
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(CHATRUN_[A-Z_]+)` \| `([^`]*)` \|", text, flags=re.M)
    return dict(rows)


def test_the_settings_page_lists_every_setting_with_its_default() -> None:
    documented = documented_settings()
    declared = {name: default for name, default, _ in setting_docs()}
    assert documented == declared


def test_the_readme_links_to_documents_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs|bench)/[^)]+)\)", readme)
    assert links and all((ROOT / link).is_file() for link in links), links


def test_protocol_settings_exist_with_protocol_defaults() -> None:
    declared = {name: default for name, default, _ in setting_docs()}
    for name in PROTOCOL_SETTINGS:
        assert name in declared
    assert declared["CHATRUN_HOST"] == "127.0.0.1" and declared["CHATRUN_PORT"] == "8648"
    assert declared["CHATRUN_FLUSH_INTERVAL_MS"] == "250"
    assert declared["CHATRUN_UPSTREAM_KIND"] == "hermes"
    assert declared["CHATRUN_UPSTREAM_URL"] == "http://127.0.0.1:8642"


def test_settings_from_env_parse_and_reject_bad_values() -> None:
    s = Settings.from_env(
        {
            "CHATRUN_PORT": "9000",
            "CHATRUN_AUTH_DISABLED": "1",
            "CHATRUN_DATA_DIR": "/tmp/x",
            "UNRELATED": "y",
        }
    )
    assert s.port == 9000 and s.auth_disabled is True and str(s.data_dir) == "/tmp/x"
    assert s.resolved_database_url == "sqlite+aiosqlite:////tmp/x/chatrun.db"
    for env in (
        {"CHATRUN_PORT": "abc"},
        {"CHATRUN_UPSTREAM_KIND": "nope"},
        {"CHATRUN_AUTH_DISABLED": "maybe"},
        {"CHATRUN_AUTH_TOKENS": "alice"},
        {"CHATRUN_FLUSH_INTERVAL_MS": "0"},
        {"CHATRUN_AUTH_TOKENS": "a=1,a=2"},
        {"CHATRUN_NODE_LEASE_S": "0.5"},
        {"CHATRUN_NODE_ID": "a b"},
        {"CHATRUN_REDIS_PREFIX": ""},
        {"CHATRUN_REDIS_URL": "http://127.0.0.1:6379"},
    ):
        with pytest.raises(ConfigError):
            Settings.from_env(env)


def test_several_nodes_need_postgresql_and_say_so() -> None:
    with pytest.raises(ConfigError, match="SQLite has a single writer"):
        Settings.from_env({"CHATRUN_REDIS_URL": "redis://127.0.0.1:6379/0"})
    s = Settings.from_env(
        {
            "CHATRUN_REDIS_URL": "redis://127.0.0.1:6379/0",
            "CHATRUN_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1/chatrun",
            "CHATRUN_NODE_ID": "node-a.1",
        }
    )
    assert s.node_id == "node-a.1" and s.node_lease_s == 10.0


def test_only_sqlite_and_postgresql_are_accepted_and_a_refusal_says_what_to_set() -> None:
    for url, says in (
        ("mysql+aiomysql://u@h/db", "only SQLite and PostgreSQL"),
        ("postgresql://u@h/db", "use the `postgresql+asyncpg` driver"),
        ("postgresql+psycopg://u@h/db", "use the `postgresql+asyncpg` driver"),
        ("sqlite:///x.db", "use the `sqlite+aiosqlite` driver"),
        ("not a url", "cannot read"),
        ("postgresql+asyncpg://u@h", "names no database"),
    ):
        with pytest.raises(ConfigError, match=re.escape(says)):
            Settings.from_env({"CHATRUN_DATABASE_URL": url})
    url = "postgresql+asyncpg://chatrun@db.internal:5433/chatrun"
    assert Settings.from_env({"CHATRUN_DATABASE_URL": url}).resolved_database_url == url


def test_a_database_that_does_not_answer_stops_the_start_with_one_line(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://chatrun@127.0.0.1:{free_port()}/chatrun"
    env = {
        **os.environ,
        "CHATRUN_DATABASE_URL": url,
        "CHATRUN_DATA_DIR": str(tmp_path),
        "CHATRUN_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("chatrun:")]
    assert line.startswith(f"chatrun: cannot connect to the database {url}: ")
    assert line.endswith("(CHATRUN_DATABASE_URL)")


async def test_models_match_the_migrated_schema(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/schema.db")
    await store.open()

    def diff(conn: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()


async def test_healthz_reports_database_upstream_and_runs(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    body = await server.health()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["upstreams"]["default"]["kind"] == "hermes"
    assert body["upstreams"]["default"]["state"] in ("ready", "unreachable")
    assert body["active_runs"] == 0 and body["sessions_in_memory"] == 0
    assert isinstance(body["socket_shortcuts"], bool)
    gate = asyncio.Event()

    async def held(run: FakeRun) -> None:
        await run.delta("working")
        await gate.wait()
        await run.complete()

    hermes.script = held
    ack = await tab.call("run", {"session_id": "h", "input": "hi"})
    await tab.wait_event("message.delta", run_id=ack["run_id"])
    body = await server.health()
    assert body["active_runs"] == 1 and body["sessions_in_memory"] == 1
    gate.set()
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    await until_async(lambda: _no_active_runs(server), what="/healthz kept counting a finished run")


async def _no_active_runs(server: ChatrunServer) -> bool:
    return bool((await server.health())["active_runs"] == 0)


async def test_generated_token_is_stored_in_the_data_dir(make_server: ServerFactory) -> None:
    srv = await make_server(upstream_url="http://127.0.0.1:1", auth_tokens="")
    token_file = srv.settings.data_dir / "auth_token"
    token = token_file.read_text().strip()
    assert len(token) == 64 and oct(token_file.stat().st_mode & 0o777) == "0o600"
    status, _ = await srv.request("GET", "/api/me", token=token)
    assert status == 200
    # the same token is kept across restarts
    await srv.restart()
    assert token_file.read_text().strip() == token
    status, _ = await srv.request("GET", "/api/me", token=token)
    assert status == 200


async def test_metrics_are_exposed_in_prometheus_format(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    ack = await tab.call("run", {"session_id": "m", "input": "hi"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    await tab.call("resume", {"session_id": "m"})
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
    values = await server.metrics()
    assert values["chatrun_connected_sockets"] == 1
    assert values['chatrun_runs_total{outcome="completed"}'] == 1
    assert values["chatrun_deltas_relayed_total"] == 6
    assert values['chatrun_resumes_total{mode="snapshot"}'] == 1
    assert values["chatrun_upstream_time_to_first_token_seconds_count"] == 1
    assert values["chatrun_relay_overhead_seconds_count"] >= 1
    assert values["chatrun_event_loop_lag_seconds_count"] >= 0
    assert values['chatrun_upstream_up{profile="default"}'] == 1


async def test_metrics_token_protects_metrics(server: ChatrunServer) -> None:
    await server.restart(metrics_token="m-secret")
    status, _ = await server.request("GET", "/metrics")
    assert status == 401
    status, _ = await server.request("GET", "/metrics", token="m-secret")
    assert status == 200
