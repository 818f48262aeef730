"""Hypothesis strategies for fuzzing protocol v2: hostile JSON, hostile strings, hostile keys,
and mutations of the valid frames of tests/vectors/v2.json. Used by test_fuzz.py."""

from __future__ import annotations

import base64
import json
import re
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "v2.json").read_text())


def documented_codes() -> frozenset[str]:
    """The error codes of the §6.2 table, read from the document so the test follows it."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    table = text.split("| code | when | connection |", 1)[1].split("\n\n", 1)[0]
    return frozenset(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))


DOCUMENTED_CODES = documented_codes()
SERVER_FRAME_TYPES = frozenset({"welcome", "joined", "joins", "left", "roster", "msg", "ack", "error", "rekeyed",
                                "recipients"})


def valid_join() -> dict:
    return {
        "v": 2, "type": "join", "username": VECTORS["session"]["username"],
        "identity_key": VECTORS["identity"]["spki"], "session_key": VECTORS["session"]["spki"],
        "issued": VECTORS["session"]["issued"], "challenge": VECTORS["session"]["challenge"],
        "stream": VECTORS["session"]["stream"], "session_sig": VECTORS["session"]["sig"],
    }


def valid_msg() -> dict:
    return json.loads(json.dumps(VECTORS["message"]["frame_out"]))


BASE_FRAMES = (valid_join, valid_msg, lambda: {"v": 2, "type": "roster"}, lambda: {"v": 2, "type": "leave"},
               lambda: {"v": 2, "type": "recipients", "id": VECTORS["message"]["id"]},
               lambda: {"v": 2, "type": "rekey", "session_key": VECTORS["session"]["spki"],
                        "issued": VECTORS["session"]["issued"], "challenge": VECTORS["session"]["challenge"],
                        "session_sig": VECTORS["session"]["sig"]})

# -- strings ---------------------------------------------------------------------------------

# Every code point, lone surrogates included (a JSON "\ud800" escape decodes to one).
any_char = st.characters(codec=None, exclude_categories=())
odd_pieces = st.sampled_from([
    "\ud800", "\udfff", "\ud83d", "\x00", "\n", "\u200b", "\u200d", "\u202e", "\u2028", "\ufeff",
    "\ufffe", "\uffff", "\U0010ffff", "\ue000", "\u0378", "e\u0301", "\u212b", "\ufb01", " ", "\t",
    "\u00a0", "\u3000", "Ω", "𝔘", "\\", '"', "/", "=", "+", "-", "_",
])
hostile_text = st.lists(st.one_of(any_char, odd_pieces), max_size=40).map("".join)
HEX = "0123456789abcdef"
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@st.composite
def b64ish(draw) -> str:
    """Base64 that is valid, truncated, non-canonical, unpadded, url-safe or otherwise off."""
    raw = draw(st.binary(max_size=80))
    good = base64.b64encode(raw).decode()
    kind = draw(st.sampled_from(["good", "truncate", "unpad", "urlsafe", "spaces", "noncanonical",
                                 "extra_pad", "junk", "alphabet"]))
    if kind == "truncate" and good:
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "unpad":
        return good.rstrip("=")
    if kind == "urlsafe":
        return base64.urlsafe_b64encode(raw).decode()
    if kind == "spaces" and good:
        at = draw(st.integers(0, len(good)))
        return good[:at] + draw(st.sampled_from([" ", "\n", "\r\n", "\t"])) + good[at:]
    if kind == "noncanonical" and good.endswith("="):
        # Flip the padding bits of the last significant character: decodes, but not canonically.
        stem = good.rstrip("=")
        last = B64_ALPHABET.index(stem[-1])
        return stem[:-1] + B64_ALPHABET[last ^ draw(st.integers(1, 3))] + good[len(stem):]
    if kind == "extra_pad":
        return good + "=" * draw(st.integers(1, 3))
    if kind == "junk":
        return good + draw(hostile_text)
    if kind == "alphabet":
        return draw(st.text(st.sampled_from(B64_ALPHABET + "=-_.!"), max_size=120))
    return good


hex32ish = st.one_of(
    st.text(st.sampled_from(HEX), min_size=31, max_size=33),
    st.text(st.sampled_from(HEX.upper() + HEX), min_size=32, max_size=32),
    st.text(st.sampled_from(HEX), min_size=32, max_size=32).map(lambda s: s + "\n"),
    hostile_text,
)

# -- JSON values -----------------------------------------------------------------------------

huge_ints = st.one_of(
    st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 1, 2**53 - 1, 2**53, 2**53 + 1, 2**63, -(2**63), 2**64, 10**400]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), huge_ints,
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, -0.0, 1e308, 5e-324]),
    hostile_text, b64ish(), hex32ish,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(hostile_text, st.sampled_from(["v", "type", "id", "keys"])),
                        children, max_size=5),
    ),
    max_leaves=20,
)


@st.composite
def encode_json(draw, value) -> str:
    """json.dumps with the escaping choices a client could make (\\uXXXX or raw characters)."""
    ensure_ascii = draw(st.booleans())
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return json.dumps(str(value), ensure_ascii=ensure_ascii)


@st.composite
def deep_nesting(draw) -> str:
    depth = draw(st.one_of(st.integers(1, 50), st.integers(900, 1100), st.integers(5000, 100_000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" + closer * depth
    where = draw(st.sampled_from(["alone", "type", "v", "field", "keys", "unterminated"]))
    if where == "alone":
        return inner
    if where == "unterminated":
        return opener * depth
    if where == "type":
        return '{"v": 2, "type": %s}' % inner
    if where == "v":
        return '{"v": %s, "type": "roster"}' % inner
    if where == "keys":
        frame = valid_msg()
        frame["keys"] = "@@"
        return json.dumps(frame).replace('"@@"', inner)
    return '{"v": 2, "type": "roster", "x": %s}' % inner


# -- keys --------------------------------------------------------------------------------------


def _der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, body)


EC_PUBLIC_KEY = "1.2.840.10045.2.1"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
CURVES = [
    "1.2.840.10045.3.1.7",  # P-256, the only one allowed
    "1.2.840.10045.3.1.1", "1.2.840.10045.3.1.4", "1.2.840.10045.3.1.8", "1.3.132.0.10",
    "1.3.132.0.33", "1.3.132.0.34", "1.3.132.0.35", "1.3.132.0.1", "1.3.36.3.3.2.8.1.1.7",
    "1.3.101.112", "1.2.3.4",
]
ALGORITHMS = [EC_PUBLIC_KEY, RSA_ENCRYPTION, "1.2.840.113549.1.1.10", "1.2.840.10040.4.1",
              "1.3.101.110", "1.3.101.112", "1.2.840.10046.2.1", "2.5.8.1.1"]


def spki(algorithm: str, parameters: bytes, key_bits: bytes) -> bytes:
    return der(0x30, der(0x30, oid(algorithm) + parameters) + der(0x03, b"\x00" + key_bits))


@lru_cache(maxsize=1)
def other_keys() -> tuple[bytes, ...]:
    """SPKI DER of keys protocol v2 refuses: other curves and algorithms, weak RSA."""
    keys = [
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ec.generate_private_key(ec.SECP256K1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ed448.Ed448PrivateKey.generate().public_key(),
        x25519.X25519PrivateKey.generate().public_key(),
        rsa.generate_private_key(65537, 1024).public_key(),
        rsa.generate_private_key(3, 2048).public_key(),
    ]
    return tuple(k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                 for k in keys)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def hostile_spki(draw) -> str:
    """b64 SPKI that is almost right: swapped curve or algorithm OIDs, flipped or cut DER bytes,
    keys of other types, off-curve points, trailing garbage."""
    identity = base64.b64decode(VECTORS["identity"]["spki"])
    session = base64.b64decode(VECTORS["session"]["spki"])
    point = identity[-65:]
    kind = draw(st.sampled_from(["curve", "algorithm", "random_oid", "flip", "cut", "trail",
                                 "other", "point", "swap"]))
    if kind == "curve":
        return _b64(spki(EC_PUBLIC_KEY, oid(draw(st.sampled_from(CURVES))), point))
    if kind == "random_oid":
        arcs = draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=8))
        dotted = ".".join(["1", str(draw(st.integers(0, 39)))] + [str(a) for a in arcs])
        params = oid(dotted)
        return _b64(spki(draw(st.sampled_from([EC_PUBLIC_KEY, dotted])), params, point))
    if kind == "algorithm":
        params = draw(st.sampled_from([b"\x05\x00", b"", oid(CURVES[0])]))
        bits = draw(st.sampled_from([point, session[-270:], b"\x00" * 32]))
        return _b64(spki(draw(st.sampled_from(ALGORITHMS)), params, bits))
    base = draw(st.sampled_from([identity, session]))
    if kind == "flip":
        at = draw(st.integers(0, len(base) - 1))
        return _b64(base[:at] + bytes([base[at] ^ draw(st.integers(1, 255))]) + base[at + 1:])
    if kind == "cut":
        return _b64(base[: draw(st.integers(0, len(base) - 1))])
    if kind == "trail":
        return _b64(base + draw(st.binary(min_size=1, max_size=8)))
    if kind == "other":
        return _b64(draw(st.sampled_from(other_keys())))
    if kind == "point":
        prefix = draw(st.sampled_from([b"\x04", b"\x02", b"\x03", b"\x00", b"\x05"]))
        return _b64(spki(EC_PUBLIC_KEY, oid(CURVES[0]), prefix + draw(st.binary(min_size=0, max_size=70))))
    return _b64(session if base is identity else identity)  # "swap": each key in the other's field


# -- frame mutations ---------------------------------------------------------------------------


def field_value_for(name: str):
    """Values aimed at one field: its own domain's edge cases plus anything at all."""
    own = {
        "v": st.sampled_from([0, 2, -1, 1.0, True, "1", None, [1], 2**53, 1e400]),
        "type": st.sampled_from(["msg", "join", "roster", "leave", "welcome", "error", "MSG", "",
                                 "msg\x00", "__class__", "get", None, 1, ["msg"], {"msg": 1}]),
        "username": hostile_text,
        "identity_key": st.one_of(b64ish(), hostile_spki()),
        "session_key": st.one_of(b64ish(), hostile_spki()),
        "session_sig": b64ish(),
        "id": hex32ish,
        "ts": huge_ints,
        "issued": huge_ints,
        "challenge": hex32ish,
        "stream": hex32ish,
        "to": b64ish(),
        "iv": b64ish(),
        "ct": st.one_of(b64ish(), st.integers(0, 70_000).map(lambda n: _b64(b"\x00" * n))),
        "sig": b64ish(),
        "keys": st.one_of(
            st.dictionaries(hex32ish, b64ish(), max_size=4),
            st.integers(250, 300).map(lambda n: {f"{i:032x}": _b64(b"k" * 256) for i in range(n)}),
        ),
    }.get(name)
    return json_values if own is None else st.one_of(own, own, json_values)


@st.composite
def mutated(draw, base: dict) -> dict:
    """Apply 1-3 mutations (drop, add, replace, retype, nested edits of keys) to a frame."""
    frame = dict(base)
    if isinstance(frame.get("keys"), dict):
        frame["keys"] = dict(frame["keys"])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "add", "replace", "replace", "retype", "keys", "from", "nudge"]))
        names = sorted(frame)
        if op == "drop" and names:
            frame.pop(draw(st.sampled_from(names)))
        elif op == "add":
            name = draw(st.one_of(hostile_text, st.sampled_from(sorted(
                {"room", "from", "recipients", "received", "key", "stale", "username", "keys", "v", "type"}))))
            frame[name] = draw(json_values)
        elif op == "replace" and names:
            name = draw(st.sampled_from(names))
            frame[name] = draw(field_value_for(name))
        elif op == "retype" and names:
            name = draw(st.sampled_from(names))
            value = frame[name]
            frame[name] = draw(st.sampled_from([
                [value], {"value": value}, str(value), None, True, 0, 1.5, -1,
                value if not isinstance(value, str) else value.encode("ascii", "replace").hex(),
            ]))
        elif op == "keys" and isinstance(frame.get("keys"), dict):
            keys = frame["keys"]
            sids = sorted(keys)
            action = draw(st.sampled_from(["add", "drop", "resid", "rewrap"]))
            if action == "add" or not sids:
                keys[draw(hex32ish)] = draw(st.one_of(b64ish(), st.sampled_from(list(keys.values()) or ["AA=="])))
            elif action == "drop":
                keys.pop(draw(st.sampled_from(sids)))
            elif action == "resid":
                keys[draw(hex32ish)] = keys.pop(draw(st.sampled_from(sids)))
            else:
                keys[draw(st.sampled_from(sids))] = draw(field_value_for("iv"))
        elif op == "nudge":
            # Small semantic edits that keep the shape valid: time, counter, wrapped-key length.
            if isinstance(frame.get("ts"), int) and draw(st.booleans()):
                frame["ts"] += draw(st.sampled_from([-3_600_000, -300_001, -1, 1, 300_001, 86_400_000]))
            elif isinstance(frame.get("issued"), int) and draw(st.booleans()):
                frame["issued"] = max(0, frame["issued"] + draw(st.sampled_from([-3_600_000, -1, 1, 2**52])))
            elif isinstance(frame.get("keys"), dict) and frame["keys"]:
                sid = draw(st.sampled_from(sorted(frame["keys"])))
                wrapped = frame["keys"][sid]
                if isinstance(wrapped, str):
                    frame["keys"][sid] = draw(st.sampled_from([wrapped[4:], wrapped + "AAAA", "AAAA" * 128]))
        elif op == "from":
            frame["from"] = {"sid": draw(hex32ish), "username": draw(hostile_text), "fingerprint": "0" * 64}
    return frame


@st.composite
def frame_text(draw, base: dict | None = None) -> str:
    """A mutated valid frame as text, sometimes cut short."""
    if base is None:
        base = draw(st.sampled_from(BASE_FRAMES))()
    text = draw(encode_json(draw(mutated(base))))
    cut = draw(cut_fraction)
    return text if cut is None else text[: int(len(text) * cut)]


# Where to cut a frame short, as a fraction (None: keep it whole). A fraction, not an index, so
# what is drawn never depends on the frame's length (the live test's frames vary in length).
cut_fraction = st.one_of(st.none(), st.none(), st.none(), st.floats(0, 1))


random_text = st.one_of(
    json_values.flatmap(encode_json),  # any JSON at all
    frame_text(),  # almost-valid frames
    deep_nesting(),
    hostile_text,
    st.sampled_from(['{"v": 2, "type": "roster"', '{"v": 2, "type": "roster"}}', '{"v":2,"type":"roster"} ',
                     '\ufeff{"v": 2, "type": "roster"}', '{"v": NaN, "type": "msg"}', '{"v": Infinity}',
                     '{"v": 2, "v": 2, "type": "roster"}', '{"type": "roster", "v": 1e0}',
                     '{"v": 2, "type": "\\ud800"}', '{"v": 2, "type": "roster", "\\udfff": 1}',
                     '"\\ud800"', "1" * 5000, "-" + "9" * 4301, "", " ", "null", "[]", "{}"]),
)


@st.composite
def invalid_utf8(draw) -> bytes:
    prefix = draw(encode_json(draw(st.sampled_from(BASE_FRAMES))())).encode()
    at = draw(st.integers(0, len(prefix)))
    bad = draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe4\xb8", b"\xf4\x90\x80\x80",
                                b"\x80", b"\xfe\xfe", b"\xf0\x9f\x98"]))
    return prefix[:at] + bad + prefix[at:]
