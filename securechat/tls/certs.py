"""Certificates on disk: reading, describing and writing them owner-only, and the server context.

Everything that touches a certificate or key file goes through here, so the rules (atomic
writes, exact modes, one readable error per problem) hold for every kind of certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from .addresses import IPAddress

if TYPE_CHECKING:
    from .ca import LocalCA

# RFC 4514 has no short name for serialNumber, which the local CA's subject carries.
_ATTRIBUTE_NAMES = {x509.oid.NameOID.SERIAL_NUMBER: "serialNumber"}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


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
    issuer: str = ""
    generated: bool = False
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    # Set when securechat's local CA issued it (serve --tls): the CA devices install.
    ca: LocalCA | None = None
    # This machine's names and addresses the certificate leaves out, because the local CA
    # may not sign for them (a public address, say).
    not_covered: list[str] = field(default_factory=list)

    @property
    def self_signed(self) -> bool:
        return self.issuer == self.subject

    def covers(self, host: str) -> bool:
        """Whether a browser opening https://host/ accepts this certificate's names."""
        return covers(self.sans, host)


def utc_now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        now = dt.datetime.now(dt.timezone.utc)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    # Certificates store whole seconds; keep comparisons exact.
    return now.astimezone(dt.timezone.utc).replace(microsecond=0)


def prepare_dir(tls_dir: Path) -> Path:
    tls_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls_dir.mkdir(exist_ok=True, mode=0o700)
    # mkdir leaves an existing (or umask-narrowed) directory's mode alone.
    os.chmod(tls_dir, 0o700)
    return tls_dir


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted on purpose: the server starts unattended; mode 0600 guards it.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    _write_atomically(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
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


def tighten_mode(key_path: Path) -> str | None:
    """Make a key file owner-only again; a warning for people if it was not."""
    mode = key_path.stat().st_mode & 0o777
    if not mode & 0o077:
        return None
    os.chmod(key_path, 0o600)
    return f"{key_path} was readable by other users (mode {mode:o}); it is now 600"


def load_certificate(cert_path: Path, key_path: Path) -> CertStatus:
    """Check a user-supplied certificate and key and describe them.

    The certificate file may hold a chain; the first certificate is the
    leaf.  Raises ``TLSConfigError`` if either file is missing or unreadable,
    the key is encrypted, or the key does not belong to the certificate.
    An expired certificate still loads, with a warning.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert = read_cert(cert_path)
    key = read_key(key_path)
    if not key_matches(cert, key):
        raise TLSConfigError(f"the key {key_path} does not match the certificate {cert_path}")
    # OpenSSL may still refuse what cryptography accepts (e.g. a weak key).
    server_ssl_context(cert_path, key_path)
    return cert_status(cert_path, key_path, cert, utc_now(None))


def describe_certificate(cert_path: Path) -> CertStatus:
    """Describe the (leaf) certificate in ``cert_path``; no key needed."""
    cert_path = Path(cert_path)
    return cert_status(cert_path, None, read_cert(cert_path), utc_now(None))


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise TLSConfigError(f"{what} file {path} cannot be read: {exc.strerror}") from None


def read_cert(path: Path) -> x509.Certificate:
    data = _read_bytes(path, "certificate")
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise TLSConfigError(f"{path} does not contain a PEM certificate") from None


def read_key(path: Path):
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


def key_matches(cert: x509.Certificate, key) -> bool:
    def spki(public_key) -> bytes:
        return public_key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )

    return spki(cert.public_key()) == spki(key.public_key())


def cert_status(
    cert_path: Path, key_path: Path | None, cert: x509.Certificate, now: dt.datetime
) -> CertStatus:
    dns, ips = san_values(cert)
    return CertStatus(
        cert_path=cert_path,
        key_path=key_path,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        subject=cert.subject.rfc4514_string(_ATTRIBUTE_NAMES),
        issuer=cert.issuer.rfc4514_string(_ATTRIBUTE_NAMES),
        sans=dns + [str(ip) for ip in ips],
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=_key_type(cert.public_key()),
        warnings=_warnings(cert, now),
    )


def covers(sans: list[str], host: str) -> bool:
    """RFC 6125 matching as browsers do it: exact names, a wildcard for one left-most label,
    addresses only by an IP entry (never by a DNS name that looks like one)."""
    host = host.strip("[]").rstrip(".").lower()
    address = _as_address(host)
    for san in sans:
        san_address = _as_address(san)
        if address is not None or san_address is not None:
            if address == san_address:
                return True
            continue
        san = san.lower()
        if san == host or (san.startswith("*.") and "." in host and host.split(".", 1)[1] == san[2:]):
            return True
    return False


def _as_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def san_values(cert: x509.Certificate) -> tuple[list[str], list[IPAddress]]:
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
        warnings.append(expired(cert))
    elif now < cert.not_valid_before_utc:
        warnings.append(not_yet_valid(cert))
    if san_values(cert) == ([], []):
        # Browsers ignore the CN; without SANs every name fails to verify.
        warnings.append("the certificate has no subjectAltName; browsers will reject it")
    return warnings


def expired(cert: x509.Certificate) -> str:
    return f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"


def not_yet_valid(cert: x509.Certificate) -> str:
    return f"the certificate is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"


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
