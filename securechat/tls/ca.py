"""The local certificate authority: a small CA in the data dir that issues the server's
certificate, so a device that trusts it once never sees a certificate warning again.

Unlike mkcert's, this CA can only vouch for a LAN. A critical X.509 Name Constraints
extension permits only local names (``localhost``, ``.local``, ``.lan``, ``.home.arpa``,
``.internal``, the machine's own fully qualified name) and private, loopback and link-local
address ranges, so a stolen CA key cannot impersonate a public site to a device that trusts
the CA: verifiers that enforce the extension (tests prove Chromium, cryptography and OpenSSL
do) reject any certificate it signs for another name.

The CA is made once and never replaced behind anyone's back: a device that installed it keeps
trusting every server certificate issued from it. If its files go missing or bad, the server
stops with a message instead of silently making a new CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .addresses import IPAddress
from .certs import (
    TLSConfigError,
    key_matches,
    key_pem,
    read_cert,
    read_key,
    tighten_mode,
    write_private,
    write_public,
)

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
# Roots are not held to the leaf limit of 397 days; ten years is what mkcert uses. The CA
# is replaced only by a person (see the error in _load), so this is the longest a device's
# one-time set-up lasts.
CA_VALIDITY = dt.timedelta(days=3652)

# DNS suffixes that only ever name things on a local network. A name constraint permits the
# name itself and every name under it (RFC 5280, 4.2.1.10).
LOCAL_SUFFIXES = (
    "localhost",  # RFC 6761: always this machine
    "local",  # RFC 6762: multicast DNS (Bonjour, Avahi)
    "lan",  # what home routers (OpenWrt, many others) hand out; not a delegated TLD
    "home.arpa",  # RFC 8375: home networks
    "internal",  # reserved by ICANN for private use (2024)
)
# Loopback, RFC 1918 private, link-local; IPv6 loopback, unique local, link-local.
LOCAL_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
        "::1/128", "fc00::/7", "fe80::/10",
    )
)


@dataclass
class LocalCA:
    """The CA certificate, and its key when this process may issue from it."""

    cert: x509.Certificate
    cert_path: Path
    key: ec.EllipticCurvePrivateKey | None = None
    created: bool = False
    warnings: list[str] = field(default_factory=list)

    def public(self) -> LocalCA:
        """The same CA without its key: what the web pages and the banner get."""
        return LocalCA(self.cert, self.cert_path, None, self.created, list(self.warnings))

    @property
    def name(self) -> str:
        return self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()

    @property
    def sha1_fingerprint(self) -> str:
        # Only because Windows' import dialog shows nothing else ("Thumbprint (sha1)").
        return self.cert.fingerprint(hashes.SHA1()).hex(":").upper()

    @property
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def constraints(self) -> x509.NameConstraints | None:
        try:
            return self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return None

    @property
    def permitted_names(self) -> list[str]:
        return [t.value for t in (self.constraints and self.constraints.permitted_subtrees or [])
                if isinstance(t, x509.DNSName)]

    @property
    def permitted_networks(self) -> list[IPNetwork]:
        return [t.value for t in (self.constraints and self.constraints.permitted_subtrees or [])
                if isinstance(t, x509.IPAddress)]

    def permits(self, name: str | IPAddress) -> bool:
        """Whether a certificate this CA issues for `name` passes its own name constraints."""
        return permitted(self.constraints, name)


def permitted(constraints: x509.NameConstraints | None, name: str | IPAddress) -> bool:
    """RFC 5280's rule for one DNS name or IP address against permitted/excluded subtrees."""
    if constraints is None:
        return True
    if isinstance(name, str):
        try:
            name = ipaddress.ip_address(name)
        except ValueError:
            pass
    if isinstance(name, str):
        kind, matches = x509.DNSName, lambda tree: _dns_within(name.lower().rstrip("."), tree.lower())
    else:
        kind, matches = x509.IPAddress, lambda tree: isinstance(tree, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and name.version == tree.version and name in tree
    excluded = [t.value for t in constraints.excluded_subtrees or [] if isinstance(t, kind)]
    if any(matches(tree) for tree in excluded):
        return False
    allowed = [t.value for t in constraints.permitted_subtrees or [] if isinstance(t, kind)]
    return not allowed or any(matches(tree) for tree in allowed)


def _dns_within(name: str, tree: str) -> bool:
    return name == tree or name.endswith("." + tree)


def local_constraints(hostname: str, extra_names: tuple[str, ...] = ()) -> x509.NameConstraints:
    """What a LAN server needs, and nothing a public site has.

    A bare single-label host name (``vm``, ``dev``) is left out on purpose: a constraint
    permits every name under it, and a single label may be a top-level domain (``.dev`` is
    Google's). Its mDNS name ``vm.local`` is covered by ``local`` anyway. A fully qualified host
    name (``box.example.com``) is this machine's own, so it is permitted with the names under it.
    """
    names = list(LOCAL_SUFFIXES)
    for candidate in (hostname, *extra_names):
        candidate = candidate.strip().rstrip(".").lower()
        if "." not in candidate or _is_address(candidate):
            continue
        if not any(_dns_within(candidate, tree) for tree in names):
            names.append(candidate)
    subtrees = [x509.DNSName(n) for n in names] + [x509.IPAddress(n) for n in LOCAL_NETWORKS]
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------
# Making, loading and checking the CA


def ensure_ca(
    tls_dir: Path, *, hostname: str, now: dt.datetime, extra_names: tuple[str, ...] = ()
) -> LocalCA:
    """The CA in `tls_dir`, made on first use; its key is loaded for issuing."""
    cert_path, key_path = tls_dir / CA_CERT, tls_dir / CA_KEY
    if not cert_path.exists():
        return _create(cert_path, key_path, hostname, extra_names, now)
    ca = _load(cert_path, key_path)
    if now >= ca.not_after:
        raise TLSConfigError(
            f"the local CA {cert_path} expired on {ca.not_after:%Y-%m-%d}; move {CA_CERT} and "
            f"{CA_KEY} out of {tls_dir} to make a new one (every device must then install the new "
            "one), or serve with --self-signed")
    days = (ca.not_after - now).days
    if days < 365:
        ca.warnings.append(f"the local CA expires in {days} days, on {ca.not_after:%Y-%m-%d}")
    return ca


def load_ca(tls_dir: Path) -> LocalCA | None:
    """The CA certificate alone (no key), for showing and exporting; None if there is none."""
    cert_path = Path(tls_dir) / CA_CERT
    if not cert_path.exists():
        return None
    return LocalCA(read_cert(cert_path), cert_path)


def _load(cert_path: Path, key_path: Path) -> LocalCA:
    replace_hint = (f"restore it, or move {CA_CERT} out of {cert_path.parent} to make a new CA "
                    "(every device must then install the new one)")
    cert = read_cert(cert_path)
    try:
        key = read_key(key_path)
    except TLSConfigError as exc:
        raise TLSConfigError(f"the local CA's key cannot be used ({exc}); {replace_hint}") from None
    if not key_matches(cert, key):
        raise TLSConfigError(f"the local CA's key {key_path} does not match {cert_path}; {replace_hint}")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _is_ca(cert):
        raise TLSConfigError(f"{cert_path} is not a securechat local CA; {replace_hint}")
    ca = LocalCA(cert, cert_path, key)
    warning = tighten_mode(key_path)
    if warning:
        ca.warnings.append(warning)
    return ca


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _create(cert_path: Path, key_path: Path, hostname: str, extra_names: tuple[str, ...],
            now: dt.datetime) -> LocalCA:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build(key, hostname, extra_names, now)
    # Key first: a crash in between leaves no certificate, so the next start makes both anew
    # (no device can have trusted a certificate that was never written).
    write_private(key_path, key_pem(key))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return LocalCA(cert, cert_path, key, created=True)


def _build(key: ec.EllipticCurvePrivateKey, hostname: str, extra_names: tuple[str, ...],
           now: dt.datetime) -> x509.Certificate:
    public_key = key.public_key()
    # The serialNumber attribute tells apart the CAs of two data dirs on one machine: a trust
    # store holding two roots with the same name confuses some verifiers' path building.
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"securechat local CA on {hostname or 'localhost'}"[:64]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securechat"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, x509.SubjectKeyIdentifier.from_public_key(public_key).digest[:8].hex()),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        # path_length 0: it issues server certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(local_constraints(hostname, extra_names), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
