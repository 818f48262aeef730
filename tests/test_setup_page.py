"""/setup and the canonical-host redirect over real HTTP: what a phone downloads, with which
content type, under which security headers, and which page loads move to the canonical host."""

from __future__ import annotations

import ipaddress
import plistlib
import re

import pytest
from cryptography import x509
from tornado.httpclient import HTTPClientError

from securechat import qr, tls
from securechat.web.app import make_app
from securechat.web.canonical import CanonicalHost, split_host
from securechat.web.http_security import content_security_policy
from securechat.web.setup import fingerprint_lines, platform

pytestmark = pytest.mark.gen_test(timeout=30)

LAN = [ipaddress.ip_address("192.168.1.20"), ipaddress.ip_address("fd00::2")]
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Version/18.1 Mobile Safari/604.1"


@pytest.fixture
def cert(tmp_path):
    return tls.ensure_local_ca(tmp_path / "data", hostname="box", addresses=LAN)


@pytest.fixture
def canonical():
    return CanonicalHost.choose("192.168.1.20", ["box", "box.local", "192.168.1.20", "fd00::2", "localhost",
                                                  "127.0.0.1", "::1"])


@pytest.fixture
def app(config, ciphertext_log, cert, canonical):
    return make_app(config, ciphertext_log, canonical=canonical, local_ca=cert.ca.public())


async def fetch(http_client, base_url, path, host=None, **kwargs):
    headers = {"Host": host} if host else {}
    headers.update(kwargs.pop("headers", {}))
    return await http_client.fetch(base_url + path, headers=headers, follow_redirects=False,
                                   raise_error=False, **kwargs)


async def test_setup_page_shows_the_fingerprint_downloads_and_steps(http_client, base_url, cert):
    response = await fetch(http_client, base_url, "/setup", headers={"User-Agent": IPHONE})
    assert response.code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    for line in fingerprint_lines(cert.ca.fingerprint):
        assert f"<span>{line}</span>" in page
    assert "".join(fingerprint_lines(cert.ca.fingerprint)).replace(":", "") == cert.ca.fingerprint.replace(":", "")
    assert 'href="/setup/securechat.mobileconfig"' in page and 'href="/setup/securechat-ca.crt"' in page
    assert "Settings &gt; General &gt; About &gt; Certificate Trust Settings" in page
    assert "securechat local CA on box" in page
    # The iPhone's own steps are open; every platform is on the page.
    assert re.search(r"<details open>\s*<summary>iPhone and iPad</summary>", page)
    for summary in ("Android", "Mac", "Windows", "Linux (Chrome, Chromium)", "Firefox (it keeps its own list)"):
        assert f"<summary>{summary}</summary>" in page
    # Exactly what the CA permits.
    for value in ("localhost", "local", "lan", "home.arpa", "internal", "10.0.0.0/8", "172.16.0.0/12",
                  "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7", "fe80::/10"):
        assert f"<code>{value}</code>" in page
    # Windows only shows SHA-1: the thumbprint to compare.
    assert cert.ca.sha1_fingerprint.replace(":", "").lower() in page


async def test_setup_page_follows_the_security_policy(http_client, base_url):
    response = await fetch(http_client, base_url, "/setup")
    page = response.body.decode()
    host = base_url.split("//")[1]
    assert response.headers["Content-Security-Policy"] == content_security_policy(host, secure=False)
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in page and " style=" not in page and "<style" not in page
    stylesheet = re.search(r'<link rel="stylesheet" href="(/static/css/setup\.css\?v=[^"]+)" integrity="(sha384-[^"]+)"',
                           page)
    assert stylesheet, "the stylesheet is versioned and pinned with SRI"
    css = await fetch(http_client, base_url, stylesheet.group(1).replace("&amp;", "&"))
    assert css.code == 200 and b".setup" in css.body


async def test_qr_code_opens_the_setup_page_on_the_lan_address_not_localhost(http_client, base_url):
    for host in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000"):
        page = (await fetch(http_client, base_url, "/setup", host=host)).body.decode()
        assert "<code>http://192.168.1.20:5000/setup</code>" in page
        assert qr.svg("http://192.168.1.20:5000/setup", "QR code of http://192.168.1.20:5000/setup") in page
    page = (await fetch(http_client, base_url, "/setup", host="192.168.1.20:5000")).body.decode()
    assert "<code>http://192.168.1.20:5000/setup</code>" in page
    assert 'href="http://192.168.1.20:5000/"' in page  # Open the chat


async def test_the_certificate_download_is_der_as_a_ca_cert(http_client, base_url, cert):
    response = await fetch(http_client, base_url, "/setup/securechat-ca.crt")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-x509-ca-cert"
    assert response.headers["Content-Disposition"] == 'attachment; filename="securechat-ca.crt"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert x509.load_der_x509_certificate(response.body) == cert.ca.cert
    head = await fetch(http_client, base_url, "/setup/securechat-ca.crt", method="HEAD")
    assert head.code == 200 and int(head.headers["Content-Length"]) == len(response.body)


async def test_the_profile_download_is_an_apple_configuration_profile(http_client, base_url, cert):
    response = await fetch(http_client, base_url, "/setup/securechat.mobileconfig")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-apple-aspen-config"
    profile = plistlib.loads(response.body)
    assert profile["PayloadContent"][0]["PayloadType"] == "com.apple.security.root"
    assert profile["PayloadContent"][0]["PayloadContent"] == cert.ca.der()


async def test_no_private_key_is_reachable(http_client, base_url, cert, app):
    assert app.settings["local_ca"].key is None
    for path in ("/setup/ca-key.pem", "/setup/key.pem", "/setup/../tls/ca-key.pem", "/static/../data/tls/ca-key.pem"):
        response = await fetch(http_client, base_url, path)
        assert response.code in (403, 404), path
        assert b"PRIVATE KEY" not in response.body


# -- the canonical host -----------------------------------------------------------------------


@pytest.mark.parametrize("host, path, location", [
    ("box.local:5000", "/", "http://192.168.1.20:5000/"),
    ("[fd00::2]:5000", "/", "http://192.168.1.20:5000/"),
    ("fd00::2", "/", "http://192.168.1.20/"),
    ("BOX:5000", "/setup", "http://192.168.1.20:5000/setup"),
    ("box.local:5000", "/?room=x", "http://192.168.1.20:5000/?room=x"),
])
async def test_other_lan_names_redirect_to_the_canonical_host(http_client, base_url, host, path, location):
    response = await fetch(http_client, base_url, path, host=host)
    assert response.code == 302 and response.headers["Location"] == location
    assert response.headers["Cache-Control"] == "no-store"
    assert "Content-Security-Policy" in response.headers


@pytest.mark.parametrize("host", ["192.168.1.20:5000", "127.0.0.1:5000", "localhost:5000", "[::1]:5000"])
async def test_loopback_and_the_canonical_host_are_served(http_client, base_url, host):
    response = await fetch(http_client, base_url, "/", host=host)
    assert response.code == 200


@pytest.mark.parametrize("host", ["chat.example.org", "unknown.lan:5000"])
async def test_foreign_names_are_neither_served_nor_redirected(http_client, base_url, host):
    # Not this machine's: 421 (DNS rebinding defence, web/hosts.py), not a redirect to it.
    response = await fetch(http_client, base_url, "/", host=host)
    assert response.code == 421


@pytest.mark.parametrize("path", ["/healthz", "/static/css/setup.css", "/setup/securechat-ca.crt"])
async def test_only_page_loads_move(http_client, base_url, path):
    response = await fetch(http_client, base_url, path, host="box.local:5000")
    assert response.code == 200


async def test_the_websocket_is_never_redirected(http_client, base_url):
    response = await fetch(http_client, base_url, "/ws", host="box.local:5000",
                           headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert response.code != 302


def test_the_listen_address_and_loopback_are_never_aliases():
    canonical = CanonicalHost.choose("192.168.1.20", ["box.local", "10.0.0.5", "127.0.0.1", "localhost", "::1",
                                                      "app.localhost"], listen_host="10.0.0.5")
    assert canonical.aliases == {"box.local"}
    assert canonical.redirect("GET", "10.0.0.5:5000", "/", "", "https") is None
    assert canonical.redirect("POST", "box.local:5000", "/", "", "https") is None
    assert canonical.redirect("GET", "box.local:5000", "/", "", "https") == "https://192.168.1.20:5000/"
    v6 = CanonicalHost.choose("FD00::2", ["box.local"])
    assert v6.redirect("HEAD", "box.local", "/setup", "", "https") == "https://[fd00::2]/setup"


@pytest.mark.parametrize("header, expected", [
    ("box.local:5000", ("box.local", "5000")), ("[FD00::2]:443", ("fd00::2", "443")), ("fd00::2", ("fd00::2", None)),
    ("Box.Local.", ("box.local", None)), ("[::1]", ("::1", None)), ("host:notaport", ("host", None)),
])
def test_split_host(header, expected):
    assert split_host(header) == expected


@pytest.mark.parametrize("agent, expected", [
    (IPHONE, "ios"), ("Mozilla/5.0 (Linux; Android 15; Pixel 9) Chrome/131.0 Mobile Safari/537.36", "android"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Edg/131.0", "windows"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) Safari/605.1.15", "mac"),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0", "linux"), ("curl/8.0", None),
])
def test_platform_from_user_agent(agent, expected):
    assert platform(agent) == expected


async def test_the_join_page_links_to_setup_only_over_https(http_client, base_url):
    # Plain http here: no certificate was involved, so there is nothing to set up.
    page = (await fetch(http_client, base_url, "/")).body.decode()
    assert 'href="/setup"' not in page


class TestWithoutTheLocalCA:
    @pytest.fixture
    def app(self, config, ciphertext_log):
        return make_app(config, ciphertext_log)

    async def test_no_setup_page_and_no_redirect(self, http_client, base_url):
        with pytest.raises(HTTPClientError) as info:
            await http_client.fetch(base_url + "/setup")
        assert info.value.code == 404
        response = await fetch(http_client, base_url, "/", host="localhost:5000")
        assert response.code == 200
