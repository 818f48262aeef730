"""The local CA: what it is, what it may sign, and that it never changes under a device.

Name constraints are checked by three independent verifiers: cryptography's path validation
(`x509.verification`), `openssl verify`, and Python's ssl module in a real TLS handshake. Each
check has a control (the same certificate from an unconstrained CA passes), so a test cannot
pass because of something other than the constraint. Chromium's own enforcement is proved in
tests/browser/test_local_ca.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import plistlib
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from forge import forge as forged
from forge import unconstrained_ca as unconstrained

from securechat.tls import (
    TLSConfigError,
    ensure_local_ca,
    ensure_self_signed,
    load_ca,
    profiles,
)
from securechat.tls.ca import (
    CA_VALIDITY,
    LOCAL_NETWORKS,
    LOCAL_SUFFIXES,
    local_constraints,
    permitted,
)

HOST = "testbox"
LAN = [ipaddress.ip_address("192.168.1.20"), ipaddress.ip_address("fd00::20")]
PUBLIC_V6 = ipaddress.ip_address("2001:db8::20")  # documentation range: stands in for a global address
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def issue(data_dir: Path, **overrides):
    kwargs = {"hostname": HOST, "addresses": LAN, "now": T0, **overrides}
    return ensure_local_ca(data_dir, **kwargs)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ca_key(data_dir: Path):
    return serialization.load_pem_private_key((data_dir / "tls" / "ca-key.pem").read_bytes(), None)


def forge(issuer_cert: x509.Certificate, issuer_key, names: list[str], now: dt.datetime = T0) -> x509.Certificate:
    """A server certificate for `names`, signed directly with a CA key (what a thief would do)."""
    return forged(issuer_cert, issuer_key, names, now)[0]


def unconstrained_ca(now: dt.datetime = T0):
    return unconstrained(now)


def verifies(root: x509.Certificate, leaf: x509.Certificate, name: str, now: dt.datetime = T0) -> bool:
    """cryptography's RFC 5280 / CA/B Forum path validation, as a TLS client for `name`."""
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([root])).time(now + dt.timedelta(hours=1)).build_server_verifier(subject)
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


def openssl_verify(tmp_path: Path, root: x509.Certificate, leaf: x509.Certificate, now: dt.datetime = T0):
    root_path, leaf_path = tmp_path / "root.pem", tmp_path / "leaf.pem"
    root_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    at = int((now + dt.timedelta(hours=1)).timestamp())
    return subprocess.run(["openssl", "verify", "-attime", str(at), "-purpose", "sslserver", "-CAfile",
                           str(root_path), str(leaf_path)], capture_output=True, text=True, timeout=20)


# --------------------------------------------------------------------------
# the CA itself


def test_first_start_makes_a_name_constrained_ca_and_issues_from_it(tmp_path):
    status = issue(tmp_path)
    tls_dir = tmp_path / "tls"
    ca = read(tls_dir / "ca.pem")
    leaf = read(tls_dir / "cert.pem")
    assert status.ca.created and status.generated and status.reason == "no certificate yet"

    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical and constraints.value.excluded_subtrees is None
    permitted_values = [t.value for t in constraints.value.permitted_subtrees]
    assert permitted_values == [*LOCAL_SUFFIXES, *LOCAL_NETWORKS]
    assert LOCAL_SUFFIXES == ("localhost", "local", "lan", "home.arpa", "internal")
    assert [str(n) for n in LOCAL_NETWORKS] == [
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
        "::1/128", "fc00::/7", "fe80::/10"]
    assert ca.subject == ca.issuer and ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        f"securechat local CA on {HOST}"
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == CA_VALIDITY + dt.timedelta(minutes=5)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)

    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=397)
    # The bare single-label host name is not signable (see local_constraints); its .local name is.
    assert status.sans == ["localhost", f"{HOST}.local", "127.0.0.1", "::1", "192.168.1.20", "fd00::20"]
    assert status.not_covered == [] and status.issuer.startswith("serialNumber=") and not status.self_signed
    assert status.ca.fingerprint == ca.fingerprint(hashes.SHA256()).hex(":").upper()


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_ca_files_are_owner_only_whatever_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        issue(tmp_path)
    finally:
        os.umask(old)
    tls_dir = tmp_path / "tls"
    assert mode(tls_dir) == 0o700
    assert mode(tls_dir / "ca-key.pem") == 0o600 and mode(tls_dir / "key.pem") == 0o600
    assert mode(tls_dir / "ca.pem") == 0o644 and mode(tls_dir / "cert.pem") == 0o644
    assert sorted(p.name for p in tls_dir.iterdir()) == ["ca-key.pem", "ca.pem", "cert.pem", "key.pem"]


def test_a_loose_ca_key_is_tightened_with_a_warning(tmp_path):
    issue(tmp_path)
    (tmp_path / "tls" / "ca-key.pem").chmod(0o640)
    again = issue(tmp_path)
    assert mode(tmp_path / "tls" / "ca-key.pem") == 0o600
    assert any("ca-key.pem was readable by other users (mode 640)" in w for w in again.warnings)


# --------------------------------------------------------------------------
# the CA survives restarts, renewals, new addresses and host names


def test_restart_reuses_the_ca_and_the_certificate(tmp_path):
    first = issue(tmp_path)
    ca_bytes = (tmp_path / "tls" / "ca-key.pem").read_bytes()
    second = issue(tmp_path, now=T0 + dt.timedelta(days=100))
    assert not second.ca.created and not second.generated
    assert second.ca.fingerprint == first.ca.fingerprint and second.fingerprint == first.fingerprint
    assert (tmp_path / "tls" / "ca-key.pem").read_bytes() == ca_bytes


@pytest.mark.parametrize("change, reason", [
    ({"now": T0 + dt.timedelta(days=370)}, "the certificate expires in 26 days"),
    ({"addresses": [*LAN, ipaddress.ip_address("10.0.0.7")]}, "the certificate does not cover 10.0.0.7"),
    ({"hostname": "otherbox"}, "the certificate does not cover otherbox.local"),
    ({"extra_names": ("chat.lan",)}, "the certificate does not cover chat.lan"),
])
def test_renewal_reissues_the_certificate_never_the_ca(tmp_path, change, reason):
    first = issue(tmp_path)
    renewed = issue(tmp_path, **change)
    assert renewed.generated and renewed.reason == reason
    assert renewed.fingerprint != first.fingerprint
    assert renewed.ca.fingerprint == first.ca.fingerprint and not renewed.ca.created
    ca = read(tmp_path / "tls" / "ca.pem")
    leaf = read(tmp_path / "tls" / "cert.pem")
    now = change.get("now", T0)
    assert verifies(ca, leaf, "localhost", now) and verifies(ca, leaf, "192.168.1.20", now)


def test_switching_between_self_signed_and_the_ca_reissues_and_keeps_the_ca(tmp_path):
    first = issue(tmp_path)
    self_signed = ensure_self_signed(tmp_path, hostname=HOST, addresses=LAN, now=T0)
    assert self_signed.generated and self_signed.reason == "the certificate is not self-signed"
    assert self_signed.self_signed and self_signed.ca is None
    back = issue(tmp_path)
    assert back.generated and back.reason == "the certificate was not issued by the local CA"
    assert back.ca.fingerprint == first.ca.fingerprint and not back.self_signed


def test_a_v1_self_signed_certificate_is_replaced_by_a_ca_issued_one(tmp_path):
    v1 = ensure_self_signed(tmp_path, hostname=HOST, addresses=LAN, now=T0)
    status = issue(tmp_path)
    assert status.generated and status.reason == "the certificate was not issued by the local CA"
    assert status.fingerprint != v1.fingerprint and status.ca.created


def test_public_addresses_are_left_out_and_said_so_without_reissuing_every_start(tmp_path):
    first = issue(tmp_path, addresses=[*LAN, PUBLIC_V6, ipaddress.ip_address("203.0.113.9")])
    assert first.not_covered == ["203.0.113.9", str(PUBLIC_V6)]
    assert str(PUBLIC_V6) not in first.sans and "203.0.113.9" not in first.sans
    second = issue(tmp_path, addresses=[*LAN, PUBLIC_V6, ipaddress.ip_address("203.0.113.9")])
    assert not second.generated and second.not_covered == first.not_covered


def test_a_fully_qualified_host_name_is_permitted_from_the_start_only(tmp_path):
    status = issue(tmp_path, hostname="box.example.org")
    assert "box.example.org" in status.ca.permitted_names and "box.example.org" in status.sans
    later = issue(tmp_path, hostname="other.example.org")
    assert later.not_covered == ["other.example.org"] and "other.example.org" not in later.sans
    assert later.ca.fingerprint == status.ca.fingerprint


def test_the_configured_canonical_host_is_covered(tmp_path):
    status = issue(tmp_path, extra_names=("chat.example.org", "10.1.2.3"))
    assert {"chat.example.org", "10.1.2.3"} <= set(status.sans)
    assert "chat.example.org" in status.ca.permitted_names


# --------------------------------------------------------------------------
# a damaged CA stops the server; it is never silently replaced


def test_a_missing_ca_key_is_an_error_and_the_ca_is_kept(tmp_path):
    issue(tmp_path)
    ca_pem = (tmp_path / "tls" / "ca.pem").read_bytes()
    (tmp_path / "tls" / "ca-key.pem").unlink()
    with pytest.raises(TLSConfigError, match=r"the local CA's key cannot be used .*does not exist.*restore it, "
                                             r"or move ca.pem out of"):
        issue(tmp_path)
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == ca_pem


def test_a_foreign_ca_key_is_an_error(tmp_path):
    issue(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "tls" / "ca-key.pem").write_bytes(other)
    with pytest.raises(TLSConfigError, match="does not match"):
        issue(tmp_path)


def test_an_expired_ca_is_an_error_and_a_nearly_expired_one_a_warning(tmp_path):
    first = issue(tmp_path)
    late = first.ca.not_after - dt.timedelta(days=100)
    status = issue(tmp_path, now=late)
    assert any(w.startswith("the local CA expires in 100 days") for w in status.warnings)
    assert status.not_after <= first.ca.not_after
    with pytest.raises(TLSConfigError, match=r"the local CA .*ca.pem expired on .*--self-signed"):
        issue(tmp_path, now=first.ca.not_after + dt.timedelta(seconds=1))


def test_a_certificate_made_without_its_ca_key_is_remade(tmp_path):
    """Key first, then certificate: a crash in between leaves a key alone, which is replaced."""
    (tmp_path / "tls").mkdir(mode=0o700)
    (tmp_path / "tls" / "ca-key.pem").write_bytes(b"left over")
    status = issue(tmp_path)
    assert status.ca.created and status.ca.key is not None


# --------------------------------------------------------------------------
# what the CA may sign: the name constraints, proved with real verifiers


SIGNABLE = ["localhost", "app.localhost", "testbox.local", "printer.lan", "nas.home.arpa", "svc.internal",
            "127.0.0.1", "10.20.30.40", "172.31.255.1", "192.168.0.1", "169.254.3.4", "::1", "fd12:3456::1",
            "fe80::1"]
FORBIDDEN = ["example.com", "www.google.com", "lan.example.com", "localhost.example.com", "testbox",
             "8.8.8.8", "100.64.0.1", "172.32.0.1", "192.169.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("name", SIGNABLE)
def test_our_ca_signs_lan_names(tmp_path, name):
    issue(tmp_path)
    ca = read(tmp_path / "tls" / "ca.pem")
    leaf = forge(ca, ca_key(tmp_path), [name])
    assert load_ca(tmp_path / "tls").permits(name)
    assert verifies(ca, leaf, name)


@pytest.mark.parametrize("name", FORBIDDEN)
def test_a_certificate_for_a_public_name_from_our_ca_key_fails_verification(tmp_path, name):
    issue(tmp_path)
    ca = read(tmp_path / "tls" / "ca.pem")
    leaf = forge(ca, ca_key(tmp_path), [name])
    assert not load_ca(tmp_path / "tls").permits(name)
    assert not verifies(ca, leaf, name)
    # Control: the very same kind of certificate from an unconstrained CA passes.
    other, other_key = unconstrained_ca()
    assert verifies(other, forge(other, other_key, [name]), name)


def test_one_public_name_anywhere_in_a_certificate_spoils_it(tmp_path):
    issue(tmp_path)
    ca = read(tmp_path / "tls" / "ca.pem")
    assert verifies(ca, forge(ca, ca_key(tmp_path), ["localhost", "127.0.0.1"]), "localhost")
    assert not verifies(ca, forge(ca, ca_key(tmp_path), ["localhost", "example.com"]), "localhost")
    assert not verifies(ca, forge(ca, ca_key(tmp_path), ["127.0.0.1", "8.8.8.8"]), "127.0.0.1")


def test_openssl_verify_rejects_example_com_and_accepts_ours(tmp_path):
    issue(tmp_path)
    ca = read(tmp_path / "tls" / "ca.pem")
    ours = openssl_verify(tmp_path, ca, read(tmp_path / "tls" / "cert.pem"))
    assert ours.returncode == 0 and ours.stdout.strip().endswith(": OK"), ours.stderr
    forged = openssl_verify(tmp_path, ca, forge(ca, ca_key(tmp_path), ["example.com"]))
    assert forged.returncode != 0 and "permitted subtree violation" in forged.stderr
    forged_ip = openssl_verify(tmp_path, ca, forge(ca, ca_key(tmp_path), ["8.8.8.8"]))
    assert forged_ip.returncode != 0 and "permitted subtree violation" in forged_ip.stderr
    other, other_key = unconstrained_ca()
    control = openssl_verify(tmp_path, other, forge(other, other_key, ["example.com"]))
    assert control.returncode == 0, control.stderr


def test_the_issued_certificate_passes_path_validation_for_every_name_it_carries(tmp_path):
    status = issue(tmp_path, now=dt.datetime.now(dt.timezone.utc))
    ca = read(tmp_path / "tls" / "ca.pem")
    leaf = read(tmp_path / "tls" / "cert.pem")
    for name in status.sans:
        assert verifies(ca, leaf, name, dt.datetime.now(dt.timezone.utc)), name


@pytest.mark.parametrize("name, allowed", [
    ("LocalHost", True), ("a.b.LAN.", True), ("home.arpa", True), ("arpa", False), ("xlan", False),
    ("192.168.1.1", True), ("[fd00::1]", False),  # brackets belong to URLs, not names
    (ipaddress.ip_address("fe80::1"), True), (ipaddress.ip_address("9.9.9.9"), False),
])
def test_permitted_follows_rfc_5280(name, allowed):
    assert permitted(local_constraints("vm"), name) is allowed


def test_single_label_host_names_are_never_permitted():
    """`dev` is a host name and Google's top-level domain; permitting it would permit *.dev."""
    for hostname in ("vm", "dev", "app"):
        constraints = local_constraints(hostname)
        assert not permitted(constraints, hostname) and not permitted(constraints, f"www.google.{hostname}")
        assert permitted(constraints, f"{hostname}.local")


# --------------------------------------------------------------------------
# the forms devices install


def test_der_and_mobileconfig_hold_the_same_ca(tmp_path):
    issue(tmp_path)
    ca = load_ca(tmp_path / "tls")
    assert x509.load_der_x509_certificate(ca.der()) == read(tmp_path / "tls" / "ca.pem")
    profile = plistlib.loads(profiles.mobileconfig(ca))
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    assert ca.fingerprint in profile["PayloadDescription"]
    (payload,) = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.security.root"
    assert payload["PayloadContent"] == ca.der()
    assert payload["PayloadDisplayName"] == f"securechat local CA on {HOST}"
    assert payload["PayloadIdentifier"].startswith(profile["PayloadIdentifier"] + ".")
    assert profile["PayloadUUID"] != payload["PayloadUUID"]
    # The same CA always gives the same profile: iOS replaces it instead of adding another.
    assert profiles.mobileconfig(load_ca(tmp_path / "tls")) == profiles.mobileconfig(ca)
    other = tmp_path / "other"
    issue(other)
    assert plistlib.loads(profiles.mobileconfig(load_ca(other / "tls")))["PayloadUUID"] != profile["PayloadUUID"]


def test_load_ca_without_a_ca(tmp_path):
    assert load_ca(tmp_path / "tls") is None
