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
