"""`securechat serve --tls` for the LAN: a real HTTPS + WSS round trip trusting only the local CA
it made, the certificate it issued, reuse across restarts, `--self-signed`, and the usage errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import clean_env, free_port

from cli import main
from securechat.admin.client import AdminClient, AdminError
from securechat.client import ChatClient, Message

ROOT = Path(__file__).resolve().parents[1]


def start_tls(tmp_path: Path, port: int, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--tls", *flags, "--port", str(port), "--data-dir",
         str(tmp_path / "data")], cwd=ROOT, env=clean_env(XDG_RUNTIME_DIR=str(tmp_path / "run")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pinned(tmp_path: Path, trust: str = "ca.pem") -> ssl.SSLContext:
    """A client that trusts only the local CA (or, for --self-signed, only the certificate)."""
    return ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / trust))


def wait_for_https(port: int, process: subprocess.Popen, tmp_path: Path, trust: str = "ca.pem") -> bytes:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2,
                                        context=pinned(tmp_path, trust)) as response:
                return response.read()
        except (OSError, ssl.SSLError):
            time.sleep(0.1)
    raise AssertionError("the TLS server did not answer")


def stop(process: subprocess.Popen) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0 and "Traceback" not in err, err
    return out, err


def test_https_and_wss_round_trip_trusting_only_the_local_ca(tmp_path):
    port = free_port()
    process = start_tls(tmp_path, port)
    try:
        assert json.loads(wait_for_https(port, process, tmp_path))["status"] == "ok"

        async def chat():
            context = pinned(tmp_path)
            alice = ChatClient(f"wss://127.0.0.1:{port}/ws", "alice")
            bob = ChatClient(f"wss://localhost:{port}/ws", "bob")
            await alice.connect(ssl_options=context)
            await bob.connect(ssl_options=context)
            while len(alice.members) < 2:
                await alice.recv()
            await alice.send("hello over wss")
            received = await bob.next_message()
            for client in (alice, bob):
                client.close()
                while await client.ws.read_message() is not None:
                    pass
            return received

        received = asyncio.run(chat())
        assert isinstance(received, Message) and (received.sender, received.text) == ("alice", "hello over wss")
        info = json.loads(next((tmp_path / "run" / "securechat").glob("server-*.json")).read_text())
        assert info["scheme"] == "https" and info["admin_url"] == f"https://127.0.0.1:{port}/"
        status = AdminClient(info["admin_url"], info["token"], info["cert_fingerprint"]).status()
        assert status["tls"] is True
        try:
            AdminClient(info["admin_url"], info["token"], "00:" * 31 + "00").status()
            raise AssertionError("a wrong pin must stop the call")
        except AdminError as exc:
            assert "refusing to send the admin token" in str(exc)
    finally:
        out, _ = stop(process)
    cert = x509.load_pem_x509_certificate((tmp_path / "data" / "tls" / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "data" / "tls" / "ca.pem").read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert fingerprint in out and "new certificate made: no certificate yet" in out
    assert f"CA SHA-256 {ca.fingerprint(hashes.SHA256()).hex(':').upper()}" in out
    assert cert.issuer == ca.subject
    assert f"https://localhost:{port}/" in out and "TLS        on (issued by the local CA" in out


def test_generated_certificate_covers_the_lan_and_is_reused(tmp_path):
    port = free_port()
    process = start_tls(tmp_path, port)
    wait_for_https(port, process, tmp_path)
    first, _ = stop(process)
    tls_dir = tmp_path / "data" / "tls"
    cert = x509.load_pem_x509_certificate((tls_dir / "cert.pem").read_bytes())
    ca_pem = (tls_dir / "ca.pem").read_bytes()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=397)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc) < cert.not_valid_after_utc
    assert (tls_dir / "key.pem").stat().st_mode & 0o777 == 0o600 and tls_dir.stat().st_mode & 0o777 == 0o700
    assert (tls_dir / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    process = start_tls(tmp_path, port)
    wait_for_https(port, process, tmp_path)
    second, _ = stop(process)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert fingerprint in second and "new certificate made" not in second
    assert (tls_dir / "ca.pem").read_bytes() == ca_pem
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_fingerprint = ca.fingerprint(hashes.SHA256()).hex(":").upper()
    shown = CliRunner(env={"NO_COLOR": "1"}).invoke(main, ["tls", "show", "--data-dir", str(tmp_path / "data")])
    assert shown.exit_code == 0 and fingerprint in shown.output and "ECDSA P-256" in shown.output
    assert "127.0.0.1" in shown.output and "days left" in shown.output
    assert f"CA SHA-256   {ca_fingerprint}" in shown.output
    assert "CA permits   names localhost, local, lan, home.arpa, internal and the names under them" in shown.output
    assert ("addresses 127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, ::1/128, "
            "fc00::/7, fe80::/10") in shown.output


def test_self_signed_keeps_version_1s_certificate(tmp_path):
    port = free_port()
    process = start_tls(tmp_path, port, "--self-signed")
    wait_for_https(port, process, tmp_path, trust="cert.pem")  # trusting the certificate itself
    out, _ = stop(process)
    tls_dir = tmp_path / "data" / "tls"
    cert = x509.load_pem_x509_certificate((tls_dir / "cert.pem").read_bytes())
    assert cert.issuer == cert.subject and not (tls_dir / "ca.pem").exists()
    assert "TLS        on (self-signed" in out and "CA SHA-256" not in out and "/setup" not in out
    assert "compare this on the browser's certificate warning page" in out


def test_ca_export_writes_the_certificate_never_the_key(tmp_path):
    from securechat.tls import ensure_local_ca

    status = ensure_local_ca(tmp_path / "data", addresses=[])
    runner = CliRunner()
    for name, form in (("ca.pem", "PEM"), ("ca.crt", "PEM"), ("ca.der", "DER"), ("ca.mobileconfig", "Apple profile")):
        result = runner.invoke(main, ["tls", "ca", "export", str(tmp_path / name), "--data-dir", str(tmp_path / "data")])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == (f"wrote {status.ca.name} ({form}, SHA-256 {status.ca.fingerprint}) "
                                         f"to {tmp_path / name}")
        assert b"PRIVATE KEY" not in (tmp_path / name).read_bytes()
    assert x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes()) == status.ca.cert
    assert x509.load_der_x509_certificate((tmp_path / "ca.der").read_bytes()) == status.ca.cert
    forced = runner.invoke(main, ["tls", "ca", "export", "-", "--format", "der", "--data-dir", str(tmp_path / "data")])
    assert forced.exit_code == 0 and forced.stdout_bytes == status.ca.der()
    none = runner.invoke(main, ["tls", "ca", "export", str(tmp_path / "x.pem"), "--data-dir", str(tmp_path / "none")])
    assert none.exit_code == 1 and none.output.strip() == (
        f"securechat: no local CA yet in {tmp_path / 'none' / 'tls'}; `securechat serve --tls` makes one")


def test_self_signed_with_cert_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--self-signed", "--cert", "c.pem", "--key", "k.pem"])
    assert result.exit_code == 2 and "--self-signed and --cert/--key exclude each other" in result.output


def test_cert_without_key_is_a_usage_error_and_bad_files_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--cert", str(tmp_path / "c.pem")])
    assert result.exit_code == 2 and "--cert and --key go together" in result.output
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    bad = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", "--cert", str(tmp_path / "c.pem"), "--key",
                          str(tmp_path / "k.pem"), "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
                         cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=20)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"securechat: {tmp_path / 'c.pem'} does not contain a PEM certificate"


def test_tls_show_without_a_certificate(tmp_path):
    result = CliRunner().invoke(main, ["tls", "show", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"securechat: no certificate yet in {tmp_path / 'data' / 'tls'}; `securechat serve --tls` makes one")


def test_the_banner_qr_code_scans_on_a_real_terminal_in_both_themes(tmp_path):
    """`serve --tls` in a pseudo-terminal, as a person runs it; its QR code read back with zbarimg
    as a light-on-dark and a dark-on-light terminal would show it."""
    import os
    import pty
    import select

    from qrscan import DARK_THEME, LIGHT_THEME, scan_terminal

    port = free_port()
    env = clean_env(XDG_RUNTIME_DIR=str(tmp_path / "run"), TERM="xterm-256color", COLUMNS="100", LINES="50")
    del env["NO_COLOR"]
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--tls", "--port", str(port),
                                "--data-dir", str(tmp_path / "data")], cwd=ROOT, env=env,
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + 20
        while b"Press Ctrl-C to stop." not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                output += os.read(controller, 65536)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(15)
        os.close(controller)
    text = output.decode("utf-8", "replace").replace("\r\n", "\n")
    assert "Press Ctrl-C to stop." in text, text
    caption = next(line for line in text.splitlines() if "Scan to set up a phone and open the chat: " in line)
    url = caption.split(": ", 1)[1].strip()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", url)
    assert plain.startswith("https://") and plain.endswith(f":{port}/setup")
    assert "\x1b[38;5;16;48;5;231m" in text or "\x1b[38;5;231;48;5;16m" in text  # explicit black and white
    assert scan_terminal(text, DARK_THEME, tmp_path / "dark.pgm") == plain
    assert scan_terminal(text, LIGHT_THEME, tmp_path / "light.pgm") == plain
