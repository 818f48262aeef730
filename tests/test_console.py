"""The serve banner's pure parts: which URLs to show, where admin calls go, the QR code.

The QR code is checked the way a person would: rendered as a dark-on-light and a
light-on-dark terminal would show it, and read back with zbarimg."""

from __future__ import annotations

import io
import ipaddress
import re
from pathlib import Path

import pytest
from rich.console import Console

from qrscan import DARK_THEME, LIGHT_THEME, scan_terminal

from securechat import tls
from securechat.config import Config
from securechat.console import (
    admin_url, choose_canonical, make_console, print_banner, render_qr, server_urls,
)

LAN = [ipaddress.ip_address("192.168.1.20"), ipaddress.ip_address("fd00::2")]


@pytest.mark.parametrize("host, scheme, expected", [
    ("127.0.0.1", "http", ["http://127.0.0.1:5000/"]),
    (None, "https", ["https://192.168.1.20:5000/", "https://[fd00::2]:5000/", "https://localhost:5000/"]),
    ("0.0.0.0", "http", ["http://192.168.1.20:5000/", "http://127.0.0.1:5000/"]),  # IPv4 only
    ("::", "https", ["https://192.168.1.20:5000/", "https://[fd00::2]:5000/", "https://localhost:5000/"]),
    ("::", "http", ["http://192.168.1.20:5000/", "http://[fd00::2]:5000/", "http://[::1]:5000/"]),  # IPv6 only
    ("192.168.1.20", "https", ["https://192.168.1.20:5000/"]),
    ("fd00::2", "https", ["https://[fd00::2]:5000/"]),
])
def test_server_urls(host, scheme, expected):
    assert server_urls(host, 5000, scheme, LAN) == expected


@pytest.mark.parametrize("host, expected", [
    (None, "https://127.0.0.1:5000/"), ("0.0.0.0", "https://127.0.0.1:5000/"), ("::", "https://[::1]:5000/"),
    ("192.168.1.20", "https://192.168.1.20:5000/"),
])
def test_admin_url_prefers_loopback(host, expected):
    assert admin_url(host, 5000, "https") == expected


def terminal_output(renderable, color_system: str | None) -> str:
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system=color_system, width=120).print(renderable, end="")
    return out.getvalue()


@pytest.mark.parametrize("color_system", ["truecolor", "256", "standard"])
@pytest.mark.parametrize("theme", [DARK_THEME, LIGHT_THEME], ids=["light-on-dark", "dark-on-light"])
def test_qr_code_scans_on_dark_and_light_terminals(tmp_path, color_system, theme):
    url = "https://192.168.1.20:5000/setup"
    shown = terminal_output(render_qr(url), color_system)
    assert scan_terminal(shown, theme, tmp_path / "screen.pgm") == url


def test_without_colours_the_qr_code_uses_the_terminals_own():
    """NO_COLOR: it cannot be right on both themes; it is on the common light-on-dark one.
    This is also the control for the test above: the same scan fails where a code without
    explicit colours is inverted."""
    import tempfile

    url = "https://192.168.1.20:5000/"
    shown = terminal_output(render_qr(url, colour=False), None)
    assert "\x1b[" not in shown
    with tempfile.TemporaryDirectory() as tmp:
        assert scan_terminal(shown, DARK_THEME, Path(tmp) / "dark.pgm") == url
        assert scan_terminal(shown, LIGHT_THEME, Path(tmp) / "light.pgm") is None


def test_qr_code_has_a_four_module_quiet_zone():
    from securechat import qr

    rows = qr.matrix("https://192.168.1.20:5000/")
    assert not any(rows[0]) and not any(rows[3]) and any(rows[4])
    assert not any(row[i] for row in rows for i in (0, 1, 2, 3, -1, -2, -3, -4))


def banner(terminal: bool, host: str | None = None, urls=None, cert=None, setup_url=None, config=None,
           color_system=None, no_color=False) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, color_system=color_system, width=120, highlight=False,
                      emoji=False, no_color=no_color)
    urls = ["http://192.168.1.20:5000/", "http://127.0.0.1:5000/"] if urls is None else urls
    print_banner(console, config or Config(host=host, data_dir="/srv/chat"), urls, cert, setup_url)
    return out.getvalue()


def test_banner_shows_urls_paths_and_a_qr_only_on_a_terminal():
    piped = banner(terminal=False, host="0.0.0.0")
    assert "http://192.168.1.20:5000/" in piped and "/srv/chat/ciphertext.jsonl" in piped
    assert "TLS        off" in piped and "use --tls" in piped and "▀" not in piped and "Scan" not in piped
    assert "  admin      securechat status | securechat roster | securechat logs dump | securechat logs rotate\n" in piped
    shown = banner(terminal=True, host="0.0.0.0", color_system="truecolor")
    assert "▀" in shown and "  Scan to open the chat on a phone: http://192.168.1.20:5000/\n" in shown
    assert "light-on-dark" not in shown


def test_with_no_color_the_banner_qr_code_still_scans_and_says_where(tmp_path):
    """NO_COLOR keeps rich's colour system but strips every colour: a code drawn in explicit
    black and white would come out as a solid block. It is drawn in the terminal's colours."""
    shown = banner(terminal=True, host="0.0.0.0", color_system="truecolor", no_color=True)
    assert "\x1b[38" not in shown and "\x1b[48" not in shown
    assert scan_terminal(shown, DARK_THEME, tmp_path / "dark.pgm") == "http://192.168.1.20:5000/"
    assert "Scan to open the chat on a phone: http://192.168.1.20:5000/" in shown
    assert "(no colours: this code scans on a light-on-dark terminal only)" in shown


def test_banner_with_the_local_ca_shows_both_fingerprints_and_a_setup_qr(tmp_path):
    status = tls.ensure_local_ca(tmp_path, hostname="box", addresses=LAN)
    urls = ["https://192.168.1.20:5000/", "https://[fd00::2]:5000/", "https://localhost:5000/"]
    shown = banner(True, urls=urls, cert=status, setup_url="https://192.168.1.20:5000/setup",
                   config=Config(tls=True, data_dir=tmp_path), color_system="truecolor")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert "TLS        on (issued by the local CA" in plain
    assert f"CA SHA-256 {status.ca.fingerprint}" in shown and f"SHA-256    {status.fingerprint}" in shown
    assert "  set up     https://192.168.1.20:5000/setup\n" in plain
    assert "devices that install securechat local CA on box see no warning" in plain
    assert "Scan to set up a phone and open the chat: https://192.168.1.20:5000/setup" in shown
    assert scan_terminal(shown, LIGHT_THEME, tmp_path / "light.pgm") == "https://192.168.1.20:5000/setup"
    assert scan_terminal(shown, DARK_THEME, tmp_path / "dark.pgm") == "https://192.168.1.20:5000/setup"


def user_certificate(tmp_path, names: list[str]) -> tls.CertStatus:
    """A certificate "you bring": issued by another CA (think mkcert) for `names`."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mkcert development CA")])
    now = dt.datetime.now(dt.timezone.utc)
    sans = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tls.load_certificate(tmp_path / "cert.pem", tmp_path / "key.pem")


def test_with_your_certificate_only_covered_lan_urls_and_no_warning_talk(tmp_path):
    cert = user_certificate(tmp_path, ["chat.lan", "*.example.org", "192.168.1.20", "localhost"])
    urls = server_urls(None, 5000, "https", LAN, cert)
    # fd00::2 is this machine's, but the certificate does not cover it; chat.lan is the certificate's.
    assert urls == ["https://192.168.1.20:5000/", "https://chat.lan:5000/", "https://localhost:5000/"]
    config = Config(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem", data_dir=tmp_path)
    shown = banner(False, urls=urls, cert=cert, config=config)
    assert "TLS        on (your certificate" in shown and "SHA-256    " in shown
    assert "warning page" not in shown and "CA SHA-256" not in shown and "[fd00::2]" not in shown


def test_this_machines_own_url_only_as_the_certificate_covers_it():
    import datetime as dt

    def status(sans):
        return tls.CertStatus(cert_path=Path("c"), key_path=None, fingerprint="AA", subject="CN=x", sans=sans,
                              not_before=None, not_after=dt.datetime(2027, 1, 1), key_type="ECDSA P-256")

    assert server_urls(None, 5000, "https", [], status(["chat.lan", "127.0.0.1"])) == [
        "https://chat.lan:5000/", "https://127.0.0.1:5000/"]
    assert server_urls("::", 5000, "https", [], status(["chat.lan", "::1"])) == [
        "https://chat.lan:5000/", "https://[::1]:5000/"]
    assert server_urls("127.0.0.1", 5000, "https", [], status(["localhost"])) == ["https://localhost:5000/"]
    assert server_urls("127.0.0.1", 5000, "https", [], status(["chat.lan"])) == []
    shown = banner(False, urls=[], cert=status(["chat.lan"]), config=Config(host="127.0.0.1", data_dir="/srv/chat"))
    assert "warning    the certificate covers none of this server's addresses; it names chat.lan" in shown


def test_a_certificate_covering_no_lan_address_shows_its_names():
    cert = tls.CertStatus(cert_path=Path("c"), key_path=None, fingerprint="AA", subject="CN=x", sans=["chat.lan"],
                          not_before=None, not_after=None, key_type="ECDSA P-256")
    # Nor localhost: this certificate does not name it, so https://localhost would be an error page.
    assert server_urls(None, 5000, "https", LAN, cert) == ["https://chat.lan:5000/"]
    assert choose_canonical(Config(tls=True), LAN, cert) is None  # no address: nothing to redirect to


@pytest.mark.parametrize("settings, expected", [
    ({"tls": True}, "192.168.1.20"),                                   # first covered address, IPv4 first
    ({"tls": True, "canonical_host": "Box.Local"}, "box.local"),       # configured
    ({"tls": True, "host": "fd00::2"}, "fd00::2"),                     # --host
    ({"tls": True, "host": "127.0.0.1"}, None),                        # loopback: nobody else comes
    ({}, None),
])
def test_choose_canonical(settings, expected, tmp_path):
    status = tls.ensure_local_ca(tmp_path, hostname="box", addresses=LAN) if settings.get("tls") else None
    assert choose_canonical(Config(**settings), LAN, status) == expected


def test_the_canonical_host_comes_first():
    urls = server_urls(None, 5000, "https", LAN, canonical="fd00::2")
    assert urls == ["https://[fd00::2]:5000/", "https://192.168.1.20:5000/", "https://localhost:5000/"]


def test_no_colour_when_piped(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # pytest captures stdout: not a terminal
    assert console.color_system is None and console.width == 200


def test_fingerprints_and_names_print_verbatim(capsys):
    """rich would turn ":CD:" into an emoji and "[red]" into a style; neither may touch our data."""
    from securechat.admin.views import dump_table, roster_table

    console = make_console()
    fingerprint = "AB:CD:EF:" * 10 + "CD"
    console.print(f"  SHA-256    {fingerprint}", markup=False)
    roster = {"room": "lobby", "participants": [
        {"username": "[red]mallory :cd:", "fingerprint": "cd" * 32, "joined": 0, "remote": "127.0.0.1"}]}
    console.print(roster_table(roster))
    console.print(dump_table([("t", "msg", "[bold]x", ":cd:", "1", "2", "id")], header=False))
    out = capsys.readouterr().out
    assert fingerprint in out
    assert "[red]mallory :cd:" in out and "[bold]x" in out and "💿" not in out
