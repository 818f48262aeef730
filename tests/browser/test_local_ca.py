"""The local CA in a real Chromium that trusts it the way a person would set it up on Linux:
the CA exported with `securechat tls ca export`, imported into the NSS database with the
`certutil` line the /setup page shows. No `ignore_https_errors` anywhere in this file.

It also proves, rather than assumes, that Chromium enforces the CA's name constraints for a
root imported into NSS: a certificate for example.com signed with our CA key is refused, while
the same kind of certificate from an unconstrained CA imported the same way is accepted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from forge import forge, unconstrained_ca, write_pair
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect
from qrscan import decode

from securechat import tls

from .conftest import TIMEOUT_MS
from .harness import ServerThread, chromium_path, join, launch, messages, send

ROOT = Path(__file__).resolve().parents[2]
MAPPED = ("example.com", "chat.lan", "control.example.com")


def certutil(*args: str) -> None:
    subprocess.run(["certutil", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def trusting(tmp_path_factory):
    """A Chromium whose NSS store trusts our local CA and, as a control, an unconstrained CA."""
    try:
        chromium_path()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    home = tmp_path_factory.mktemp("nss-home")
    data = tmp_path_factory.mktemp("ca") / "data"
    status = tls.ensure_local_ca(data, addresses=[])
    exported = home / "Downloads" / "securechat-ca.crt"
    exported.parent.mkdir()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "tls", "ca", "export", "--format", "der", str(exported),
                    "--data-dir", str(data)], check=True, capture_output=True, timeout=30)
    assert exported.read_bytes() == status.ca.der()  # the same bytes /setup serves
    control_cert, control_key = unconstrained_ca()
    control_pem = home / "control.pem"
    control_pem.write_bytes(control_cert.public_bytes(serialization.Encoding.PEM))
    nssdb = f"sql:{home}/.pki/nssdb"
    (home / ".pki" / "nssdb").mkdir(parents=True)
    certutil("-d", nssdb, "-N", "--empty-password")
    certutil("-d", nssdb, "-A", "-t", "C,,", "-n", "securechat", "-i", str(exported))  # as /setup says
    certutil("-d", nssdb, "-A", "-t", "C,,", "-n", "control", "-i", str(control_pem))
    from playwright.sync_api import sync_playwright

    rules = ",".join(f"MAP {name} 127.0.0.1" for name in MAPPED)
    with sync_playwright() as playwright:
        browser = launch(playwright, config_home=home, extra_args=[f"--host-resolver-rules={rules}"])
        yield SimpleNamespace(browser=browser, data=data, status=status, control=(control_cert, control_key),
                              ca_key=serialization.load_pem_private_key(
                                  (data / "tls" / "ca-key.pem").read_bytes(), None))
        browser.close()


@pytest.fixture
def contexts(trusting):
    opened = []

    def new():
        context = trusting.browser.new_context()  # never ignore_https_errors
        context.set_default_timeout(TIMEOUT_MS)
        opened.append(context)
        return context

    yield new
    for context in opened:
        context.close()


def serve(data: Path, status: tls.CertStatus, port: int = 0) -> ServerThread:
    context = tls.server_ssl_context(status.cert_path, status.key_path)
    return ServerThread(data, port=port, ssl_context=context, hostname="localhost",
                        app_options={"local_ca": status.ca.public()}).start()


def chat_pair(contexts, server: ServerThread, text: str):
    sockets = []
    pages = []
    for name in ("alice", "bob"):
        page = contexts().new_page()
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(server.url)
        page.wait_for_selector("html[data-ready=true]")
        assert page.evaluate("() => isSecureContext && !!crypto.subtle")
        join(page, name)
        pages.append(page)
    send(pages[0], text)
    expect(messages(pages[1]).locator(".text")).to_have_text([text])
    return pages, sockets


def test_chromium_trusting_the_ca_chats_over_wss_without_any_warning(trusting, contexts):
    server = serve(trusting.data, tls.ensure_local_ca(trusting.data, addresses=[]))
    try:
        first = contexts().new_page()
        first.set_viewport_size({"width": 390, "height": 844})
        first.goto(server.url)
        link = first.get_by_role("link", name="Set up this device")
        expect(link).to_be_visible()
        link.click()
        expect(first.get_by_role("heading", name="Set up this device")).to_be_visible()
        _pages, sockets = chat_pair(contexts, server, "no warning, real wss")
        assert set(sockets) == {f"wss://localhost:{server.port}/ws"}
        # The loopback address is in the certificate too, and allowed by the CA's constraints.
        page = contexts().new_page()
        assert page.goto(f"https://127.0.0.1:{server.port}/healthz").ok
    finally:
        server.stop()


def test_the_ca_survives_restarts_and_renewals(trusting, contexts):
    before = tls.ensure_local_ca(trusting.data, addresses=[])
    server = serve(trusting.data, before)
    port = server.port
    try:
        pages, _ = chat_pair(contexts, server, "before the renewal")
    finally:
        server.stop()
    # A new LAN address forces a new server certificate; the CA stays.
    renewed = tls.ensure_local_ca(trusting.data, addresses=[ipaddress.ip_address("10.9.8.7")])
    assert renewed.generated and renewed.reason == "the certificate does not cover 10.9.8.7"
    assert renewed.fingerprint != before.fingerprint and renewed.ca.fingerprint == before.ca.fingerprint
    server = serve(trusting.data, renewed, port=port)
    try:
        alice, bob = pages
        # bob's page reconnects by itself over the new certificate; alice's reload rejoins by itself.
        bob.get_by_role("status").filter(has_text="Connected").wait_for()
        alice.reload()
        alice.get_by_label("Message", exact=True).wait_for()
        alice.get_by_role("status").filter(has_text="Connected").wait_for()
        send(alice, "after the renewal")
        expect(messages(bob).locator(".text")).to_have_text(["before the renewal", "after the renewal"])
    finally:
        server.stop()


def serve_forged(tmp_path: Path, cert, key) -> ServerThread:
    cert_path, key_path = write_pair(tmp_path, cert, key)
    # The mapped names stand for this machine's names here: the Host allow-list must let them in (421 otherwise).
    return ServerThread(tmp_path / "data", ssl_context=tls.server_ssl_context(cert_path, key_path),
                        allowed_hosts=MAPPED).start()


def opens(contexts, url: str) -> str:
    """'ok', or Chromium's net error for the page load."""
    page = contexts().new_page()
    try:
        response = page.goto(url)
    except PlaywrightError as exc:
        error = re.search(r"net::(ERR_\w+)", exc.message)
        return error.group(1) if error else exc.message
    return "ok" if response.ok else f"HTTP {response.status}"


@pytest.mark.parametrize("names, host, expected", [
    (["chat.lan"], "chat.lan", "ok"),                          # our key, a LAN name: fine
    (["example.com"], "example.com", "ERR_CERT_INVALID"),      # our key, a public name: refused
    (["localhost", "example.com"], "localhost", "ERR_CERT_INVALID"),  # one public name spoils it
    (["127.0.0.1"], "127.0.0.1", "ok"),
    (["127.0.0.1", "8.8.8.8"], "127.0.0.1", "ERR_CERT_INVALID"),      # a public address too
])
def test_chromium_enforces_the_name_constraints_of_an_nss_imported_root(trusting, contexts, tmp_path, names, host,
                                                                         expected):
    now = dt.datetime.now(dt.timezone.utc)
    cert, key = forge(trusting.status.ca.cert, trusting.ca_key, names, now)
    server = serve_forged(tmp_path, cert, key)
    try:
        assert opens(contexts, f"https://{host}:{server.port}/healthz") == expected
    finally:
        server.stop()


def test_control_an_unconstrained_root_in_the_same_store_may_vouch_for_example_com(trusting, contexts, tmp_path):
    """Without this, the refusal above could be the host mapping or the store, not the constraint."""
    control_cert, control_key = trusting.control
    cert, key = forge(control_cert, control_key, ["example.com"], dt.datetime.now(dt.timezone.utc))
    server = serve_forged(tmp_path, cert, key)
    try:
        assert opens(contexts, f"https://example.com:{server.port}/healthz") == "ok"
        # And a root nobody trusts gives a different error than a broken constraint.
        stranger_cert, stranger_key = unconstrained_ca()
        cert, key = forge(stranger_cert, stranger_key, ["control.example.com"], dt.datetime.now(dt.timezone.utc))
        other = serve_forged(tmp_path / "stranger", cert, key)
        try:
            assert opens(contexts, f"https://control.example.com:{other.port}/healthz") == "ERR_CERT_AUTHORITY_INVALID"
        finally:
            other.stop()
    finally:
        server.stop()


def test_the_setup_page_in_a_trusting_browser(trusting, contexts, tmp_path):
    """What a person sees at /setup: the fingerprint, the downloads, a QR code a phone can read."""
    server = serve(trusting.data, tls.ensure_local_ca(trusting.data, addresses=[]))
    try:
        page = contexts().new_page()
        page.set_viewport_size({"width": 390, "height": 844})
        response = page.goto(f"{server.url}setup")
        assert response.ok and response.headers["content-security-policy"].startswith("default-src 'self'")
        fingerprint = page.locator(".fingerprint").inner_text().replace("\n", ":")
        assert fingerprint == trusting.status.ca.fingerprint
        expect(page.get_by_role("link", name="Download the profile for iPhone and iPad")).to_be_visible()
        with page.expect_download() as download:
            page.get_by_role("link", name="Download the certificate (.crt)").click()
        assert Path(download.value.path()).read_bytes() == trusting.status.ca.der()
        assert download.value.suggested_filename == "securechat-ca.crt"
        qr = page.get_by_role("img", name=f"QR code of https://localhost:{server.port}/setup")
        qr.scroll_into_view_if_needed()
        qr.screenshot(path=str(tmp_path / "qr.png"))
        assert decode(tmp_path / "qr.png") == f"https://localhost:{server.port}/setup"
    finally:
        server.stop()


def test_a_device_that_warned_finds_setup_from_the_join_card_at_every_size(trusting, tmp_path):
    """The link on the join card is on screen at 390×844, at 390×480 with the keyboard open and on
    a desktop, and leads to /setup; in the chat, the menu's link is reachable at each size
    (setup_screenshots.py; its PNGs are looked at by people)."""
    from .setup_screenshots import capture

    server = serve(trusting.data, tls.ensure_local_ca(trusting.data, addresses=[]))
    try:
        written = capture(trusting.browser, server, tmp_path)
    finally:
        server.stop()
    assert [p.name for p in written] == ["join-phone.png", "setup-phone.png", "setup-phone-full.png", "menu-phone.png",
                                         "join-keyboard.png", "setup-keyboard.png", "menu-keyboard.png",
                                         "join-desktop.png", "setup-desktop.png", "menu-desktop.png"]
    assert all(p.stat().st_size > 5000 for p in written)
