"""Shared fixtures: a real server on a loopback port (pytest-tornado) and real protocol clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from securechat.client import ChatClient
from securechat.config import Config
from securechat.web.app import make_app, open_blobs, open_log

# pytest-tornado's io_loop fixture saves asyncio.get_event_loop() to restore it later; with no
# loop set yet, that call creates one nobody closes, and its garbage collection later fails an
# unrelated test with "unclosed event loop". Saying "no loop" up front makes the call a no-op.
asyncio.set_event_loop(None)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "v2.json").read_text())


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never")


@pytest.fixture
def ciphertext_log(config):
    log = open_log(config)
    yield log
    log.close()


@pytest.fixture
def blob_store(config):
    store = open_blobs(config)
    yield store
    if store is not None:
        store.close()


@pytest.fixture
def app(config, ciphertext_log, blob_store):
    return make_app(config, ciphertext_log, blob_store)


@pytest.fixture
def http_server(request, io_loop, _unused_port, app):
    """pytest-tornado's server fixture, but the server `securechat serve` runs: same limits."""
    from securechat.server import http_server as build

    server = build(app, app.settings["hub"].config)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)


@pytest.fixture
def hub(app):
    return app.settings["hub"]


@pytest.fixture
def ws_url(http_server, http_port) -> str:
    return f"ws://127.0.0.1:{http_port}/ws"


@pytest.fixture
def connect(ws_url):
    """`await connect("alice")` joins a new client; all are closed after the test."""
    clients: list[ChatClient] = []

    async def _connect(username: str, **kwargs) -> ChatClient:
        client = ChatClient(ws_url, username, **kwargs)
        clients.append(client)
        await client.connect()
        return client

    yield _connect
    for client in clients:
        client.close()


async def settle(*clients: ChatClient, members: int) -> None:
    """Wait until every client's roster has `members` entries (joined/left frames arrived)."""
    for client in clients:
        for _ in range(200):
            if len(client.members) == members:
                break
            try:
                await client.recv(timeout=0.05)
            except asyncio.TimeoutError:
                pass
        assert len(client.members) == members, f"{client.username} sees {len(client.members)} members"


@pytest.fixture(autouse=True)
def _fixed_terminal(monkeypatch):
    """Output checks must not depend on the caller's terminal width (CI logs set COLUMNS)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@contextlib.asynccontextmanager
async def serving(config: Config):
    """Another server on a loopback port, for a test that needs a config its module's does not."""
    from tornado.testing import bind_unused_port

    from securechat.server import http_server

    log, blobs = open_log(config), open_blobs(config)
    server = http_server(make_app(config, log, blobs), config)
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    try:
        yield port
    finally:
        server.stop()
        if blobs is not None:
            blobs.close()
        log.close()


@pytest.fixture
def server(tmp_path):
    """Start `securechat serve` subprocesses (helpers.Server); all are stopped at the end."""
    from helpers import Server

    started = []

    def _start(*args, **kwargs) -> Server:
        started.append(Server(tmp_path, *args, **kwargs))
        return started[-1]

    yield _start
    for s in started:
        s.stop()
