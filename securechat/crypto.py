"""The cryptographic framing of protocol v2 (docs/PROTOCOL.md §2–§7), free of any I/O.

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

PROTOCOL_VERSION = 2
SESSION_LABEL = "securechat/v2 session"
MESSAGE_LABEL = "securechat/v2 msg"
LEAF_LABEL = "securechat/v2 leaf"
KEY_LABEL = b"securechat/v2 key\n"
MAX_RECIPIENTS = 256  # a protocol constant: the Merkle path must fit in the wrapped key (§7.3)
NODE_BYTES = 16
PAD_BUCKETS = tuple(256 << i for i in range(9))  # 256 B .. 64 KiB (§7.1)
# Client security limits (§6.3): the client's own constants; a server may only make them stricter.
MAX_CLOCK_SKEW_MS = 300_000
SESSION_MAX_AGE_MS = 2 * 3600_000
SESSION_ROTATE_MS = 3600_000
RSA_EXPONENT = 65537
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 4096
SIGNATURE_BYTES = 64
IV_BYTES = 12
AES_KEY_BYTES = 32

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_ECDSA = ec.ECDSA(hashes.SHA256())


class CryptoError(ValueError):
    """A key, signature or ciphertext that protocol v2 does not accept."""


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


def session_text(room: str, username: str, session_spki_b64: str, issued: int, challenge: str,
                 stream: str) -> bytes:
    """The session statement (§4): this identity uses this session key, since `issued`."""
    return text_lines(SESSION_LABEL, room, username, session_spki_b64, str(issued), challenge, stream)


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
        except (ValueError, CryptoError) as exc:
            raise CryptoError("the wrapped key does not unwrap with this session key") from exc


def wrap_key(session_key: rsa.RSAPublicKey, payload: bytes) -> str:
    return b64encode(session_key.encrypt(payload, _OAEP))


def sign_session(identity: Identity, room: str, username: str, session_spki_b64: str, issued: int,
                 challenge: str, stream: str) -> str:
    return identity.sign(session_text(room, username, session_spki_b64, issued, challenge, stream))


def session_age_problem(issued: int, now_ms: int, max_age_ms: int = SESSION_MAX_AGE_MS,
                        skew_ms: int = MAX_CLOCK_SKEW_MS) -> str | None:
    """Why a session statement is not fresh (§4), or None."""
    if issued > now_ms + skew_ms:
        return "its session statement is dated in the future"
    if issued < now_ms - max_age_ms:
        return "its session key is older than the maximum session age"
    return None


# -- messages (§7) ---------------------------------------------------------------------------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def recipients_commitment(sids) -> str:
    """`to`: b64 SHA-256 of the sorted recipient sids joined with "," (§7.2)."""
    return b64encode(sha256(",".join(sorted(sids)).encode("ascii")))


def key_commitment(message_key: bytes) -> str:
    """`kc`: binds the header to one message key, so AES-GCM cannot open two ways (§7.2)."""
    return sha256(KEY_LABEL + message_key).hex()


def leaf_hash(msg_id: str, sid: str, seq: int) -> bytes:
    return sha256(b"\x00" + text_lines(LEAF_LABEL, msg_id, sid, str(seq)))[:NODE_BYTES]


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)[:NODE_BYTES]


def _split(n: int) -> int:
    """RFC 6962 §2.1: the largest power of two smaller than n."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def merkle_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def merkle_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 audit path of leaves[index], the sibling nearest the leaf first."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return merkle_path(index, leaves[:k]) + [merkle_root(leaves[k:])]
    return merkle_path(index - k, leaves[k:]) + [merkle_root(leaves[:k])]


def path_length(index: int, n: int) -> int:
    depth = 0
    while n > 1:
        k = _split(n)
        index, n = (index, k) if index < k else (index - k, n - k)
        depth += 1
    return depth


def root_from_path(index: int, n: int, leaf: bytes, path: list[bytes]) -> bytes:
    """The root a leaf and its path lead to (RFC 9162 §2.1.3.2, recursively)."""
    if n == 1:
        if path:
            raise CryptoError("the Merkle path is too long")
        return leaf
    if not path:
        raise CryptoError("the Merkle path is too short")
    k = _split(n)
    if index < k:
        return node_hash(root_from_path(index, k, leaf, path[:-1]), path[-1])
    return node_hash(path[-1], root_from_path(index - k, n - k, leaf, path[:-1]))


def message_header(room: str, fingerprint: str, sid: str, msg_id: str, ts: int, n: int, to: str,
                   root: str, kc: str) -> str:
    return "\n".join([MESSAGE_LABEL, room, fingerprint, sid, msg_id, str(ts), str(n), to, root, kc])


def signed_text(header: str, iv_b64: str, ct_b64: str) -> bytes:
    return text_lines(header, iv_b64, ct_b64)


def pad(data: bytes) -> bytes:
    """§7.1: 0x80 then zeros up to the smallest bucket that holds it."""
    for bucket in PAD_BUCKETS:
        if len(data) + 1 <= bucket:
            return data + b"\x80" + bytes(bucket - len(data) - 1)
    raise CryptoError(f"the message is too long (more than {PAD_BUCKETS[-1] - 1} bytes)")


def unpad(data: bytes) -> bytes:
    if len(data) not in PAD_BUCKETS:
        raise CryptoError("the plaintext is not padded to a bucket size")
    end = len(data.rstrip(b"\x00"))
    if end == 0 or data[end - 1] != 0x80:
        raise CryptoError("the plaintext padding is malformed")
    return data[: end - 1]


def encode_plaintext(text: str, extra: dict | None = None) -> bytes:
    """§7.1: {"text": ...}, plus optional fields such as an attachment's "files" (§10.4), padded."""
    body = {"text": text, **(extra or {})}
    return pad(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def decode_body(data: bytes) -> dict:
    """The whole plaintext object; it must at least hold a "text" string."""
    try:
        body = json.loads(unpad(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CryptoError("the plaintext is not UTF-8 JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise CryptoError('the plaintext has no "text" string')
    return body


def decode_plaintext(data: bytes) -> str:
    return decode_body(data)["text"]


def key_payload(message_key: bytes, n: int, index: int, seq: int, path: list[bytes]) -> bytes:
    """What is RSA-OAEP-wrapped to one recipient (§7.3): key ‖ n ‖ index ‖ seq ‖ path."""
    return (message_key + n.to_bytes(2, "big") + index.to_bytes(2, "big") + seq.to_bytes(8, "big")
            + b"".join(path))


@dataclass(frozen=True)
class KeyPayload:
    message_key: bytes
    n: int
    index: int
    seq: int
    path: list[bytes]


def parse_key_payload(raw: bytes) -> KeyPayload:
    if len(raw) < 44 or (len(raw) - 44) % NODE_BYTES:
        raise CryptoError("the wrapped key payload has the wrong length")
    n, index, seq = int.from_bytes(raw[32:34], "big"), int.from_bytes(raw[34:36], "big"), int.from_bytes(raw[36:44], "big")
    path = [raw[i : i + NODE_BYTES] for i in range(44, len(raw), NODE_BYTES)]
    if not 1 <= n <= MAX_RECIPIENTS or index >= n or not 1 <= seq < 2**53 or len(path) != path_length(index, n):
        raise CryptoError("the wrapped key payload is malformed")
    return KeyPayload(raw[:32], n, index, seq, path)


@dataclass(frozen=True)
class Recipient:
    """A roster entry whose session statement the sender has verified, with its next sequence number."""

    sid: str
    session_key: rsa.RSAPublicKey
    seq: int = 1


def seal_message(
    *,
    identity: Identity,
    sender_sid: str,
    room: str,
    text: str,
    recipients: list[Recipient],
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
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise CryptoError(f"a message has 1 to {MAX_RECIPIENTS} recipients")
    ts = int(time.time() * 1000) if ts is None else ts
    msg_id = os.urandom(16).hex() if msg_id is None else msg_id
    message_key = AESGCM.generate_key(bit_length=256) if message_key is None else message_key
    iv = os.urandom(IV_BYTES) if iv is None else iv
    ordered = sorted(recipients, key=lambda r: r.sid)
    leaves = [leaf_hash(msg_id, r.sid, r.seq) for r in ordered]
    n = len(ordered)
    to = recipients_commitment(r.sid for r in ordered)
    header = message_header(room, identity.fingerprint, sender_sid, msg_id, ts, n, to,
                            merkle_root(leaves).hex(), key_commitment(message_key))
    ct_b64 = b64encode(AESGCM(message_key).encrypt(iv, encode_plaintext(text, extra), header.encode()))
    iv_b64 = b64encode(iv)
    keys = {
        r.sid: wrap_key(r.session_key, key_payload(message_key, n, i, r.seq, merkle_path(i, leaves)))
        for i, r in enumerate(ordered)
    }
    frame = {
        "v": PROTOCOL_VERSION, "type": "msg", "id": msg_id, "ts": ts, "iv": iv_b64, "ct": ct_b64,
        "to": to, "sig": identity.sign(signed_text(header, iv_b64, ct_b64)), "keys": keys,
    }
    if attachments:
        frame["attachments"] = list(attachments)
    return frame


@dataclass(frozen=True)
class Opened:
    text: str
    seq: int
    n: int
    to: str
    body: dict  # the whole plaintext object: text plus e.g. "files" (§10.4)


def open_message(frame: dict, room: str, sender_fingerprint: str, sender_identity_key,
                 session: SessionKey) -> Opened:
    """Verify and decrypt a relayed msg frame (§7.4 steps 2-5).

    Roster membership, sequence numbers and clock checks need client state: client.py.
    """
    payload = parse_key_payload(session.unwrap(frame["key"]))
    leaf = leaf_hash(frame["id"], session.sid, payload.seq)
    root = root_from_path(payload.index, payload.n, leaf, payload.path)
    try:
        header = message_header(room, sender_fingerprint, frame["from"], frame["id"], frame["ts"],
                                payload.n, frame["to"], root.hex(), key_commitment(payload.message_key))
        signed = signed_text(header, frame["iv"], frame["ct"])
    except (TypeError, AttributeError) as exc:
        raise CryptoError("the message frame is malformed") from exc
    if not verify(sender_identity_key, signed, frame["sig"]):
        raise CryptoError("the message signature does not verify (or a key or path does not match it)")
    try:
        plaintext = AESGCM(payload.message_key).decrypt(
            b64decode(frame["iv"]), b64decode(frame["ct"]), header.encode()
        )
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("the message does not decrypt") from exc
    return Opened(decode_plaintext(plaintext), payload.seq, payload.n, frame["to"], decode_body(plaintext))
