"""Frames of protocol v2 (docs/PROTOCOL.md §6): parse and validate client frames into typed
objects, and build server frames. Pure: no sockets, no clock, no room state.

Everything a client can get wrong raises ProtocolError with a stable code from §6.2.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from .. import crypto, names
from . import roomname

VERSION = crypto.PROTOCOL_VERSION
MAX_USERNAME = 32
MAX_CT_BYTES = 65536 + 16
# §7.1: padded plaintexts are one of these sizes, so the ciphertext's base64 length is one of these.
CT_B64_LENGTHS = frozenset(crypto.b64_length(bucket + 16) for bucket in crypto.PAD_BUCKETS)
RELOAD = "This server speaks protocol v2 now: reload the page to get the current securechat."
MAX_INT = 2**53 - 1
HEX32 = re.compile(r"[0-9a-f]{32}\Z")
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
MAX_ATTACHMENTS = 16
ROOM_NAME = roomname.ROOM_NAME
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class ProtocolError(Exception):
    """A frame the server refuses; `code` is the machine-readable §6.2 code."""

    def __init__(self, code: str, message: str, *, msg_id: str | None = None, stale=None, version: int = 2):
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id
        self.stale = stale
        self.version = version  # a v1 client reads only v1 frames: its refusal must be one


@dataclass(frozen=True)
class Join:
    username: str
    identity_key: str
    session_key: str
    issued: int
    challenge: str
    stream: str
    session_sig: str


@dataclass(frozen=True)
class Rekey:
    session_key: str
    issued: int
    challenge: str
    session_sig: str


@dataclass(frozen=True)
class Msg:
    id: str
    ts: int
    iv: str
    ct: str
    to: str
    sig: str
    keys: dict[str, str]
    attachments: tuple[str, ...] = ()  # blob ids (§10.3), in the clear so the log can keep them


@dataclass(frozen=True)
class RecipientsRequest:
    id: str


@dataclass(frozen=True)
class RosterRequest:
    pass


@dataclass(frozen=True)
class Leave:
    pass


Frame = Join | Rekey | Msg | RecipientsRequest | RosterRequest | Leave


# -- field checks ----------------------------------------------------------------------------


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError("bad_frame", f"{name} must be a string")
    return value


def _integer(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise ProtocolError("bad_frame", f"{name} must be an integer from {minimum} to 2^53-1")
    return value


def _b64(value: Any, name: str, *, size: int | None = None, max_size: int | None = None) -> str:
    text = _string(value, name)
    if size is not None and len(text) != crypto.b64_length(size):
        raise ProtocolError("bad_frame", f"{name} must be base64 of {size} bytes")
    if max_size is not None and len(text) > crypto.b64_length(max_size):
        raise ProtocolError("bad_frame", f"{name} must be at most {max_size} bytes")
    try:
        data = crypto.b64decode(text)
    except crypto.CryptoError as exc:
        raise ProtocolError("bad_frame", f"{name} is {exc}") from None
    if size is not None and len(data) != size:
        raise ProtocolError("bad_frame", f"{name} must be base64 of {size} bytes")
    return text


def _hex32(value: Any, name: str) -> str:
    if not isinstance(value, str) or not HEX32.match(value):
        raise ProtocolError("bad_frame", f"{name} must be 32 lowercase hex characters")
    return value


def check_username(username: str) -> str:
    """§5: the exact rules, so every client and the server agree on what a name may be."""
    if unicodedata.normalize("NFC", username) != username:
        raise ProtocolError("bad_username", "the username must be NFC-normalised")
    if username != username.strip():
        raise ProtocolError("bad_username", "the username must not start or end with white space")
    if not 1 <= len(username) <= MAX_USERNAME:
        raise ProtocolError("bad_username", f"the username must be 1 to {MAX_USERNAME} characters")
    for char in username:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise ProtocolError(
                "bad_username", f"the username must not contain U+{ord(char):04X}"
            )
    problem = names.script_problem(username)
    if problem is not None:
        raise ProtocolError("bad_username", problem)
    return username


check_room_name = roomname.check


# -- parsing ---------------------------------------------------------------------------------


def parse_frame(text: str, *, max_recipients: int = 256) -> Frame:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "the frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "the frame must be a JSON object")
    if data.get("v") == 1 and not isinstance(data.get("v"), bool):
        raise ProtocolError("unsupported_version", RELOAD, version=1)
    if data.get("v") != VERSION or isinstance(data.get("v"), bool):
        raise ProtocolError("unsupported_version", f"this server speaks protocol v{VERSION}")
    parser = _PARSERS.get(data.get("type")) if isinstance(data.get("type"), str) else None
    if parser is None:
        raise ProtocolError("unknown_type", f"unknown frame type {str(data.get('type'))[:40]!r}")
    fields, build = parser
    _check_fields(data, fields, _OPTIONAL.get(data["type"], frozenset()))
    return build(data, max_recipients)


def _check_fields(data: dict, fields: frozenset[str], optional: frozenset[str] = frozenset()) -> None:
    present = set(data) - {"v", "type"}
    if present - fields - optional:
        raise ProtocolError("bad_frame", f"unknown field {sorted(present - fields - optional)[0][:40]!r}")
    if fields - present:
        raise ProtocolError("bad_frame", f"missing field {sorted(fields - present)[0]!r}")


def _join(data: dict, _max_recipients: int) -> Join:
    return Join(
        username=check_username(_string(data["username"], "username")),
        identity_key=_b64(data["identity_key"], "identity_key", max_size=1024),
        session_key=_b64(data["session_key"], "session_key", max_size=1024),
        issued=_integer(data["issued"], "issued"),
        challenge=_hex32(data["challenge"], "challenge"),
        stream=_hex32(data["stream"], "stream"),
        session_sig=_b64(data["session_sig"], "session_sig", size=crypto.SIGNATURE_BYTES),
    )


def _rekey(data: dict, _max_recipients: int) -> Rekey:
    return Rekey(
        session_key=_b64(data["session_key"], "session_key", max_size=1024),
        issued=_integer(data["issued"], "issued"),
        challenge=_hex32(data["challenge"], "challenge"),
        session_sig=_b64(data["session_sig"], "session_sig", size=crypto.SIGNATURE_BYTES),
    )


def _msg(data: dict, max_recipients: int) -> Msg:
    msg_id = _hex32(data["id"], "id")
    try:
        ct = _b64(data["ct"], "ct", max_size=MAX_CT_BYTES)
        if len(ct) not in CT_B64_LENGTHS:
            raise ProtocolError("bad_frame", "ct must hold a plaintext padded to a bucket size (§7.1)")
        msg = Msg(
            id=msg_id,
            ts=_integer(data["ts"], "ts"),
            iv=_b64(data["iv"], "iv", size=crypto.IV_BYTES),
            ct=ct,
            to=_b64(data["to"], "to", size=32),
            sig=_b64(data["sig"], "sig", size=crypto.SIGNATURE_BYTES),
            keys=_keys(data["keys"], max_recipients),
            attachments=_attachments(data["attachments"]) if "attachments" in data else (),
        )
        if crypto.recipients_commitment(msg.keys) != msg.to:
            raise ProtocolError("bad_frame", "to is not the commitment to the recipients in keys")
        return msg
    except ProtocolError as exc:
        exc.msg_id = msg_id
        raise


def _attachments(value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not 1 <= len(value) <= MAX_ATTACHMENTS
            or not all(isinstance(v, str) and HEX64.match(v) for v in value)):
        raise ProtocolError("bad_frame", f"attachments must list 1 to {MAX_ATTACHMENTS} blob ids "
                            "(64 lowercase hex characters)")
    if len(set(value)) != len(value):
        raise ProtocolError("bad_frame", "attachments must not repeat a blob id")
    return tuple(value)


def _keys(value: Any, max_recipients: int) -> dict[str, str]:
    max_recipients = min(max_recipients, crypto.MAX_RECIPIENTS)
    if not isinstance(value, dict) or not 1 <= len(value) <= max_recipients:
        raise ProtocolError("bad_frame", f"keys must map 1 to {max_recipients} session ids to keys")
    if _all_hex32(value) and _all_canonical_b64(list(value.values()), crypto.RSA_MAX_BITS // 8):
        return value
    # Something is wrong: the per-entry checks name the first bad entry and say why.
    for sid, wrapped in value.items():
        _hex32(sid, "a keys entry's session id")
        _b64(wrapped, f"the wrapped key for {sid}", max_size=crypto.RSA_MAX_BITS // 8)
    return value


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The character before the padding carries bits the encoding does not use; canonical base64
# leaves them zero: 4 bits before "==", 2 bits before "=".
_ZERO_LOW4 = frozenset("AQgw")
_ZERO_LOW2 = frozenset("AEIMQUYcgkosw048")


_HEX_DIGITS = b"0123456789abcdef"


def _all_hex32(sids) -> bool:
    """True only if every sid is 32 lowercase hex digits (HEX32), checked in C: the lengths
    through a set, the alphabet over all of them at once. A regex match per sid was ~0.5 µs,
    a tenth of the cost of parsing a message to 250. JSON object keys are always strings."""
    if not set(map(len, sids)) <= {32}:
        return False
    try:
        return not "".join(sids).encode("ascii").translate(None, _HEX_DIGITS)
    except UnicodeEncodeError:
        return False


def _all_canonical_b64(texts: list, max_size: int) -> bool:
    """True only if every text is canonical padded base64 of at most max_size bytes.

    The same answer as crypto.b64decode's decode + re-encode test, without decoding: a message
    carries up to 256 wrapped keys, and decoding them all was a third of the cost of parsing it.
    Per text only the length and the padding are looked at; the alphabet once, over all, in C.
    False sends the caller to the per-entry checks, which find and describe the culprit.
    """
    try:
        joined = "".join(texts).encode("ascii")
    except (TypeError, UnicodeEncodeError):
        return False
    limit = crypto.b64_length(max_size)
    lengths = set(map(len, texts))
    if len(lengths) == 1:
        # Every key wrapped to the same modulus size (the usual room): the padding of all of
        # them at once, from every text's last three characters sliced out of the joined bytes.
        padding = _uniform_padding(joined, lengths.pop(), limit, len(texts))
        if padding is not None:
            return padding >= 0 and joined.translate(None, _B64_ALPHABET) == b"=" * padding
    padding = 0
    for text in texts:
        length = len(text)
        if length % 4 or length > limit:
            return False
        if length and text[-1] == "=":
            if text[-2] == "=":
                if text[-3] not in _ZERO_LOW4:
                    return False
                padding += 2
            elif text[-2] in _ZERO_LOW2:
                padding += 1
            else:
                return False
    # Outside the alphabet only the padding counted above may remain: no other character,
    # and no "=" anywhere but at the end of its text.
    return joined.translate(None, _B64_ALPHABET) == b"=" * padding


_LOW4 = "".join(sorted(_ZERO_LOW4)).encode()
_LOW2 = "".join(sorted(_ZERO_LOW2)).encode()


def _uniform_padding(joined: bytes, length: int, limit: int, count: int) -> int | None:
    """The "=" count of `count` texts of `length` characters each, joined: -1 if one of them
    is malformed (length, or the unused bits before its padding), None if they are not all
    padded alike (the caller then looks at each text)."""
    if length % 4 or length > limit:
        return -1
    if not length:
        return 0
    last = joined[length - 1::length]
    if b"=" not in last:
        return 0
    if last.count(b"=") != count:
        return None
    second = joined[length - 2::length]
    if second.count(b"=") == count:
        return 2 * count if not joined[length - 3::length].translate(None, _LOW4) else -1
    if b"=" in second:
        return None
    return count if not second.translate(None, _LOW2) else -1


_PARSERS: dict[str, tuple[frozenset[str], Callable[[dict, int], Frame]]] = {
    "join": (frozenset({"username", "identity_key", "session_key", "issued", "challenge", "stream",
                        "session_sig"}), _join),
    "rekey": (frozenset({"session_key", "issued", "challenge", "session_sig"}), _rekey),
    "msg": (frozenset({"id", "ts", "iv", "ct", "to", "sig", "keys"}), _msg),
    "recipients": (frozenset({"id"}), lambda data, _: RecipientsRequest(_hex32(data["id"], "id"))),
    "roster": (frozenset(), lambda data, _: RosterRequest()),
    "leave": (frozenset(), lambda data, _: Leave()),
}
_OPTIONAL: dict[str, frozenset[str]] = {"msg": frozenset({"attachments"})}


_PEEK_HITS = 4
_ID_FIELD = re.compile(r'"id"[ \t\r\n]*:[ \t\r\n]*"([0-9a-f]{32})"')


def peek_msg_id(text: str) -> str | None:
    """The `id` of a frame the server will not parse (a rate-limited one), or None.

    Dropping a frame over budget must stay cheap, so this never parses JSON: it looks for an
    `"id":"<32 hex>"` member with str.find and one anchored regex per hit, and gives up after a
    few hits (a real msg frame has exactly one `"id"`: its other keys are sids and its values
    base64). Nothing it returns can be anything but 32 lowercase hex digits, and it only ever
    goes back to the sender who wrote it, so a frame crafted to mislead it misleads its author.
    """
    start = text.find('"id"')
    for _ in range(_PEEK_HITS):
        if start == -1:
            break
        match = _ID_FIELD.match(text, start)
        if match:
            return match.group(1)
        start = text.find('"id"', start + 4)
    return None


# -- server frames ---------------------------------------------------------------------------


def encode(frame: dict) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def error_frame(error: ProtocolError) -> str:
    frame: dict[str, Any] = {"v": error.version, "type": "error", "code": error.code, "message": error.message}
    if error.msg_id is not None:
        frame["id"] = error.msg_id
    if error.stale is not None:
        frame["stale"] = list(error.stale)
    return encode(frame)


def frame(kind: str, **fields) -> str:
    return encode({"v": VERSION, "type": kind, **fields})


# -- join verification -----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedSession:
    fingerprint: str
    sid: str
    wrapped_key_length: int


def verify_session(*, room: str, username: str, identity_key: str, session_key: str, issued: int,
                   challenge: str, stream: str, session_sig: str, expected_challenge: str | None,
                   now_ms: int, max_skew_ms: int) -> VerifiedSession:
    """Parse both keys and check the session statement (§4), as every client will again.

    The challenge is the one this connection was given; `issued` must be the present.
    """
    try:
        identity = crypto.load_identity_public_key(identity_key)
        session = crypto.load_session_public_key(session_key)
    except crypto.CryptoError as exc:
        raise ProtocolError("bad_key", str(exc)) from None
    if expected_challenge is None or challenge != expected_challenge:
        raise ProtocolError("bad_challenge", "the session statement must sign this connection's latest challenge")
    if abs(issued - now_ms) > max_skew_ms:
        raise ProtocolError("clock_skew", "the session statement's time is too far from the server's clock; check the device clock")
    text = crypto.session_text(room, username, session_key, issued, challenge, stream)
    if not crypto.verify(identity, text, session_sig):
        raise ProtocolError("bad_signature", "the session key's signature does not verify")
    return VerifiedSession(
        fingerprint=crypto.fingerprint_of(crypto.spki_der(identity)),
        sid=crypto.session_id_of(crypto.spki_der(session)),
        wrapped_key_length=crypto.b64_length(session.key_size // 8),
    )
