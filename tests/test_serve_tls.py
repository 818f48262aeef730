"""`securechat serve --tls` for the LAN: a real HTTPS + WSS round trip pinned to the generated
certificate, the certificate it made, reuse across restarts, and the usage errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
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


def start_tls(tmp_path: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--tls", "--port", str(port), "--data-dir",
         str(tmp_path / "data")], cwd=ROOT, env=clean_env(XDG_RUNTIME_DIR=str(tmp_path / "run")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pinned(tmp_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / "cert.pem"))


def wait_for_https(port: int, process: subprocess.Popen, tmp_path: Path) -> bytes:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2,
                                        context=pinned(tmp_path)) as response:
                return response.read()
        except (OSError, ssl.SSLError):
            time.sleep(0.1)
    raise AssertionError("the TLS server did not answer")


def stop(process: subprocess.Popen) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0 and "Traceback" not in err, err
    return out, err


def test_https_and_wss_round_trip_pinned_to_the_generated_certificate(tmp_path):
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
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert fingerprint in out and "new certificate made: no certificate yet" in out
    assert f"https://localhost:{port}/" in out and "TLS        on" in out


def test_generated_certificate_covers_the_lan_and_is_reused(tmp_path):
    port = free_port()
    process = start_tls(tmp_path, port)
    wait_for_https(port, process, tmp_path)
    first, _ = stop(process)
    tls_dir = tmp_path / "data" / "tls"
    cert = x509.load_pem_x509_certificate((tls_dir / "cert.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=397)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc) < cert.not_valid_after_utc
    assert (tls_dir / "key.pem").stat().st_mode & 0o777 == 0o600 and tls_dir.stat().st_mode & 0o777 == 0o700
    process = start_tls(tmp_path, port)
    wait_for_https(port, process, tmp_path)
    second, _ = stop(process)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert fingerprint in second and "new certificate made" not in second
    shown = CliRunner(env={"NO_COLOR": "1"}).invoke(main, ["tls", "show", "--data-dir", str(tmp_path / "data")])
    assert shown.exit_code == 0 and fingerprint in shown.output and "ECDSA P-256" in shown.output
    assert "127.0.0.1" in shown.output and "days left" in shown.output


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
