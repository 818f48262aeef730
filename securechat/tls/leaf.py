"""The server's own certificate: which names it must cover, when to replace it, building it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .addresses import IPAddress, address_key, local_addresses
from .certs import (
    CertStatus,
    TLSConfigError,
    cert_status,
    expired,
    key_matches,
    key_pem,
    not_yet_valid,
    prepare_dir,
    read_cert,
    read_key,
    san_values,
    tighten_key_mode,
    utc_now,
    write_private,
    write_public,
)

# Browsers reject leaf certificates valid for longer than this.
MAX_VALIDITY = dt.timedelta(days=397)
# Tolerate clients whose clock is a little behind ours.
CLOCK_SKEW = dt.timedelta(minutes=5)
# Renew this long before expiry so a running server never serves a dead cert.
RENEW_BEFORE = dt.timedelta(days=30)

_LOOPBACK: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


def ensure_self_signed(
    data_dir: Path,
    *,
    hostname: str | None = None,
    addresses: list[IPAddress] | None = None,
    now: dt.datetime | None = None,
) -> CertStatus:
    """Return a usable self-signed certificate in ``<data_dir>/tls``.

    The existing certificate is reused when it matches its key, is valid now,
    has more than 30 days left and covers every current name and address;
    otherwise a new key and certificate replace it.  ``addresses`` defaults
    to ``local_addresses()``; when given it replaces them (loopback is always
    added).  ``now`` must be timezone-aware; it defaults to the current time.
    """
    now = utc_now(now)
    hostname = _normalise_hostname(hostname if hostname is not None else socket.gethostname())
    names = _dns_names(hostname)
    ips = _ip_sans(local_addresses() if addresses is None else addresses)

    tls_dir = prepare_dir(Path(data_dir) / "tls")
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"

    reason = _why_not_reusable(cert_path, key_path, names, ips, now)
    if reason is None:
        status = cert_status(cert_path, key_path, read_cert(cert_path), now)
        tighten_key_mode(key_path, status)
        return status

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_certificate(key, hostname, names, ips, now)
    write_private(key_path, key_pem(key))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    status = cert_status(cert_path, key_path, cert, now)
    status.generated, status.reason = True, reason
    return status


def _normalise_hostname(hostname: str) -> str:
    hostname = hostname.strip().rstrip(".").lower()
    try:
        # SANs hold A-labels; a non-ASCII host name becomes punycode.
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return hostname if hostname.isascii() else ""


def _dns_names(hostname: str) -> list[str]:
    """localhost, the host name and its mDNS name, without duplicates."""
    candidates = ["localhost"]
    if hostname:
        candidates.append(hostname)
        if not hostname.endswith(".local"):
            # Avahi/Bonjour publish the first label, not the full FQDN.
            candidates.append(hostname.split(".")[0] + ".local")
    return list(dict.fromkeys(candidates))


def _ip_sans(addresses: list[IPAddress]) -> list[IPAddress]:
    unique = {ipaddress.ip_address(a) for a in addresses}
    extra = sorted(unique - set(_LOOPBACK), key=address_key)
    return [*_LOOPBACK, *extra]


def _why_not_reusable(
    cert_path: Path,
    key_path: Path,
    names: list[str],
    ips: list[IPAddress],
    now: dt.datetime,
) -> str | None:
    """None if the stored certificate can be reused, else a short sentence."""
    if not cert_path.exists():
        return "no certificate yet"
    try:
        cert = read_cert(cert_path)
    except TLSConfigError as exc:
        return f"the certificate could not be read: {exc}"
    try:
        key = read_key(key_path)
    except TLSConfigError as exc:
        return f"the key could not be read: {exc}"
    if not key_matches(cert, key):
        return "the key does not match the certificate"
    return _validity_problem(cert, now) or _coverage_problem(cert, names, ips)


def _validity_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return not_yet_valid(cert)
    if now >= cert.not_valid_after_utc:
        return expired(cert)
    left = cert.not_valid_after_utc - now
    if left <= RENEW_BEFORE:
        days = left.days
        return f"the certificate expires in {days} day{'' if days == 1 else 's'}"
    return None


def _coverage_problem(
    cert: x509.Certificate, names: list[str], ips: list[IPAddress]
) -> str | None:
    dns, addrs = san_values(cert)
    missing = [n for n in names if n not in {d.lower() for d in dns}]
    missing += [str(ip) for ip in ips if ip not in set(addrs)]
    if missing:
        return f"the certificate does not cover {', '.join(missing)}"
    return None


def _build_certificate(
    key: ec.EllipticCurvePrivateKey,
    hostname: str,
    names: list[str],
    ips: list[IPAddress],
    now: dt.datetime,
) -> x509.Certificate:
    # CN is capped at 64 characters by X.509; browsers only read the SANs.
    common_name = f"securechat on {hostname or 'localhost'}"[:64]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securechat"),
        ]
    )
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ip) for ip in ips]
    not_before = now - CLOCK_SKEW
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + MAX_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
