"""DNS rebinding (a Host allow-list, 421 otherwise) and log floods (refusals logged quietly).

Rebinding: a page on evil.example whose name is re-pointed at 127.0.0.1 is same-origin with
what its browser then sends to securechat: `Host: evil.example`, `Origin: http://evil.example`.
Before the allow-list it got the page (200) and the WebSocket (101), since the origin check
only compared Origin with Host.
"""

from __future__ import annotations

import socket
import time

import pytest
from helpers import Server
from test_http_limits import read_all
from test_resource_abuse import in_thread

from securechat.config import Config, ConfigError, load_config
from securechat.web.hosts import HostPolicy

pytestmark = pytest.mark.gen_test(timeout=30)

REBIND = "rebind.attacker.example"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", allowed_hosts=("chat.example.org",),
                  allowed_origins=("https://other.example.net",))


def request(port: int, path: str, host: str, extra: str = "") -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode("latin-1"))
    return read_all(sock)


def websocket(port: int, host: str, origin: str) -> bytes:
    extra = (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    head = sock.recv(4096)
    sock.close()
    return head


@pytest.mark.parametrize("path", ["/", "/healthz", "/static/js/main.js", "/api/admin/status", "/no-such-page"])
async def test_a_rebinding_host_gets_421_everywhere(http_server, http_port, path):
    reply = await in_thread(request, http_port, path, f"{REBIND}:{http_port}")
    assert reply.startswith(b"HTTP/1.1 421"), reply[:60]
    assert b"<html" not in reply.lower() or b"421" in reply
    assert b"securechat" not in reply.split(b"\r\n\r\n", 1)[1]  # not the page


async def test_a_rebinding_host_cannot_open_the_websocket(http_server, http_port):
    head = await in_thread(websocket, http_port, f"{REBIND}:{http_port}", f"http://{REBIND}:{http_port}")
    assert head.startswith(b"HTTP/1.1 421") and b"101" not in head.split(b"\r\n")[0]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "app.localhost", "chat.example.org",
                                  "CHAT.example.org.", "other.example.net"])
async def test_the_servers_own_and_configured_names_are_served(http_server, http_port, host):
    assert (await in_thread(request, http_port, "/", f"{host}:{http_port}")).startswith(b"HTTP/1.1 200")


async def test_the_websocket_opens_under_an_allowed_host(http_server, http_port):
    head = await in_thread(websocket, http_port, f"localhost:{http_port}", f"http://localhost:{http_port}")
    assert head.startswith(b"HTTP/1.1 101")


def test_the_policy():
    policy = HostPolicy(["box", "box.local", "192.168.1.20", "fd00::2"])
    for host in ["box:5000", "BOX.LOCAL", "192.168.1.20:5000", "[fd00::2]:5000", "localhost", "127.0.0.5",
                 "[::1]:5000", "x.localhost"]:
        assert policy.allows(host), host
    for host in ["evil.example", "box.local.evil.example", "192.168.1.21", "", "box.local:5000:1", "a" * 400]:
        assert not policy.allows(host), host
    # The address a connection arrived on is one the server answers to (an IP needs no DNS).
    assert policy.allows("10.1.2.3:5000", local_address="10.1.2.3")
    assert policy.allows("10.1.2.3", local_address="::ffff:10.1.2.3")
    assert not policy.allows("10.1.2.4", local_address="10.1.2.3")


def test_allowed_hosts_config():
    config = load_config(env={"SECURECHAT_ALLOWED_HOSTS": "Chat.Example.org, [fd00::9]"})
    assert config.allowed_hosts == ("chat.example.org", "fd00::9")
    with pytest.raises(ConfigError, match="server.allowed_hosts"):
        load_config(env={"SECURECHAT_ALLOWED_HOSTS": "https://chat.example.org/"})


# -- log floods ------------------------------------------------------------------------------


def test_a_nul_in_a_static_path_is_a_400_not_a_500(tmp_path):
    server = Server(tmp_path)
    try:
        for path in ["/static/%00", "/static/js/main.js%00", "/static/..%00/x", "/static/js/%01main.js"]:
            assert request(server.port, path, "127.0.0.1").startswith(b"HTTP/1.1 400"), path
    finally:
        _, err = server.stop()
    assert "Traceback" not in err and "ERROR" not in err and "embedded null byte" not in err


def test_a_thousand_refused_requests_make_a_few_log_lines(tmp_path):
    server = Server(tmp_path)
    kinds = [
        lambda: request(server.port, "/static/%00", "127.0.0.1"),                      # 400, was a 500
        lambda: request(server.port, "/api/admin/status", "127.0.0.1",
                        "Authorization: Bearer wrong\r\n"),                             # 401
        lambda: request(server.port, "/", REBIND),                                     # 421
        lambda: request(server.port, "/static/%ff", "127.0.0.1"),                      # 400 from Tornado
        lambda: _malformed(server.port),                                               # bad request line
    ]
    started = time.monotonic()
    for i in range(1000):
        kinds[i % len(kinds)]()
    try:
        assert request(server.port, "/healthz", "127.0.0.1").startswith(b"HTTP/1.1 200")
    finally:
        _, err = server.stop()
    lines = [line for line in err.splitlines() if line.strip()]
    # One line per kind of refusal (and the shutdown line), however many requests.
    assert len(lines) <= 8, f"{len(lines)} lines for 1,000 refusals in {time.monotonic() - started:.1f}s: {lines[:6]}"
    assert any("421" in line and "rebind" in line for line in lines)


def _malformed(port: int) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n")
    return read_all(sock)
