"""No token or API key ever appears in a log line, at any level, whatever happens."""

from __future__ import annotations

import logging

import pytest

from server.logs import quiet_libraries
from tests.fakes.hermes import FakeHermes
from tests.helpers import BOB_TOKEN, TOKEN, ServerFactory, Tab, TabFactory

UPSTREAM_KEY = "sk-upstream-key-4f1c9b2e7a"
ADMIN_TOKEN = "admin-token-8c3d5e1f"
NEW_KEY = "sk-created-key-2b7e9d4c1a"
WRONG = "wrong-token-6a5b4c3d"


async def test_no_secret_reaches_any_log_line(
    make_server: ServerFactory,
    hermes: FakeHermes,
    tab_factory: TabFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    quiet_libraries()  # as `python -m server` does
    hermes.api_key = UPSTREAM_KEY
    srv = await make_server(
        upstream_url=hermes.url,
        upstream_api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN,
        log_level="DEBUG",
    )
    tab = await tab_factory(srv)
    ack = await tab.call("run", {"session_id": "s", "input": "hi"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    await tab.close()
    refused = Tab(srv.url, WRONG)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do
        await refused.connect()
    await refused.close()
    for token in (TOKEN, BOB_TOKEN, WRONG):
        await srv.request("GET", "/api/sessions", token=token)
    body = {"name": "x", "kind": "hermes", "url": hermes.url, "api_key": NEW_KEY}
    status, _ = await srv.admin("POST", "", body, token=ADMIN_TOKEN)
    assert status == 201
    status, _ = await srv.admin("POST", "/x/test", token=ADMIN_TOKEN)
    assert status == 200  # fails upstream: the key is wrong for the fake
    status, _ = await srv.admin(
        "PATCH", "/x", {"api_key": "bad\nkey " + NEW_KEY}, token=ADMIN_TOKEN
    )
    assert status == 400
    hermes.api_key = "something-else"
    tab = await tab_factory(srv)
    ack = await tab.call("run", {"session_id": "s2", "input": "hi"})
    failed = await tab.wait_event("run.failed", run_id=ack["run_id"])
    assert failed["code"] == "upstream_auth"
    await tab.close()
    await srv.stop()  # its shutdown logs too
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was really on
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + str(record.args)
        for secret in (UPSTREAM_KEY, ADMIN_TOKEN, NEW_KEY, WRONG, TOKEN, BOB_TOKEN):
            assert secret not in text, f"{secret!r} in a {record.name} log line"
