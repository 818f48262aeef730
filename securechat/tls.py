"""TLS certificates for serving securechat over HTTPS on the LAN.

Browsers only expose WebCrypto in a secure context, so ``securechat serve
--tls`` needs a certificate.  This module holds:

* ``ensure_self_signed`` - create (or reuse) a self-signed certificate in
  ``<data_dir>/tls`` that covers every name and address the machine is
  reachable under;
* ``load_certificate`` / ``describe_certificate`` - inspect a certificate
  (a user-supplied one, or ours for ``securechat tls show``);
* ``server_ssl_context`` - the ``ssl.SSLContext`` the server listens with;
* ``local_addresses`` - the machine's interface addresses, found without
  sending any packet.

Nothing here imports Tornado.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import socket
import ssl
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

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
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SIOCGIFADDR = 0x8915  # Linux-only ioctl number
# /proc/net/if_inet6 flags of addresses that must not go into a certificate:
# temporary (privacy addresses rotate daily, and would force a new
# certificate every day), DAD-failed, and deprecated (on their way out).
_IFA_F_SKIP = 0x01 | 0x08 | 0x20


class TLSConfigError(Exception):
    """A certificate or key cannot be used; the message says why, for humans."""


@dataclass
class CertStatus:
    """What we know about a certificate (and, when given, its key)."""

    cert_path: Path
    key_path: Path | None
    fingerprint: str
    subject: str
    sans: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    key_type: str
    generated: bool = False
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# Interface addresses


def local_addresses() -> list[IPAddress]:
    """Non-loopback, non-link-local addresses of this machine's interfaces.

    Reads kernel state only (ioctl and /proc); never sends a packet.  On
    platforms where that is not possible the result is simply empty.
    """
    found: set[IPAddress] = set()
    try:
        found.update(_ipv4_addresses())
    except Exception:  # a missing address must never stop the server
        pass
    try:
        found.update(_ipv6_addresses())
    except Exception:
        pass
    return sorted((a for a in found if _usable(a)), key=_address_key)


def _usable(address: IPAddress) -> bool:
    # Link-local addresses need a zone id that browsers cannot take.
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
    )


def _address_key(address: IPAddress) -> tuple[int, int]:
    # IPv4 and IPv6 objects do not compare with each other.
    return (address.version, int(address))


def _ipv4_addresses() -> list[ipaddress.IPv4Address]:
    """Primary IPv4 address of each interface, via SIOCGIFADDR (Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    import fcntl

    addresses = []
    # A datagram socket is only a handle for the ioctl; nothing is sent.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # interface without an IPv4 address
                continue
            addresses.append(ipaddress.IPv4Address(reply[20:24]))
    return addresses


def _ipv6_addresses(
    path: Path = Path("/proc/net/if_inet6"),
) -> list[ipaddress.IPv6Address]:
    """IPv6 addresses listed in /proc/net/if_inet6 (Linux); [] elsewhere."""
    try:
        text = path.read_text()
    except OSError:
        return []
    addresses = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if not flags & _IFA_F_SKIP:
            addresses.append(address)
    return addresses


# --------------------------------------------------------------------------
# Self-signed certificate


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
    now = _utc_now(now)
    hostname = _normalise_hostname(hostname if hostname is not None else socket.gethostname())
    names = _dns_names(hostname)
    ips = _ip_sans(local_addresses() if addresses is None else addresses)

    tls_dir = _prepare_dir(Path(data_dir) / "tls")
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"

    reason = _why_not_reusable(cert_path, key_path, names, ips, now)
    if reason is None:
        status = _status(cert_path, key_path, _read_cert(cert_path), now)
        _tighten_key_mode(key_path, status)
        return status

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_certificate(key, hostname, names, ips, now)
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    status = _status(cert_path, key_path, cert, now)
    status.generated, status.reason = True, reason
    return status


def _utc_now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        now = dt.datetime.now(dt.timezone.utc)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    # Certificates store whole seconds; keep comparisons exact.
    return now.astimezone(dt.timezone.utc).replace(microsecond=0)


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
    extra = sorted(unique - set(_LOOPBACK), key=_address_key)
    return [*_LOOPBACK, *extra]


def _prepare_dir(tls_dir: Path) -> Path:
    tls_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls_dir.mkdir(exist_ok=True, mode=0o700)
    # mkdir leaves an existing (or umask-narrowed) directory's mode alone.
    os.chmod(tls_dir, 0o700)
    return tls_dir


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
        cert = _read_cert(cert_path)
    except TLSConfigError as exc:
        return f"the certificate could not be read: {exc}"
    try:
        key = _read_key(key_path)
    except TLSConfigError as exc:
        return f"the key could not be read: {exc}"
    if not _key_matches(cert, key):
        return "the key does not match the certificate"
    return _validity_problem(cert, now) or _coverage_problem(cert, names, ips)


def _validity_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return _not_yet_valid(cert)
    if now >= cert.not_valid_after_utc:
        return _expired(cert)
    left = cert.not_valid_after_utc - now
    if left <= RENEW_BEFORE:
        days = left.days
        return f"the certificate expires in {days} day{'' if days == 1 else 's'}"
    return None


def _expired(cert: x509.Certificate) -> str:
    return f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"


def _not_yet_valid(cert: x509.Certificate) -> str:
    return f"the certificate is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"


def _coverage_problem(
    cert: x509.Certificate, names: list[str], ips: list[IPAddress]
) -> str | None:
    dns, addrs = _san_values(cert)
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


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted on purpose: the server starts unattended; mode 0600 guards it.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    _write_atomically(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomically(path, data, 0o644)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write via a fresh temporary file, so the file never has a wider mode.

    The temporary file is created with its final mode (O_EXCL: never an old
    file with other permissions), and a crash leaves the previous file intact.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; be exact
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tighten_key_mode(key_path: Path, status: CertStatus) -> None:
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(key_path, 0o600)
        status.warnings.append(
            f"{key_path} was readable by other users (mode {mode:o}); it is now 600"
        )


# --------------------------------------------------------------------------
# Loading and describing certificates


def load_certificate(cert_path: Path, key_path: Path) -> CertStatus:
    """Check a user-supplied certificate and key and describe them.

    The certificate file may hold a chain; the first certificate is the
    leaf.  Raises ``TLSConfigError`` if either file is missing or unreadable,
    the key is encrypted, or the key does not belong to the certificate.
    An expired certificate still loads, with a warning.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert = _read_cert(cert_path)
    key = _read_key(key_path)
    if not _key_matches(cert, key):
        raise TLSConfigError(f"the key {key_path} does not match the certificate {cert_path}")
    # OpenSSL may still refuse what cryptography accepts (e.g. a weak key).
    server_ssl_context(cert_path, key_path)
    return _status(cert_path, key_path, cert, _utc_now(None))


def describe_certificate(cert_path: Path) -> CertStatus:
    """Describe the (leaf) certificate in ``cert_path``; no key needed."""
    cert_path = Path(cert_path)
    return _status(cert_path, None, _read_cert(cert_path), _utc_now(None))


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise TLSConfigError(f"{what} file {path} cannot be read: {exc.strerror}") from None


def _read_cert(path: Path) -> x509.Certificate:
    data = _read_bytes(path, "certificate")
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise TLSConfigError(f"{path} does not contain a PEM certificate") from None


def _read_key(path: Path):
    data = _read_bytes(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"the key {path} is encrypted; securechat needs an unencrypted key "
            "(protect it with file permissions instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"{path} does not contain a PEM private key") from None


def _key_matches(cert: x509.Certificate, key) -> bool:
    def spki(public_key) -> bytes:
        return public_key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )

    return spki(cert.public_key()) == spki(key.public_key())


def _status(
    cert_path: Path, key_path: Path | None, cert: x509.Certificate, now: dt.datetime
) -> CertStatus:
    dns, ips = _san_values(cert)
    return CertStatus(
        cert_path=cert_path,
        key_path=key_path,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        subject=cert.subject.rfc4514_string(),
        sans=dns + [str(ip) for ip in ips],
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=_key_type(cert.public_key()),
        warnings=_warnings(cert, now),
    )


def _san_values(cert: x509.Certificate) -> tuple[list[str], list[IPAddress]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    # Only single addresses identify a server; networks belong to CA constraints.
    ips = [
        ip
        for ip in san.get_values_for_type(x509.IPAddress)
        if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address))
    ]
    return san.get_values_for_type(x509.DNSName), ips


def _key_type(public_key) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ECDSA {_CURVE_NAMES.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA {public_key.key_size}"
    return type(public_key).__name__


def _warnings(cert: x509.Certificate, now: dt.datetime) -> list[str]:
    warnings = []
    if now >= cert.not_valid_after_utc:
        warnings.append(_expired(cert))
    elif now < cert.not_valid_before_utc:
        warnings.append(_not_yet_valid(cert))
    if _san_values(cert) == ([], []):
        # Browsers ignore the CN; without SANs every name fails to verify.
        warnings.append("the certificate has no subjectAltName; browsers will reject it")
    return warnings


# --------------------------------------------------------------------------
# Server context


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the certificate chain and key loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path, what in ((cert_path, "certificate"), (key_path, "key")):
        if not Path(path).is_file():
            raise TLSConfigError(f"{what} file {path} does not exist")
    try:
        # Without a password callback OpenSSL would prompt on the terminal
        # for an encrypted key and hang an unattended server.
        context.load_cert_chain(cert_path, key_path, password=_no_password(key_path))
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot use certificate {cert_path} with key {key_path}: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read {exc.filename or cert_path}: {exc.strerror}") from None
    return context


def _no_password(key_path: Path):
    def refuse() -> bytes:
        raise TLSConfigError(
            f"the key {key_path} is encrypted; securechat needs an unencrypted key"
        )

    return refuse
