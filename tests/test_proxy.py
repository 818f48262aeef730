"""The trusted-proxy rule: pure decisions first, then what a real loopback server makes of them."""

from __future__ import annotations

import pytest
from conftest import serving

from securechat.config import Config, ConfigError, load_config
from securechat.web.proxy import ClientView, client_view, parse_networks

LOCAL = parse_networks(["127.0.0.1", "10.0.0.0/8"])


def view(peer, headers, trusted=LOCAL, protocol="http", host="chat:5000"):
    return client_view(peer, protocol, host, headers, trusted)


def test_headers_from_an_untrusted_peer_are_ignored():
    headers = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"}
    assert view("192.168.1.9", headers) == ClientView("192.168.1.9", "http", "chat:5000")
    assert view("127.0.0.1", headers, trusted=()) == ClientView("127.0.0.1", "http", "chat:5000")


def test_a_trusted_proxy_is_believed():
    headers = {"X-Forwarded-For": "192.168.1.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.lan"}
    assert view("127.0.0.1", headers) == ClientView("192.168.1.9", "https", "chat.lan")


@pytest.mark.parametrize("xff, client", [
    ("1.2.3.4, 192.168.1.9", "192.168.1.9"),          # the client's own claim (left) is not believed
    ("192.168.1.9, 10.1.2.3", "192.168.1.9"),          # skip a second trusted proxy
    ("10.9.9.9, 10.1.2.3", "10.9.9.9"),               # all trusted: the left-most
    ("", "127.0.0.1"),                                  # no header: the proxy itself
    ("garbage, 10.1.2.3", "10.1.2.3"),                 # stop at garbage, keep the last checked hop
    ("::ffff:192.168.1.9", "192.168.1.9"),             # IPv4-mapped is the IPv4 address
    ("2001:db8::1", "2001:db8::1"),
])
def test_the_right_most_untrusted_address_is_the_client(xff, client):
    assert view("127.0.0.1", {"X-Forwarded-For": xff}).remote_ip == client


@pytest.mark.parametrize("proto, expected", [("https", "https"), ("http, https", "https"), ("HTTPS", "https"),
                                             ("gopher", "http"), ("", "http")])
def test_forwarded_proto(proto, expected):
    assert view("127.0.0.1", {"X-Forwarded-Proto": proto}).protocol == expected


def test_forwarded_host_must_look_like_a_host():
    assert view("127.0.0.1", {"X-Forwarded-Host": "a.example, chat.example:8443"}).host == "chat.example:8443"
    assert view("127.0.0.1", {"X-Forwarded-Host": "x'; script-src *"}).host == "chat:5000"


def test_config_key_and_variable():
    assert load_config(env={"SECURECHAT_PROXY_TRUSTED": "127.0.0.1, ::1"}).proxy_trusted == ("127.0.0.1", "::1")
    assert Config().proxy_trusted == ()
    with pytest.raises(ConfigError, match="proxy.trusted .*'localhost' is not an IP address"):
        load_config(env={"SECURECHAT_PROXY_TRUSTED": "localhost"})


# -- a real server on loopback ---------------------------------------------------------------

TOKEN = "proxy-test-admin-token-0123456789"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", admin_token=TOKEN,
                  proxy_trusted=("127.0.0.1",), max_connections_per_address=1, allowed_hosts=("chat.example",))


@pytest.mark.gen_test(timeout=30)
async def test_the_server_sees_the_forwarded_client(http_client, base_url, http_port):
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    page = await http_client.fetch(base_url + "/", headers={"X-Forwarded-Proto": "https",
                                                            "X-Forwarded-Host": "chat.example"})
    csp = page.headers["Content-Security-Policy"]
    assert "connect-src 'self' wss://chat.example" in csp
    assert page.headers["Strict-Transport-Security"]

    def ws(client_ip, origin):
        return HTTPRequest(f"ws://127.0.0.1:{http_port}/ws",
                           headers={"X-Forwarded-For": client_ip, "X-Forwarded-Host": "chat.example",
                                    "X-Forwarded-Proto": "https", "Origin": origin})

    # The origin check compares with the forwarded host, and each client gets its own limit of 1.
    first = await websocket_connect(ws("192.168.1.9", "https://chat.example"))
    second = await websocket_connect(ws("192.168.1.10", "https://chat.example"))
    with pytest.raises(Exception, match="429"):
        await websocket_connect(ws("192.168.1.9", "https://chat.example"))
    with pytest.raises(Exception, match="403"):
        await websocket_connect(ws("192.168.1.11", "https://evil.example"))
    first.close()
    second.close()


@pytest.mark.gen_test(timeout=30)
async def test_without_trusted_proxies_the_headers_are_ignored(tmp_path, io_loop):
    from tornado.httpclient import AsyncHTTPClient

    async with serving(Config(data_dir=tmp_path / "off", port=0, log_fsync="never")) as port:
        page = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/", headers={
            "X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example", "X-Forwarded-For": "1.2.3.4"})
        csp = page.headers["Content-Security-Policy"]
        assert f"connect-src 'self' ws://127.0.0.1:{port}" in csp and "Strict-Transport-Security" not in page.headers

@pytest.mark.gen_test(timeout=30)
async def test_a_forwarded_host_the_server_does_not_answer_to_is_refused(http_client, base_url, http_port):
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    # A proxy that passes on what the client asked for must not make the server believe it.
    page = await http_client.fetch(base_url + "/", headers={"X-Forwarded-Host": "rebind.attacker.example"},
                                   raise_error=False)
    assert page.code == 421
    with pytest.raises(Exception, match="421"):
        await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{http_port}/ws", headers={
            "X-Forwarded-Host": "rebind.attacker.example", "Origin": "http://rebind.attacker.example"}))
    # Without the header, the Host the proxy sent is what counts.
    assert (await http_client.fetch(base_url + "/")).code == 200


def test_forwarded_hosts_are_checked_against_the_allow_list():
    allow = {"chat.lan"}.__contains__
    assert client_view("127.0.0.1", "http", "127.0.0.1:5000", {"X-Forwarded-Host": "chat.lan"}, LOCAL, allow) \
        == ClientView("127.0.0.1", "http", "chat.lan")
    refused = client_view("127.0.0.1", "http", "127.0.0.1:5000", {"X-Forwarded-Host": "evil.example"}, LOCAL, allow)
    assert refused.host == "127.0.0.1:5000" and refused.host_refused


# -- [server] unix_socket: the proxy's own way in --------------------------------------------------


class UnixHTTPConnection:
    """One HTTP/1.1 request over a unix socket (what nginx's proxy_pass http://unix:... does)."""

    def __init__(self, path):
        import http.client
        import socket as socket_module

        class Connection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
                self.sock.settimeout(10)
                self.sock.connect(str(path))

        self.connection = Connection("localhost")

    def get(self, path: str, headers: dict) -> int:
        try:
            self.connection.request("GET", path, headers=headers)
            response = self.connection.getresponse()
            response.read()
            return response.status
        finally:
            self.connection.close()


def get_tcp(port: int, headers: dict) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def socket_dir():
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))  # a unix socket's name has 107 bytes at most
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_peers_on_the_unix_socket_are_the_proxy_and_tcp_peers_are_not(tmp_path, socket_dir):
    import os
    import stat

    from helpers import Server

    path = socket_dir / "http.sock"
    server = Server(tmp_path, SECURECHAT_UNIX_SOCKET=str(path), SECURECHAT_ALLOWED_HOSTS="chat.example.org")
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        forwarded = {"Host": "127.0.0.1", "X-Forwarded-Host": "chat.example.org"}
        rebinding = {"Host": "127.0.0.1", "X-Forwarded-Host": "rebind.attacker.example"}
        # Over the socket the forwarded host is believed: allowed -> 200, any other -> 421.
        assert UnixHTTPConnection(path).get("/", forwarded) == 200
        assert UnixHTTPConnection(path).get("/", rebinding) == 421
        # Over TCP, with no [proxy] trusted, nobody's X-Forwarded-* count: the Host decides.
        assert get_tcp(server.port, {**rebinding, "Host": f"127.0.0.1:{server.port}"}) == 200
    finally:
        server.stop()
    assert not path.exists()  # removed at shutdown


def test_a_stale_socket_is_replaced_and_anything_else_is_a_clear_error(tmp_path, socket_dir):
    import socket as socket_module
    import subprocess
    import sys
    from pathlib import Path

    from helpers import Server, clean_env

    path = socket_dir / "http.sock"
    stale = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens: an earlier run that was killed
    server = Server(tmp_path, SECURECHAT_UNIX_SOCKET=str(path))
    try:
        assert UnixHTTPConnection(path).get("/healthz", {"Host": "localhost"}) == 200
        # A second server on the same socket (another data dir) must not steal it.
        root = Path(__file__).resolve().parents[1]
        second = subprocess.run([sys.executable, str(root / "cli.py"), "serve", "--port", "0", "--data-dir",
                                 str(tmp_path / "other")], cwd=root, capture_output=True, text=True, timeout=30,
                                env=clean_env(SECURECHAT_UNIX_SOCKET=str(path), XDG_RUNTIME_DIR=str(server.runtime)))
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip() == f"securechat: server.unix_socket {path} is in use by another process"
    finally:
        server.stop()
    path.write_text("not a socket")
    refused = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py"), "serve", "--port",
                              "0", "--data-dir", str(tmp_path / "third")], capture_output=True, text=True, timeout=30,
                             env=clean_env(SECURECHAT_UNIX_SOCKET=str(path), XDG_RUNTIME_DIR=str(server.runtime)))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (f"securechat: server.unix_socket {path} exists and is not a socket; "
                                      "remove it or choose another path")
    assert path.read_text() == "not a socket"
