"""The server's own certificate: which names it must cover, when to replace it, building it.

Two kinds, kept in ``<data_dir>/tls/cert.pem`` and ``key.pem``: issued by the local CA
(``serve --tls``, see ca.py), or self-signed (``serve --tls --self-signed``, version 1's way).
Either is reused across restarts until it nears expiry, stops covering this machine's names and
addresses, or is of the other kind; then a new key and certificate replace it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .addresses import IPAddress, address_key, local_addresses
from .ca import LocalCA, ensure_ca
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
    tighten_mode,
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

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

_LOOPBACK: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


def ensure_self_signed(
    data_dir: Path,
    *,
    hostname: str | None = None,
    addresses: list[IPAddress] | None = None,
    extra_names: tuple[str, ...] = (),
    now: dt.datetime | None = None,
) -> CertStatus:
    """Return a usable self-signed certificate in ``<data_dir>/tls``.

    The existing certificate is reused when it is self-signed, matches its key, is valid
    now, has more than 30 days left and covers every current name and address; otherwise a
    new key and certificate replace it.  ``addresses`` defaults to ``local_addresses()``;
    when given it replaces them (loopback is always added).  ``extra_names`` are more names
    or addresses to cover (the configured canonical host).  ``now`` must be timezone-aware;
    it defaults to the current time.
    """
    return _ensure(data_dir, hostname, addresses, extra_names, now, use_ca=False)


def ensure_local_ca(
    data_dir: Path,
    *,
    hostname: str | None = None,
    addresses: list[IPAddress] | None = None,
    extra_names: tuple[str, ...] = (),
    now: dt.datetime | None = None,
) -> CertStatus:
    """Return a server certificate in ``<data_dir>/tls`` issued by the local CA.

    The CA (``ca.pem``, ``ca-key.pem``) is made on first use and never replaced. The server
    certificate follows the rules of ``ensure_self_signed``, except that it must have been
    issued by this CA, and it covers only the names and addresses the CA's name constraints
    permit; the others are listed in ``status.not_covered``. ``status.ca`` is the CA.
    """
    return _ensure(data_dir, hostname, addresses, extra_names, now, use_ca=True)


def _ensure(data_dir, hostname, addresses, extra_names, now, *, use_ca: bool) -> CertStatus:
    now = utc_now(now)
    hostname = _normalise_hostname(hostname if hostname is not None else socket.gethostname())
    extra_ips, extra_dns = _split(extra_names)
    names = _dns_names(hostname, extra_dns)
    ips = _ip_sans([*(local_addresses() if addresses is None else addresses), *extra_ips])

    tls_dir = prepare_dir(Path(data_dir) / "tls")
    cert_path, key_path = tls_dir / CERT_FILE, tls_dir / KEY_FILE
    ca, not_covered = None, []
    if use_ca:
        ca = ensure_ca(tls_dir, hostname=hostname, extra_names=tuple(extra_dns), now=now)
        names, ips, not_covered = _permitted_by(ca, names, ips)

    reason = _why_not_reusable(cert_path, key_path, names, ips, now, ca)
    if reason is None:
        status = cert_status(cert_path, key_path, read_cert(cert_path), now)
        warning = tighten_mode(key_path)
        if warning:
            status.warnings.append(warning)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build_certificate(key, hostname, names, ips, now, ca)
        write_private(key_path, key_pem(key))
        write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        status = cert_status(cert_path, key_path, cert, now)
        status.generated, status.reason = True, reason
    if ca is not None:
        status.ca, status.not_covered = ca, not_covered
        status.warnings[:0] = ca.warnings
    return status


def _split(extra_names: tuple[str, ...]) -> tuple[list[IPAddress], list[str]]:
    ips, names = [], []
    for name in extra_names:
        try:
            ips.append(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            if name:
                names.append(_normalise_hostname(name))
    return ips, names


def _permitted_by(ca: LocalCA, names: list[str], ips: list[IPAddress]):
    """The names and addresses the CA may sign, and the ones people should hear it may not.

    A bare single-label host name is dropped without a word: the CA never permits one (see
    ca.local_constraints), and its .local name, which is permitted, takes its place.
    """
    kept_names = [n for n in names if ca.permits(n)]
    kept_ips = [ip for ip in ips if ca.permits(ip)]
    refused = [n for n in names if n not in kept_names and "." in n]
    refused += [str(ip) for ip in ips if ip not in kept_ips]
    return kept_names, kept_ips, refused


def _normalise_hostname(hostname: str) -> str:
    hostname = hostname.strip().rstrip(".").lower()
    try:
        # SANs hold A-labels; a non-ASCII host name becomes punycode.
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return hostname if hostname.isascii() else ""


def _dns_names(hostname: str, extra: list[str] = ()) -> list[str]:
    """localhost, the host name and its mDNS name, then extra names, without duplicates."""
    candidates = ["localhost"]
    if hostname:
        candidates.append(hostname)
        if not hostname.endswith(".local"):
            # Avahi/Bonjour publish the first label, not the full FQDN.
            candidates.append(hostname.split(".")[0] + ".local")
    return list(dict.fromkeys([*candidates, *extra]))


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
    ca: LocalCA | None,
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
    if ca is not None and not _issued_by(cert, ca.cert):
        return "the certificate was not issued by the local CA"
    if ca is None and not _issued_by(cert, cert):
        return "the certificate is not self-signed"
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


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


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
    ca: LocalCA | None = None,
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
    not_after = not_before + MAX_VALIDITY
    if ca is not None:
        # Nothing a CA signs outlives the CA.
        not_after = min(not_after, ca.not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca is None:
        return builder.sign(key, hashes.SHA256())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key())
    return builder.add_extension(aki, critical=False).sign(ca.key, hashes.SHA256())


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
