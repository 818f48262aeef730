"""The /api/admin/* handlers on a real loopback server, with real protocol clients."""

from __future__ import annotations

import json

import pytest
from conftest import serving, settle

from securechat.config import Config
from securechat.storage.ciphertext_log import LogRecord, read_log

pytestmark = pytest.mark.gen_test(timeout=30)

TOKEN = "test-admin-token-0123456789abcdef"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", log_keep=5, admin_token=TOKEN)


async def call(http_client, base_url, path, token=TOKEN, method="GET", body=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = await http_client.fetch(base_url + path, method=method, headers=headers,
                                       body=body if method == "POST" else None, raise_error=False)
    return response.code, json.loads(response.body or b"null"), response.headers


@pytest.mark.parametrize("path, method", [
    ("/api/admin/status", "GET"), ("/api/admin/roster", "GET"), ("/api/admin/logs/rotate", "POST"),
])
@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
async def test_every_call_needs_the_token(http_client, base_url, path, method, token):
    code, body, headers = await call(http_client, base_url, path, token=token, method=method, body="")
    assert code == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "admin token" in body["error"]


async def test_no_configured_token_refuses_everyone(tmp_path, io_loop):
    from tornado.httpclient import AsyncHTTPClient

    async with serving(Config(data_dir=tmp_path / "other", port=0, log_fsync="never")) as port:
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/admin/status", raise_error=False,
                                                 headers={"Authorization": "Bearer None"})
        assert response.code == 401


async def test_status(http_client, base_url, connect):
    await connect("alice")
    code, body, headers = await call(http_client, base_url, "/api/admin/status")
    assert code == 200 and headers["Cache-Control"] == "no-store"
    assert body["connections"] == 1 and body["participants"] == 1 and body["room"] == "lobby"
    assert body["tls"] is False and body["log_file"].endswith("ciphertext.jsonl") and body["log_bytes"] > 0
    assert body["uptime"] >= 0 and body["version"]


async def test_roster_lists_participants(http_client, base_url, connect):
    alice = await connect("alice")
    bob = await connect("bob")
    await settle(alice, bob, members=2)
    code, body, _ = await call(http_client, base_url, "/api/admin/roster")
    assert code == 200
    people = {p["username"]: p for p in body["participants"]}
    assert set(people) == {"alice", "bob"}
    assert people["alice"]["fingerprint"] == alice.fingerprint and people["alice"]["sid"] == alice.sid
    assert people["bob"]["remote"] == "127.0.0.1" and people["bob"]["joined"] >= people["alice"]["joined"]


async def test_rotate_now_and_with_keep(http_client, base_url, connect, config):
    code, body, _ = await call(http_client, base_url, "/api/admin/logs/rotate", method="POST", body="")
    assert (code, body["rotated"]) == (200, None)  # nothing logged yet
    for n in range(3):
        await connect(f"user{n}")
        code, body, _ = await call(http_client, base_url, "/api/admin/logs/rotate", method="POST", body="")
        assert code == 200 and (config.data_dir / body["rotated"]).is_file() and body["keep"] == 5
    assert len(list(config.data_dir.glob("*.gz"))) == 3
    await connect("late")
    code, body, _ = await call(http_client, base_url, "/api/admin/logs/rotate?keep=1", method="POST", body="")
    assert code == 200 and body["keep"] == 1
    assert [p.name for p in config.data_dir.glob("*.gz")] == [body["rotated"]]
    code, body, _ = await call(http_client, base_url, "/api/admin/logs/rotate", method="POST",
                               body=json.dumps({"keep": 2}))
    assert (code, body["keep"]) == (200, 2)
    events = [r.record["event"] for r in read_log(config.data_dir) if isinstance(r, LogRecord)]
    assert events.count("join") >= 1


@pytest.mark.parametrize("query, body", [("?keep=0", ""), ("?keep=two", ""), ("", "[1]"), ("", '{"keep": -3}')])
async def test_rotate_rejects_a_bad_keep(http_client, base_url, query, body):
    code, answer, _ = await call(http_client, base_url, "/api/admin/logs/rotate" + query, method="POST", body=body)
    assert code == 400 and answer["error"]
