"""Administering a server on another machine: trusting its certificate by pin (`--fingerprint`,
the value `tls show` prints) or by CA (`--cacert`), and never letting what a remote server
sends steer the admin's terminal (issue 14, "Local and proxy trust")."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import cli

TOKEN = "remote-admin-token-for-these-tests"


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_ca(directory: Path, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def issue_leaf(directory: Path, ca_key, ca_cert) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("chat.test")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "leaf.pem", directory / "leaf-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def remote(server, tmp_path):
    """A server with a certificate from a CA of its own, reached as from another machine:
    nothing of it (runtime file, certificate) is visible to the admin commands."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca_key, ca_cert, ca_path = make_ca(certs, "chat-ca")
    leaf, key = issue_leaf(certs, ca_key, ca_cert)
    s = server("--cert", str(leaf), "--key", str(key), "--host", "127.0.0.1", SECURECHAT_TOKEN=TOKEN)
    s.ca, s.leaf, s.key = ca_path, leaf, key
    s.elsewhere = tmp_path / "admin-machine"
    return s


def remote_cli(s, *args: str):
    return cli(*args, "--url", s.url, "--data-dir", str(s.elsewhere / "data"), runtime=s.elsewhere,
               SECURECHAT_TOKEN=TOKEN)


def test_an_untrusted_certificate_says_how_to_trust_it(remote):
    result = remote_cli(remote, "roster")
    assert result.exit_code == 1
    assert result.output.startswith(f"securechat: the certificate of {remote.url} is not trusted: ")
    assert "pin it with --fingerprint SHA256 (what `securechat tls show` prints on the server)" in result.output
    assert "or trust its CA with --cacert FILE" in result.output
    assert len(result.output.splitlines()) == 1


def test_pinning_the_fingerprint_tls_show_prints(remote):
    shown = cli("tls", "show", runtime=remote.elsewhere,
                SECURECHAT_TLS_CERT=str(remote.leaf), SECURECHAT_TLS_KEY=str(remote.key))
    (line,) = [line for line in shown.output.splitlines() if line.startswith("SHA-256")]
    fingerprint = line.split()[-1]
    pinned = remote_cli(remote, "roster", "--json", "--fingerprint", fingerprint)
    assert pinned.exit_code == 0, pinned.output
    assert json.loads(pinned.output)["participants"] == []
    plain_hex = fingerprint.replace(":", "").lower()  # the same pin written without colons
    assert remote_cli(remote, "logs", "dump", "--json", "--fingerprint", plain_hex).exit_code == 0

    wrong = "AB:" * 31 + "AB"
    refused = remote_cli(remote, "roster", "--fingerprint", wrong)
    assert refused.exit_code == 1
    assert f"shows certificate SHA-256 {fingerprint}, not the --fingerprint given" in refused.output
    assert "refusing to send the admin token" in refused.output
    bad = remote_cli(remote, "roster", "--fingerprint", "not-a-fingerprint")
    assert bad.exit_code == 2 and "64 hex digits" in bad.output


def test_trusting_the_servers_ca(remote, tmp_path):
    trusted = remote_cli(remote, "roster", "--json", "--cacert", str(remote.ca))
    assert trusted.exit_code == 0, trusted.output
    _, _, other_ca = make_ca(tmp_path, "someone-else")
    untrusted = remote_cli(remote, "logs", "rotate", "--cacert", str(other_ca))
    assert untrusted.exit_code == 1 and "is not trusted" in untrusted.output
    not_pem = tmp_path / "garbage.pem"
    not_pem.write_text("not a certificate")
    garbage = remote_cli(remote, "roster", "--cacert", str(not_pem))
    assert garbage.exit_code == 1 and garbage.output.startswith(f"securechat: cannot use --cacert {not_pem}")
    local = cli("roster", "--fingerprint", "AB" * 32, runtime=remote.runtime)
    assert local.exit_code == 2 and "--fingerprint and --cacert go with --url" in local.output


# -- a hostile server ------------------------------------------------------------------------

ESC = "\x1b"
HOSTILE = [f"{ESC}]0;pwned\x07", f"{ESC}[2J", f"{ESC}[1A", "\x9b2J", "\r", "\x08", "\u202e"]
EVIL = "".join(HOSTILE)


class Hostile(http.server.BaseHTTPRequestHandler):
    """An 'admin API' whose every string carries terminal escape sequences."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.command == "GET" and self.path.startswith("/api/admin/roster"):
            body = json.dumps({"room": f"lobby{EVIL}", "participants": [
                {"username": f"mallory{EVIL}", "fingerprint": f"ab{EVIL}" * 2, "sid": "s", "joined": 1,
                 "remote": f"10.0.0.1{EVIL}"}]}).encode()
            content_type = "application/json"
        elif self.command == "GET" and self.path.startswith("/api/admin/logs"):
            # raw C1 and bidi characters inside strings, tab and CR between tokens: all valid JSON
            record = json.dumps({"event": "join", "t": 1000, "username": f"eve{EVIL}",
                                 "fingerprint": "cd" * 32}, ensure_ascii=False)
            body = (record.replace(", ", ",\t", 1).replace(":", ":\r", 1) + "\n").encode()
            content_type = "application/x-ndjson"
        else:
            self.send_response(403)
            body = json.dumps({"error": f"go away{EVIL}"}).encode()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def assert_clean(text: str) -> None:
    for sequence in HOSTILE:
        assert sequence not in text, f"{sequence!r} reached the terminal"
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f for c in text), repr(text)


def test_nothing_a_remote_server_sends_steers_the_terminal(hostile, tmp_path):
    def run(*args):
        return cli(*args, "--url", hostile, runtime=tmp_path, SECURECHAT_TOKEN=TOKEN)

    roster = run("roster")
    assert roster.exit_code == 0, roster.output
    assert "mallory]0;pwned" in roster.output and "lobby" in roster.output
    assert_clean(roster.output)
    as_json = run("roster", "--json")
    assert_clean(as_json.output)
    assert json.loads(as_json.output)["participants"][0]["username"] == f"mallory{EVIL}"  # escaped, not lost

    table = run("logs", "dump")
    assert table.exit_code == 0, table.output
    assert "eve]0;pwned" in table.output
    assert_clean(table.output)
    lines = run("logs", "dump", "--json")
    assert lines.exit_code == 0, lines.output
    assert_clean(lines.output)
    assert json.loads(lines.output)["username"] == f"eve{EVIL}"  # same meaning, only escaped

    refused = run("logs", "rotate")
    assert refused.exit_code == 1 and "answered 403: go away]0;pwned" in refused.output
    assert_clean(refused.output)
