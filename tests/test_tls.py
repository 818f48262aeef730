"""Tests for securechat.tls, with real keys and certificates in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from securechat.tls import addresses as tls_addresses
from securechat.tls import (
    CertStatus,
    TLSConfigError,
    describe_certificate,
    ensure_self_signed,
    load_certificate,
    local_addresses,
    server_ssl_context,
)

HOST = "testbox"
ADDRS = [ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10")]
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


# --------------------------------------------------------------------------
# helpers


def generate(data_dir: Path, **overrides) -> CertStatus:
    kwargs = {"hostname": HOST, "addresses": ADDRS, "now": T0, **overrides}
    return ensure_self_signed(data_dir, **kwargs)


def read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san_strings(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_cert(
    key,
    *,
    cn: str = "user cert",
    dns: tuple[str, ...] = ("localhost",),
    not_before: dt.datetime | None = None,
    days: int = 90,
    issuer_key=None,
    issuer_cn: str | None = None,
) -> x509.Certificate:
    not_before = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def write_pem(path: Path, *objects, password: bytes | None = None) -> Path:
    chunks = []
    for obj in objects:
        if isinstance(obj, x509.Certificate):
            chunks.append(obj.public_bytes(serialization.Encoding.PEM))
        else:
            encryption = (
                serialization.BestAvailableEncryption(password)
                if password
                else serialization.NoEncryption()
            )
            chunks.append(
                obj.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
                )
            )
    path.write_bytes(b"".join(chunks))
    return path


@pytest.fixture
def rsa_pair(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = make_cert(key)
    return (
        write_pem(tmp_path / "user-cert.pem", cert),
        write_pem(tmp_path / "user-key.pem", key),
        key,
        cert,
    )


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------
# the generated certificate


def test_generated_certificate_contents(tmp_path):
    status = generate(tmp_path / "data")
    cert = read_cert(status.cert_path)

    assert status.generated and status.reason == "no certificate yet"
    assert status.cert_path == tmp_path / "data" / "tls" / "cert.pem"
    assert status.key_path == tmp_path / "data" / "tls" / "key.pem"
    assert san_strings(cert) == {
        "localhost", HOST, f"{HOST}.local", "127.0.0.1", "::1", "192.0.2.10", "2001:db8::10",
    }
    assert set(status.sans) == san_strings(cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"securechat on {HOST}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "securechat"
    cert.verify_directly_issued_by(cert)  # really self-signed
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)

    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert status.key_type == "ECDSA P-256"

    assert cert.not_valid_before_utc == T0 - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=397)
    assert cert.not_valid_before_utc <= T0 < cert.not_valid_after_utc
    assert (status.not_before, status.not_after) == (cert.not_valid_before_utc, cert.not_valid_after_utc)

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public_key)

    assert status.fingerprint == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert len(status.fingerprint.split(":")) == 32
    assert status.subject == cert.subject.rfc4514_string()
    assert status.warnings == []


def test_serial_numbers_are_random(tmp_path):
    one = read_cert(generate(tmp_path / "a").cert_path)
    two = read_cert(generate(tmp_path / "b").cert_path)
    assert one.serial_number != two.serial_number
    assert one.serial_number.bit_length() > 64


def test_key_is_unencrypted_pkcs8_p256_matching_the_cert(tmp_path):
    status = generate(tmp_path)
    pem = status.key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, not "EC PRIVATE KEY"
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == read_cert(status.cert_path).public_key()


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_file_modes_do_not_depend_on_umask(tmp_path, mask):
    with umask(mask):
        status = generate(tmp_path / "data")
    tls_dir = status.cert_path.parent
    assert mode(tls_dir) == 0o700
    assert mode(status.key_path) == 0o600
    assert mode(status.cert_path) == 0o644
    assert sorted(p.name for p in tls_dir.iterdir()) == ["cert.pem", "key.pem"]  # no temp files left


def test_existing_loose_tls_dir_is_tightened(tmp_path):
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    tls_dir.chmod(0o755)
    generate(tmp_path)
    assert mode(tls_dir) == 0o700


def test_regenerated_key_replaces_a_world_readable_one_with_mode_600(tmp_path):
    status = generate(tmp_path)
    write_pem(status.key_path, ec.generate_private_key(ec.SECP256R1()))
    status.key_path.chmod(0o644)
    again = generate(tmp_path)
    assert again.generated
    assert mode(again.key_path) == 0o600


def test_reused_key_with_loose_mode_is_tightened_with_a_warning(tmp_path):
    status = generate(tmp_path)
    status.key_path.chmod(0o644)
    again = generate(tmp_path)
    assert not again.generated
    assert mode(again.key_path) == 0o600
    assert any("644" in w for w in again.warnings)


# --------------------------------------------------------------------------
# reuse and regeneration


def test_second_call_reuses_the_certificate(tmp_path):
    first = generate(tmp_path)
    key_before = first.key_path.read_bytes()
    second = generate(tmp_path, now=T0 + dt.timedelta(days=100))
    assert second.generated is False and second.reason is None
    assert second.fingerprint == first.fingerprint
    assert second.key_path.read_bytes() == key_before


def test_regenerates_close_to_expiry_with_a_new_key(tmp_path):
    first = generate(tmp_path)
    key_before = first.key_path.read_bytes()
    later = T0 + dt.timedelta(days=370)
    second = generate(tmp_path, now=later)
    # not_after = T0 - 5 min + 397 days, so 26 days and 23:55 are left.
    assert second.generated and second.reason == "the certificate expires in 26 days"
    assert second.fingerprint != first.fingerprint
    assert second.key_path.read_bytes() != key_before
    assert second.not_before == later - dt.timedelta(minutes=5)


def test_renewal_threshold_is_thirty_days(tmp_path):
    first = generate(tmp_path)
    reused = generate(tmp_path, now=first.not_after - dt.timedelta(days=30, seconds=1))
    assert not reused.generated
    renewed = generate(tmp_path, now=first.not_after - dt.timedelta(days=30))
    assert renewed.generated and renewed.reason == "the certificate expires in 30 days"


def test_regenerates_an_expired_certificate(tmp_path):
    first = generate(tmp_path)
    second = generate(tmp_path, now=T0 + dt.timedelta(days=500))
    assert second.generated
    assert second.reason == f"the certificate expired on {first.not_after:%Y-%m-%d}"


def test_regenerates_when_the_clock_is_before_not_before(tmp_path):
    generate(tmp_path)
    second = generate(tmp_path, now=T0 - dt.timedelta(days=1))
    assert second.generated and second.reason.startswith("the certificate is not valid until")


def test_regenerates_for_a_new_address(tmp_path):
    generate(tmp_path)
    new = ipaddress.ip_address("192.168.1.7")
    second = generate(tmp_path, addresses=[*ADDRS, new])
    assert second.generated and second.reason == "the certificate does not cover 192.168.1.7"
    assert "192.168.1.7" in san_strings(read_cert(second.cert_path))


def test_regenerates_for_a_new_hostname(tmp_path):
    generate(tmp_path)
    second = generate(tmp_path, hostname="otherbox")
    assert second.generated and "otherbox" in second.reason
    assert {"otherbox", "otherbox.local"} <= san_strings(read_cert(second.cert_path))


def test_regenerates_when_the_key_is_replaced(tmp_path):
    first = generate(tmp_path)
    write_pem(first.key_path, ec.generate_private_key(ec.SECP256R1()))
    second = generate(tmp_path)
    assert second.generated and second.reason == "the key does not match the certificate"
    key = serialization.load_pem_private_key(second.key_path.read_bytes(), None)
    assert key.public_key() == read_cert(second.cert_path).public_key()


def test_regenerates_when_the_key_is_missing(tmp_path):
    first = generate(tmp_path)
    first.key_path.unlink()
    second = generate(tmp_path)
    assert second.generated and second.reason.startswith("the key could not be read")
    assert second.key_path.exists()


def test_regenerates_when_the_cert_is_garbage(tmp_path):
    first = generate(tmp_path)
    first.cert_path.write_bytes(b"this is not a certificate\n")
    second = generate(tmp_path)
    assert second.generated and second.reason.startswith("the certificate could not be read: ")
    read_cert(second.cert_path)  # valid again


def test_naive_now_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path, now=dt.datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "hostname, expected",
    [
        ("printer.local", {"localhost", "printer.local"}),
        ("localhost", {"localhost", "localhost.local"}),
        ("Box.Example.COM.", {"localhost", "box.example.com", "box.local"}),
    ],
)
def test_dns_names_without_duplicates(tmp_path, hostname, expected):
    status = generate(tmp_path, hostname=hostname, addresses=[])
    cert = read_cert(status.cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    assert len(names) == len(set(names))
    assert set(names) == expected


def test_defaults_cover_this_machine(tmp_path):
    status = ensure_self_signed(tmp_path)
    sans = set(status.sans)
    assert {"localhost", "127.0.0.1", "::1"} <= sans
    assert {str(a) for a in local_addresses()} <= sans
    assert ensure_self_signed(tmp_path).generated is False


# --------------------------------------------------------------------------
# local_addresses


def test_local_addresses_has_no_loopback_or_link_local():
    addresses = local_addresses()
    assert isinstance(addresses, list)
    for address in addresses:
        assert isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        assert not address.is_loopback and not address.is_link_local
    assert len(addresses) == len(set(addresses))
    assert addresses == sorted(addresses, key=lambda a: (a.version, int(a)))


def test_ipv6_parser_skips_unusable_addresses(tmp_path):
    # Real /proc/net/if_inet6 format: address, ifindex, prefix, scope, flags, name.
    proc = tmp_path / "if_inet6"
    proc.write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
        "20010db8000000000000000000000042 02 40 00 80     eth0\n"
        "20010db80000000000000000000000aa 02 40 00 01     eth0\n"  # temporary
        "20010db80000000000000000000000bb 02 40 00 20     eth0\n"  # deprecated
        "not a valid line\n"
    )
    parsed = tls_addresses._ipv6_addresses(proc)
    assert ipaddress.ip_address("2001:db8::42") in parsed
    assert ipaddress.ip_address("2001:db8::aa") not in parsed
    assert ipaddress.ip_address("2001:db8::bb") not in parsed
    assert tls_addresses._ipv6_addresses(tmp_path / "missing") == []


# --------------------------------------------------------------------------
# user-supplied certificates


def test_load_user_rsa_certificate(rsa_pair):
    cert_path, key_path, _key, cert = rsa_pair
    status = load_certificate(cert_path, key_path)
    assert status.key_type == "RSA 2048"
    assert status.fingerprint == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert status.sans == ["localhost"]
    assert status.subject == "CN=user cert"
    assert status.generated is False and status.warnings == []
    assert status.not_before.tzinfo is not None and status.not_after.utcoffset() == dt.timedelta(0)


def test_load_chain_takes_the_first_certificate_as_leaf(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = make_cert(ca_key, cn="test CA", dns=())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert(leaf_key, cn="leaf", issuer_key=ca_key, issuer_cn="test CA")
    cert_path = write_pem(tmp_path / "chain.pem", leaf, ca)
    key_path = write_pem(tmp_path / "key.pem", leaf_key)
    status = load_certificate(cert_path, key_path)
    assert status.subject == "CN=leaf" and status.key_type == "ECDSA P-256"


def test_load_mismatched_key_fails(rsa_pair, tmp_path):
    cert_path, _key_path, _key, _cert = rsa_pair
    other = write_pem(tmp_path / "other.pem", rsa.generate_private_key(65537, 2048))
    with pytest.raises(TLSConfigError, match="does not match"):
        load_certificate(cert_path, other)


@pytest.mark.parametrize("which", ["cert", "key"])
def test_load_missing_file_names_the_path(rsa_pair, tmp_path, which):
    cert_path, key_path, _key, _cert = rsa_pair
    missing = tmp_path / "nowhere" / f"{which}.pem"
    args = (missing, key_path) if which == "cert" else (cert_path, missing)
    with pytest.raises(TLSConfigError) as excinfo:
        load_certificate(*args)
    assert str(missing) in str(excinfo.value)


def test_load_encrypted_key_fails(rsa_pair, tmp_path):
    cert_path, _key_path, key, _cert = rsa_pair
    encrypted = write_pem(tmp_path / "enc.pem", key, password=b"secret")
    with pytest.raises(TLSConfigError, match="encrypted"):
        load_certificate(cert_path, encrypted)


def test_load_garbage_pem_fails(rsa_pair, tmp_path):
    cert_path, key_path, _key, _cert = rsa_pair
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(TLSConfigError, match="PEM certificate"):
        load_certificate(garbage, key_path)
    with pytest.raises(TLSConfigError, match="PEM private key"):
        load_certificate(cert_path, garbage)


def test_load_expired_certificate_warns(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    past = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    cert_path = write_pem(tmp_path / "old.pem", make_cert(key, not_before=past, days=30))
    key_path = write_pem(tmp_path / "key.pem", key)
    status = load_certificate(cert_path, key_path)
    assert any("expired on 2020-01-31" in w for w in status.warnings)


def test_load_certificate_without_san_warns(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path = write_pem(tmp_path / "c.pem", make_cert(key, dns=()))
    status = load_certificate(cert_path, write_pem(tmp_path / "k.pem", key))
    assert any("subjectAltName" in w for w in status.warnings)


def test_describe_certificate(tmp_path):
    generated = generate(tmp_path)
    status = describe_certificate(generated.cert_path)
    assert status.key_path is None
    assert status.fingerprint == generated.fingerprint
    assert status.sans == generated.sans
    assert status.key_type == "ECDSA P-256"
    with pytest.raises(TLSConfigError, match="does not exist"):
        describe_certificate(tmp_path / "nope.pem")


# --------------------------------------------------------------------------
# server context and a real HTTPS round trip


class Hello(RequestHandler):
    def get(self):
        self.write("hello over tls")


@contextlib.contextmanager
def https_server(context: ssl.SSLContext):
    """Run a Tornado HTTPS server on 127.0.0.1 in a thread; yield its port."""
    sock, port = bind_unused_port()
    ready, box = threading.Event(), {}

    async def serve():
        server = HTTPServer(Application([("/", Hello)]), ssl_options=context)
        server.add_sockets([sock])
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await box["stop"].wait()
        server.stop()
        await server.close_all_connections()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield port
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def https_get(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    """GET / over TLS from 127.0.0.1:port, verifying server_hostname."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_server_context_settings(tmp_path):
    status = generate(tmp_path)
    context = server_ssl_context(status.cert_path, status.key_path)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER


def test_server_context_errors(rsa_pair, tmp_path):
    cert_path, _key_path, key, _cert = rsa_pair
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSConfigError, match=str(missing)):
        server_ssl_context(missing, _key_path)
    other = write_pem(tmp_path / "other.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TLSConfigError):
        server_ssl_context(cert_path, other)
    # Must fail, not prompt for a pass phrase on the terminal.
    encrypted = write_pem(tmp_path / "enc.pem", key, password=b"secret")
    with pytest.raises(TLSConfigError, match="encrypted"):
        server_ssl_context(cert_path, encrypted)


def test_https_round_trip(tmp_path):
    status = generate(tmp_path / "server")
    client = ssl.create_default_context(cafile=str(status.cert_path))  # trusts only this cert
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    with https_server(server_ssl_context(status.cert_path, status.key_path)) as port:
        for name in ("localhost", "127.0.0.1"):
            response = https_get(port, client, name)
            assert response.startswith(b"HTTP/1.1 200")
            assert response.endswith(b"hello over tls")


def test_https_untrusted_or_wrong_name_is_refused(tmp_path):
    status = generate(tmp_path / "server")
    stranger = generate(tmp_path / "stranger")  # a different self-signed cert
    untrusting = ssl.create_default_context(cafile=str(stranger.cert_path))
    trusting = ssl.create_default_context(cafile=str(status.cert_path))
    with https_server(server_ssl_context(status.cert_path, status.key_path)) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(port, untrusting, "localhost")
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            https_get(port, trusting, "example.com")
        assert https_get(port, trusting, "localhost").startswith(b"HTTP/1.1 200")


def legacy_context(*, server: bool, cert: Path, key: Path | None = None) -> ssl.SSLContext:
    """A context that speaks TLS 1.0-1.1 only (client) or 1.0+ (server)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if server:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cert)
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 disables TLS < 1.2 at level 1+
    return context


def test_tls_1_1_client_is_refused(tmp_path):
    status = generate(tmp_path / "server")
    try:
        client = legacy_context(server=False, cert=status.cert_path)
        permissive = legacy_context(server=True, cert=status.cert_path, key=status.key_path)
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot build a TLS 1.1 context: {exc}")
    # Control: the legacy client must work against a server that allows it,
    # otherwise a refusal below would prove nothing about our context.
    with https_server(permissive) as port:
        try:
            https_get(port, client, "localhost")
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL cannot speak TLS 1.1 even when allowed: {exc}")
    with https_server(server_ssl_context(status.cert_path, status.key_path)) as port:
        with pytest.raises(ssl.SSLError):
            https_get(port, client, "localhost")
