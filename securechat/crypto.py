"""The cryptographic framing of protocol v1 (docs/PROTOCOL.md §2–§7), free of any I/O.

The server uses the key-parsing and signature checks at join; the Python reference client and
the benchmark use the rest to build and open messages exactly as the browser does.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PROTOCOL_VERSION = 1
SESSION_LABEL = "securechat/v1 session"
MESSAGE_LABEL = "securechat/v1 msg"
RSA_EXPONENT = 65537
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 4096
SIGNATURE_BYTES = 64
IV_BYTES = 12
AES_KEY_BYTES = 32

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_ECDSA = ec.ECDSA(hashes.SHA256())


class CryptoError(ValueError):
    """A key, signature or ciphertext that protocol v1 does not accept."""


# -- encodings -------------------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode canonical padded base64; anything else is a CryptoError."""
    try:
        data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise CryptoError("not valid base64") from exc
    # strict_mode still accepts non-zero padding bits; canonical form makes the string unique.
    if b64encode(data) != text:
        raise CryptoError("not canonical base64")
    return data


def b64_length(byte_count: int) -> int:
    """Length of the padded base64 text for byte_count bytes."""
    return 4 * ((byte_count + 2) // 3)


def text_lines(*fields: str) -> bytes:
    return "\n".join(fields).encode("utf-8")


# -- identities and sessions ----------------------------------------------------------------


def spki_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint_of(identity_spki: bytes) -> str:
    return hashlib.sha256(identity_spki).hexdigest()


def group_fingerprint(fingerprint: str) -> str:
    """The form people compare: 16 groups of four hex digits."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


def session_id_of(session_spki: bytes) -> str:
    return hashlib.sha256(session_spki).hexdigest()[:32]


def load_identity_public_key(spki_b64: str) -> ec.EllipticCurvePublicKey:
    key = _load_spki(spki_b64)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError("the identity key must be an ECDSA P-256 public key")
    return key


def load_session_public_key(spki_b64: str) -> rsa.RSAPublicKey:
    key = _load_spki(spki_b64)
    if not isinstance(key, rsa.RSAPublicKey):
        raise CryptoError("the session key must be an RSA public key")
    numbers = key.public_numbers()
    if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS or key.key_size % 8:
        raise CryptoError(f"the session key must be 2048-4096 bits, not {key.key_size}")
    if numbers.e != RSA_EXPONENT:
        raise CryptoError("the session key's public exponent must be 65537")
    return key


def _load_spki(spki_b64: str):
    der = b64decode(spki_b64)
    try:
        key = serialization.load_der_public_key(der)
    except UnsupportedAlgorithm as exc:  # e.g. an EC curve OpenSSL does not implement
        raise CryptoError("the public key uses an unsupported algorithm or curve") from exc
    except (ValueError, TypeError) as exc:
        raise CryptoError("not a DER SubjectPublicKeyInfo public key") from exc
    # Re-encoding rejects trailing garbage and non-canonical DER, so the fingerprint is unique.
    if spki_der(key) != der:
        raise CryptoError("the public key is not in canonical DER form")
    return key


def session_text(room: str, username: str, session_spki_b64: str) -> bytes:
    return text_lines(SESSION_LABEL, room, username, session_spki_b64)


def verify(identity_key: ec.EllipticCurvePublicKey, data: bytes, sig_b64: str) -> bool:
    raw = b64decode(sig_b64)
    if len(raw) != SIGNATURE_BYTES:
        return False
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    try:
        identity_key.verify(encode_dss_signature(r, s), data, _ECDSA)
    except InvalidSignature:
        return False
    return True


@dataclass
class Identity:
    """A long-lived ECDSA P-256 signing key, like the one a browser keeps in IndexedDB."""

    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> "Identity":
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pkcs8(cls, pem_or_der: bytes) -> "Identity":
        if pem_or_der.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(pem_or_der, password=None)
        else:
            key = serialization.load_der_private_key(pem_or_der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CryptoError("an identity must be an EC private key")
        return cls(key)

    @property
    def spki_b64(self) -> str:
        return b64encode(spki_der(self.private_key.public_key()))

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(spki_der(self.private_key.public_key()))

    def sign(self, data: bytes) -> str:
        r, s = decode_dss_signature(self.private_key.sign(data, _ECDSA))
        return b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


@dataclass
class SessionKey:
    """The per-join RSA-OAEP key pair; its private half never leaves the process."""

    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, bits: int = 2048) -> "SessionKey":
        return cls(rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=bits))

    @property
    def spki_b64(self) -> str:
        return b64encode(spki_der(self.private_key.public_key()))

    @property
    def sid(self) -> str:
        return session_id_of(spki_der(self.private_key.public_key()))

    def unwrap(self, wrapped_b64: str) -> bytes:
        try:
            return self.private_key.decrypt(b64decode(wrapped_b64), _OAEP)
        except ValueError as exc:
            raise CryptoError("the wrapped key does not unwrap with this session key") from exc


def wrap_key(session_key: rsa.RSAPublicKey, message_key: bytes) -> str:
    return b64encode(session_key.encrypt(message_key, _OAEP))


def sign_session(identity: Identity, room: str, username: str, session_spki_b64: str) -> str:
    return identity.sign(session_text(room, username, session_spki_b64))


# -- messages --------------------------------------------------------------------------------


def message_header(
    room: str, fingerprint: str, sid: str, msg_id: str, ts: int, counter: int, recipients
) -> str:
    return "\n".join(
        [MESSAGE_LABEL, room, fingerprint, sid, msg_id, str(ts), str(counter), ",".join(recipients)]
    )


def signed_text(header: str, iv_b64: str, ct_b64: str) -> bytes:
    return text_lines(header, iv_b64, ct_b64)


def encode_plaintext(text: str, extra: dict | None = None) -> bytes:
    """§7.1: {"text": ...}, plus optional fields such as an attachment's "files" (§10.4)."""
    body = {"text": text, **(extra or {})}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_body(data: bytes) -> dict:
    """The whole plaintext object; it must at least hold a "text" string."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CryptoError("the plaintext is not UTF-8 JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise CryptoError('the plaintext has no "text" string')
    return body


def decode_plaintext(data: bytes) -> str:
    return decode_body(data)["text"]


@dataclass(frozen=True)
class Recipient:
    """A roster entry whose session signature the sender has verified."""

    sid: str
    session_key: rsa.RSAPublicKey


def seal_message(
    *,
    identity: Identity,
    sender_sid: str,
    room: str,
    text: str,
    recipients: list[Recipient],
    counter: int,
    ts: int | None = None,
    msg_id: str | None = None,
    message_key: bytes | None = None,
    iv: bytes | None = None,
    extra: dict | None = None,
    attachments: list[str] | None = None,
) -> dict:
    """Build a client->server msg frame (§7.3). Key/IV overrides exist only for test vectors.

    `extra` adds plaintext fields (§7.1); `attachments` lists the blob ids the message refers
    to, in the clear, so the server can log the reference and keep the blobs (§10.3).
    """
    ts = int(time.time() * 1000) if ts is None else ts
    msg_id = os.urandom(16).hex() if msg_id is None else msg_id
    message_key = AESGCM.generate_key(bit_length=256) if message_key is None else message_key
    iv = os.urandom(IV_BYTES) if iv is None else iv
    sids = sorted(r.sid for r in recipients)
    header = message_header(room, identity.fingerprint, sender_sid, msg_id, ts, counter, sids)
    ct_b64 = b64encode(AESGCM(message_key).encrypt(iv, encode_plaintext(text, extra), header.encode()))
    iv_b64 = b64encode(iv)
    frame = {
        "v": PROTOCOL_VERSION,
        "type": "msg",
        "id": msg_id,
        "ts": ts,
        "counter": counter,
        "iv": iv_b64,
        "ct": ct_b64,
        "sig": identity.sign(signed_text(header, iv_b64, ct_b64)),
        "keys": {r.sid: wrap_key(r.session_key, message_key) for r in recipients},
    }
    if attachments:
        frame["attachments"] = list(attachments)
    return frame


def relayed_header(frame: dict) -> str:
    sender = frame["from"]
    return message_header(
        frame["room"], sender["fingerprint"], sender["sid"], frame["id"], frame["ts"],
        frame["counter"], frame["recipients"],
    )


def open_message(frame: dict, sender_identity_key, session: SessionKey) -> str:
    """Verify and decrypt a relayed msg frame (§7.4 steps 2, 3 and 6); returns the text.

    Roster membership, replay and clock checks need client state and live in client.py.
    """
    return open_message_body(frame, sender_identity_key, session)["text"]


def open_message_body(frame: dict, sender_identity_key, session: SessionKey) -> dict:
    """Like open_message, but the whole plaintext object (text plus e.g. "files")."""
    recipients = frame["recipients"]
    if recipients != sorted(set(recipients)):
        raise CryptoError("the recipient list is not sorted and unique")
    if session.sid not in recipients:
        raise CryptoError("this message was not addressed to us")
    header = relayed_header(frame)
    if not verify(sender_identity_key, signed_text(header, frame["iv"], frame["ct"]), frame["sig"]):
        raise CryptoError("the message signature does not verify")
    message_key = session.unwrap(frame["key"])
    try:
        plaintext = AESGCM(message_key).decrypt(
            b64decode(frame["iv"]), b64decode(frame["ct"]), header.encode()
        )
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("the message does not decrypt") from exc
    return decode_body(plaintext)
