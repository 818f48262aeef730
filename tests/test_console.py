"""The serve banner's pure parts: which URLs to show, where admin calls go, the QR code."""

from __future__ import annotations

import io
import ipaddress

import pytest
from rich.console import Console

from securechat.config import Config
from securechat.console import admin_url, make_console, print_banner, render_qr, server_urls

LAN = [ipaddress.ip_address("192.168.1.20"), ipaddress.ip_address("fd00::2")]


@pytest.mark.parametrize("host, scheme, expected", [
    ("127.0.0.1", "http", ["http://127.0.0.1:5000/"]),
    (None, "https", ["https://192.168.1.20:5000/", "https://[fd00::2]:5000/", "https://localhost:5000/"]),
    ("0.0.0.0", "http", ["http://192.168.1.20:5000/", "http://127.0.0.1:5000/"]),  # IPv4 only
    ("::", "https", ["https://192.168.1.20:5000/", "https://[fd00::2]:5000/", "https://localhost:5000/"]),
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


def test_qr_code_is_terminal_blocks():
    art = render_qr("https://192.168.1.20:5000/")
    lines = art.splitlines()
    assert len(lines) > 10 and set("".join(lines)) <= set("\xa0 █▀▄")  # qrcode pads with no-break spaces


def banner(terminal: bool, host: str | None = None) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, color_system=None, width=120)
    urls = ["http://192.168.1.20:5000/", "http://127.0.0.1:5000/"]
    print_banner(console, Config(host=host, data_dir="/srv/chat"), urls, None)
    return out.getvalue()


def test_banner_shows_urls_paths_and_a_qr_only_on_a_terminal():
    piped = banner(terminal=False, host="0.0.0.0")
    assert "http://192.168.1.20:5000/" in piped and "/srv/chat/ciphertext.jsonl" in piped
    assert "TLS        off" in piped and "use --tls" in piped and "█" not in piped
    assert "█" in banner(terminal=True, host="0.0.0.0")


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
