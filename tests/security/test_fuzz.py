"""Property-based fuzzing (Hypothesis) of the frame validator and of the live WebSocket endpoint.

Properties:
- parse_frame(text) returns a typed frame or raises ProtocolError with a §6.2 code, whatever the
  text; the error frame the server would send for it is valid UTF-8 JSON.
- check_username(text) returns the name or raises ProtocolError("bad_username").
- verify_session on a join with hostile keys returns or raises ProtocolError bad_key/bad_signature.
- The live endpoint answers every frame with a server frame or a documented `error`, closes
  abusive connections with an expected code, logs no traceback and writes no corrupt log line;
  afterwards two honest clients still chat.

CI runs a fixed, bounded set of examples (derandomize=True: the same inputs every run, so a
failure reproduces exactly). SECURECHAT_FUZZ_EXAMPLES=5000 runs that many per property with a
fresh random seed. database=None: Hypothesis's example database would otherwise create a
.hypothesis/ folder in the working tree; with derandomized runs it adds nothing, and a failure
prints the exact falsifying example, which the regression tests below are built from.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import tempfile
import threading
import time
import warnings
from collections import Counter, deque

import pytest
from fuzz_strategies import (
    B64_ALPHABET,
    DOCUMENTED_CODES,
    SERVER_FRAME_TYPES,
    VECTORS,
    b64ish,
    cut_fraction,
    hostile_spki,
    hostile_text,
    invalid_utf8,
    json_values,
    mutated,
    random_text,
    valid_join,
    valid_msg,
)
from hypothesis import HealthCheck, configuration, given, settings
from hypothesis import strategies as st
from rawws import BINARY, CLOSE, PING, PONG, TEXT, RawWebSocket

from securechat import crypto
from securechat.client import ChatClient, Message
from securechat.config import Config
from securechat.relay import protocol
from securechat.relay.protocol import Join, Leave, Msg, ProtocolError, RecipientsRequest, Rekey, RosterRequest
from securechat.server import start
from securechat.storage.ciphertext_log import LogProblem, LogRecord, read_log

# On a failure Hypothesis's pytest plugin imports its patch writer, which imports libcst (when
# installed), whose import raises a DeprecationWarning; under `filterwarnings = error` that turns
# the report of the falsifying example into an INTERNALERROR. Import it once, quietly, here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

# database=None keeps failing examples out of the tree, but Hypothesis still caches constants
# and Unicode tables under ./.hypothesis; keep those out of the repository too.
configuration.set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "securechat-hypothesis"))

LONG_RUN = int(os.environ.get("SECURECHAT_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(ci_examples: int):
    return settings(
        max_examples=LONG_RUN or ci_examples,
        deadline=None,
        database=None,
        derandomize=not LONG_RUN,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )


# Codes parse_frame itself may raise; the others need room state (not_joined, replay, ...).
PARSER_CODES = {"bad_json", "unsupported_version", "unknown_type", "bad_frame", "bad_username"}
COUNTS: Counter = Counter()


def test_documented_codes_are_read_from_the_table():
    assert PARSER_CODES <= DOCUMENTED_CODES
    expected = {"rate_limited", "server_error", "stale_recipients", "binary_unsupported", "bad_attachment"}
    assert expected <= DOCUMENTED_CODES
    # v1's + identity_in_use, bad_attachment, bad_challenge, unknown_message, too_many_rooms, too_many_rooms_joined
    assert len(DOCUMENTED_CODES) == 24


# ==============================================================================================
# 1. The frame validator, called directly
# ==============================================================================================


def check_parse(text: str):
    """parse_frame's contract; returns the frame or the ProtocolError."""
    try:
        frame = protocol.parse_frame(text)
    except ProtocolError as error:
        assert error.code in PARSER_CODES and error.code in DOCUMENTED_CODES, (error.code, text[:200])
        assert isinstance(error.message, str) and error.message
        # What the server would write back must survive UTF-8 and JSON (no lone surrogates).
        sent = json.loads(protocol.error_frame(error).encode("utf-8"))
        assert sent["type"] == "error" and sent["code"] == error.code
        COUNTS[f"parse:{error.code}"] += 1
        return error
    assert isinstance(frame, (Join, Rekey, Msg, RecipientsRequest, RosterRequest, Leave)), type(frame)
    if isinstance(frame, Join):
        assert protocol.check_username(frame.username) == frame.username
        assert len(crypto.b64decode(frame.session_sig)) == crypto.SIGNATURE_BYTES
    if isinstance(frame, Msg):
        assert 1 <= len(frame.keys) <= 256 and 0 <= frame.ts < 2**53
        assert crypto.recipients_commitment(frame.keys) == frame.to
        assert len(crypto.b64decode(frame.iv)) == crypto.IV_BYTES
    COUNTS[f"parse:ok:{type(frame).__name__}"] += 1
    return frame


def verify_join(join: Join):
    """The server's session-statement check, with the vectors' challenge and time."""
    return protocol.verify_session(
        room="lobby", username=join.username, identity_key=join.identity_key, session_key=join.session_key,
        issued=join.issued, challenge=join.challenge, stream=join.stream, session_sig=join.session_sig,
        expected_challenge=VECTORS["session"]["challenge"], now_ms=VECTORS["session"]["issued"],
        max_skew_ms=300_000)


def test_the_valid_vector_frames_parse():
    join = protocol.parse_frame(json.dumps(valid_join()))
    assert isinstance(join, Join)
    verified = verify_join(join)
    assert verified.sid == VECTORS["session"]["sid"]
    assert isinstance(protocol.parse_frame(json.dumps(valid_msg())), Msg)


@fuzz_settings(150)
@given(text=random_text)
def test_parse_frame_never_raises_anything_else(text):
    COUNTS["validator:parse_frame"] += 1
    check_parse(text)


@fuzz_settings(150)
@given(frame=st.one_of(mutated(valid_join()), mutated(valid_msg()),
                       mutated({"v": 2, "type": "roster"}), mutated({"v": 2, "type": "leave"})),
       ensure_ascii=st.booleans())
def test_mutated_valid_frames(frame, ensure_ascii):
    COUNTS["validator:mutated"] += 1
    try:
        text = json.dumps(frame, ensure_ascii=ensure_ascii)
    except ValueError:  # an integer longer than Python will print
        return
    check_parse(text)


@fuzz_settings(150)
@given(value=json_values)
def test_any_json_value(value):
    COUNTS["validator:json"] += 1
    try:
        text = json.dumps(value)
    except ValueError:
        return
    check_parse(text)


def admitted_by_b64(text: str, max_size: int) -> bool:
    """The per-entry check the fast path falls back to, as a yes or no."""
    try:
        protocol._b64(text, "key", max_size=max_size)
    except ProtocolError:
        return False
    return True


@st.composite
def one_char_off(draw) -> str:
    """Canonical base64 with one character replaced, inserted or removed: near misses."""
    good = base64.b64encode(draw(st.binary(max_size=8))).decode()
    at = draw(st.integers(0, len(good)))
    char = draw(st.sampled_from(B64_ALPHABET + "="))
    edit = draw(st.sampled_from(["replace", "insert", "remove"]))
    if edit == "insert":
        return good[:at] + char + good[at:]
    return good[:at] + (char if edit == "replace" else "") + good[at + 1:]


@pytest.mark.parametrize("text", ["", "AA==", "AQ==", "AB==", "AAA=", "AAE=", "AAB=", "====", "A===",
                                  "AA=A", "=AAA", "AAAA====", "AA==AA==", "AAAAAA==", "AAAAAAA"])
def test_wrapped_key_fast_path_near_misses(text):
    assert protocol._all_canonical_b64([text], 64) == admitted_by_b64(text, 64)
    assert protocol._all_canonical_b64(["AAAA", text], 64) == admitted_by_b64(text, 64)


def test_wrapped_key_fast_path_on_every_last_quad():
    # Every way the last three characters of a quad can be alphabet or "=": all the padding
    # and unused-bit cases, exhaustively (65^3 texts, about a second).
    chars = B64_ALPHABET + "="
    disagree = [text for text in ("Q" + x + y + z for x in chars for y in chars for z in chars)
                if protocol._all_canonical_b64(["AAAA" + text], 64) != admitted_by_b64("AAAA" + text, 64)]
    assert disagree == []


@fuzz_settings(150)
@given(texts=st.lists(st.one_of(b64ish(), one_char_off(), hostile_text), min_size=1, max_size=6),
       max_size=st.integers(0, 64))
def test_wrapped_key_fast_path_agrees_with_b64decode(texts, max_size):
    # The all-keys-at-once check (protocol._all_canonical_b64) skips decoding for speed; it must
    # accept exactly what the per-entry check accepts, or a relayed frame could carry what a
    # recipient refuses (or the server could refuse what every client accepts).
    COUNTS["validator:wrapped_keys"] += 1
    expected = all(admitted_by_b64(text, max_size) for text in texts)
    assert protocol._all_canonical_b64(texts, max_size) == expected


@st.composite
def same_length_keys(draw):
    """Texts all of one length, as in a room whose members' keys share a modulus size: the fast
    path of _all_canonical_b64 that slices every text's padding out of the joined bytes at once.
    Each is canonical base64 of `size` bytes, and some get one character changed (a near miss
    that keeps the length, or a hostile character)."""
    size = draw(st.integers(0, 9))
    texts = [base64.b64encode(draw(st.binary(min_size=size, max_size=size))).decode()
             for _ in range(draw(st.integers(1, 5)))]
    for i in draw(st.lists(st.integers(0, len(texts) - 1), max_size=3)):
        if texts[i]:
            at = draw(st.integers(0, len(texts[i]) - 1))
            char = draw(st.one_of(st.sampled_from(B64_ALPHABET + "="), st.characters()))
            texts[i] = texts[i][:at] + char + texts[i][at + 1:]
    return texts


@fuzz_settings(300)
@given(texts=same_length_keys(), max_size=st.integers(0, 12))
def test_wrapped_key_fast_path_on_keys_of_one_length(texts, max_size):
    COUNTS["validator:wrapped_keys_one_length"] += 1
    expected = all(admitted_by_b64(text, max_size) for text in texts)
    assert protocol._all_canonical_b64(texts, max_size) == expected


@pytest.mark.parametrize("texts", [["AA==", "AQ=="], ["AAA=", "AAE="], ["AA==", "AAA="], ["AAAA", "AA=="],
                                   ["AA==", "AAAA"], ["AAA=", "AA=="], ["A===", "A==="], ["AA=A", "AA=A"],
                                   ["====", "AA=="], ["AAAAAAA=", "AAAA=AA="], ["AAAAAA==", "AAAAAA=="]])
def test_wrapped_key_fast_path_on_padding_of_one_length(texts):
    assert protocol._all_canonical_b64(texts, 64) == all(admitted_by_b64(text, 64) for text in texts)


@fuzz_settings(300)
@given(sids=st.lists(st.one_of(st.text("0123456789abcdef", min_size=32, max_size=32),
                               st.text("0123456789abcdefABCDEF\n", min_size=30, max_size=34),
                               hostile_text), max_size=5))
def test_session_id_check_matches_the_pattern(sids):
    # protocol._all_hex32 checks every sid of a msg's keys at once, in C; it must admit exactly
    # what the HEX32 pattern admits for each.
    COUNTS["validator:sids"] += 1
    assert protocol._all_hex32(sids) == all(protocol.HEX32.match(sid) for sid in sids)


@fuzz_settings(150)
@given(name=st.one_of(hostile_text, st.text(max_size=40)))
def test_check_username(name):
    COUNTS["validator:username"] += 1
    try:
        assert protocol.check_username(name) == name
    except ProtocolError as error:
        assert error.code == "bad_username"
        json.loads(protocol.error_frame(error).encode("utf-8"))
        COUNTS["username:bad_username"] += 1
        return
    # Accepted: every rule of §5 holds.
    import unicodedata
    assert unicodedata.normalize("NFC", name) == name and name == name.strip()
    assert 1 <= len(name) <= 32
    assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for c in name)
    COUNTS["username:ok"] += 1


@fuzz_settings(150)
@given(identity_key=st.one_of(st.just(VECTORS["identity"]["spki"]), hostile_spki()),
       session_key=st.one_of(st.just(VECTORS["session"]["spki"]), hostile_spki()))
def test_verify_join_with_hostile_keys(identity_key, session_key):
    """The server's join check: hostile keys are bad_key or bad_signature, never a traceback."""
    COUNTS["validator:verify_join"] += 1
    frame = dict(valid_join(), identity_key=identity_key, session_key=session_key)
    join = check_parse(json.dumps(frame))
    if isinstance(join, ProtocolError):
        return
    try:
        verify_join(join)
    except ProtocolError as error:
        assert error.code in {"bad_key", "bad_signature"}, error.code
        COUNTS[f"verify_join:{error.code}"] += 1
    else:
        assert (identity_key, session_key) == (VECTORS["identity"]["spki"], VECTORS["session"]["spki"])
        COUNTS["verify_join:ok"] += 1


# -- regressions the fuzzer found ----------------------------------------------------------------


def test_regression_identity_key_on_an_unsupported_curve_is_bad_key():
    """An EC SPKI naming a curve `cryptography` does not implement (here 1.2.840.10045.3.1.8)
    raised cryptography.exceptions.UnsupportedAlgorithm out of verify_join: the server logged a
    traceback and answered server_error instead of bad_key."""
    import base64

    from fuzz_strategies import CURVES, EC_PUBLIC_KEY, oid, spki
    point = base64.b64decode(VECTORS["identity"]["spki"])[-65:]
    key = base64.b64encode(spki(EC_PUBLIC_KEY, oid(CURVES[3]), point)).decode()
    join = protocol.parse_frame(json.dumps(dict(valid_join(), identity_key=key)))
    with pytest.raises(ProtocolError) as caught:
        verify_join(join)
    assert caught.value.code == "bad_key"


# ==============================================================================================
# 2. The live WebSocket endpoint
# ==============================================================================================


class Faults(logging.Handler):
    """Collects every log record that means a server fault: a traceback or an ERROR."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Tornado notes client-caused, handled failures at DEBUG with a traceback (e.g. a close
        # frame whose reason is not UTF-8: "Malformed WebSocket request received"); not faults.
        if (record.exc_info and record.levelno > logging.DEBUG) or record.levelno >= logging.ERROR:
            self.records.append(record)

    def report(self) -> str:
        return "\n".join(f"{r.name}: {r.getMessage()}\n{self.format(r) if r.exc_info else ''}"
                         for r in self.records[:5])


FAULT_LOGGERS = ("securechat", "tornado.application", "tornado.general", "asyncio")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One real server on 127.0.0.1, in a thread with its own loop, with budgets raised so the
    fuzzer measures validation rather than the rate limiter (the strike counter stays on)."""
    config = Config(data_dir=tmp_path_factory.mktemp("fuzz") / "data", port=0, log_fsync="never",
                    rate_per_second=1000, rate_burst=1000, joins_per_minute=100_000,
                    max_connections_per_address=1000)
    faults = Faults()
    for name in FAULT_LOGGERS:
        logging.getLogger(name).addHandler(faults)
    ready, box = threading.Event(), {}

    async def main():
        box["loop"] = asyncio.get_running_loop()
        box["server"] = await start(config)
        ready.set()
        await box["server"].stopped.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="fuzz-server", daemon=True)
    thread.start()
    assert ready.wait(10), "the server did not start"
    server, loop = box["server"], box["loop"]
    try:
        yield server, loop, config, faults
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
        thread.join(10)
        for name in FAULT_LOGGERS:
            logging.getLogger(name).removeHandler(faults)


# Close codes a fuzzed connection may legitimately get; None = the server dropped TCP (Tornado's
# _abort on invalid UTF-8, bad fragmentation, reserved bits or opcodes) or our own hang-up.
EXPECTED_CLOSES = {None, 1000, 1002, 1007, 1008, 1009, 4001}


def quick_ack(ws: RawWebSocket) -> None:
    """ACK at once (Linux; the flag does not stick). The server does not set TCP_NODELAY, so
    its second frame in a row (our pong) would wait for a delayed ACK: 40 ms per exchange."""
    if hasattr(socket, "TCP_QUICKACK"):
        try:
            ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


class FuzzConnection:
    """A RawWebSocket that joins with a real identity, reconnects when the server closes it, and
    checks every frame the server sends."""

    def __init__(self, port: int, identity: crypto.Identity, session: crypto.SessionKey):
        self.port, self.identity, self.session = port, identity, session
        self.ws: RawWebSocket | None = None
        self.joined = False
        self.seq = 0
        self.ping = 0
        self.history: deque = deque(maxlen=64)  # for failure messages
        self.foreign = False
        # Fixed frames mutations are drawn from (see run_action); the join one is valid as is.
        self.join_template = self.join_frame()
        self.msg_template = crypto.seal_message(
            identity=identity, sender_sid=session.sid, room="lobby", text="fuzz",
            recipients=[crypto.Recipient(session.sid, session.private_key.public_key(), 1)],
            ts=1_764_097_200_000, msg_id="0123456789abcdef0123456789abcdef",
            message_key=bytes(32), iv=bytes(12))

    def open(self) -> RawWebSocket:
        if self.ws is None:
            self.ws = RawWebSocket("127.0.0.1", self.port, timeout=10)
            # A frame and its ping sentinel leave at once, not 40 ms apart (Nagle + delayed ACK).
            self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.joined = False
            COUNTS["live:connections"] += 1
        return self.ws

    def drop(self, code) -> None:
        assert code in EXPECTED_CLOSES, f"unexpected close code {code}"
        COUNTS[f"live:close:{code}"] += 1
        self.history.append({"closed": code})
        if self.ws is not None:
            self.ws.close()
        self.ws = None
        self.joined = self.foreign = False

    STREAM = "f0" * 16

    def statement(self, session_key: str, name: str = "fuzzer", identity=None) -> dict:
        """A session statement for this connection's current challenge (from its hello)."""
        challenge = self.ws.hello["challenge"] if self.ws is not None else "0" * 32
        issued = int(time.time() * 1000)
        sig = crypto.sign_session(identity or self.identity, "lobby", name, session_key, issued, challenge, self.STREAM)
        return {"issued": issued, "challenge": challenge, "stream": self.STREAM, "session_sig": sig}

    def join_frame(self) -> dict:
        return {"v": 2, "type": "join", "username": "fuzzer", "identity_key": self.identity.spki_b64,
                "session_key": self.session.spki_b64, **self.statement(self.session.spki_b64)}

    def msg_frame(self) -> dict:
        """A valid msg to ourselves, with the next sequence number."""
        self.seq += 1
        return crypto.seal_message(
            identity=self.identity, sender_sid=self.session.sid, room="lobby", text="fuzz",
            recipients=[crypto.Recipient(self.session.sid, self.session.private_key.public_key(), self.seq)],
        )

    def raw(self, data: bytes) -> None:
        self.open().sock.sendall(data)

    def exchange(self, send) -> list[dict]:
        """Run send(ws), then ping and read until our pong: every frame in between answers what
        we sent (Tornado handles frames in order). Returns them; reconnects on a close."""
        ws = self.open()
        self.ping += 1
        token = str(self.ping).encode()
        frames: list[dict] = []
        try:
            send(ws)
            ws.send_frame(PING, token)
            while True:
                quick_ack(ws)
                opcode, payload = ws.recv_frame()
                if opcode == PONG and payload == token:
                    return frames
                if opcode == PING:
                    ws.send_frame(PONG, payload)
                elif opcode == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    self.drop(code)
                    return frames
                elif opcode == TEXT:
                    frames.append(self.check(payload))
                elif opcode != PONG:
                    raise AssertionError(f"the server sent opcode {opcode:#x}")
        except (BrokenPipeError, ConnectionResetError):
            self.drop(None)  # the server had already dropped us
            return frames

    def check(self, payload: bytes) -> dict:
        frame = json.loads(payload.decode("utf-8"))
        self.history.append({k: frame.get(k) for k in ("type", "code", "sid", "username")})
        if frame.get("type") in ("roster", "welcome"):
            self.history[-1]["members"] = [(p["sid"][:6], p["username"]) for p in frame["participants"]]
        assert isinstance(frame, dict) and frame.get("v") == 2, frame
        assert frame.get("type") in SERVER_FRAME_TYPES, frame
        if frame["type"] == "error":
            assert frame["code"] in DOCUMENTED_CODES, frame
            assert frame["code"] != "server_error", f"the server failed: {frame}"
            assert isinstance(frame["message"], str) and frame["message"]
            COUNTS[f"live:error:{frame['code']}"] += 1
        else:
            COUNTS[f"live:frame:{frame['type']}"] += 1
            if frame["type"] == "welcome":
                # A mutated vector frame in a "text" action can be a valid join as someone else
                # (alice, the vectors' keys): then this connection is not ours to send msgs on.
                self.joined = frame["you"]["sid"] == self.session.sid
                self.foreign = not self.joined
        return frame


SQUATTER = crypto.Identity.generate()


def frame_header(first: int, length: int, *, masked: bool = True) -> bytes:
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes([first, mask_bit | length])
    if length < 65536:
        return bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    return bytes([first, mask_bit | 127]) + struct.pack("!Q", length)


def encode_text(text: str) -> bytes:
    # A lone surrogate in the string becomes CESU-style bytes: invalid UTF-8 on the wire, on purpose.
    return text.encode("utf-8", "surrogatepass")


# One fuzz action: (kind, payload). Kinds needing a join first join before sending.
ACTIONS = st.one_of(
    st.tuples(st.just("text"), random_text),
    st.tuples(st.just("join"), st.just(None)),
    st.tuples(st.just("mutated_join"), st.just(None)),
    st.tuples(st.just("mutated_join"), st.just(None)),
    st.tuples(st.just("valid_msg"), st.just(None)),
    st.tuples(st.just("mutated_msg"), st.just(None)),
    st.tuples(st.just("mutated_msg"), st.just(None)),
    st.tuples(st.just("hostile_key"), st.tuples(st.sampled_from(["identity_key", "session_key"]), hostile_spki())),
    st.tuples(st.just("replay_msg"), st.just(None)),
    st.tuples(st.just("squat"), st.sampled_from(["fuzzer", "FUZZER", "Fuzzer", "fuzzeR"])),
    st.tuples(st.just("roster"), st.sampled_from(['{"v":2,"type":"roster"}'])),
    st.tuples(st.just("invalid_utf8"), invalid_utf8()),
    st.tuples(st.just("binary"), st.binary(max_size=64)),
    st.tuples(st.just("wire"), st.sampled_from([
        "dangling_fragment", "fragment_then_text", "fragment_then_binary_continuation",
        "continuation_alone", "fragmented_ok", "fragmented_control", "big_control", "rsv_bits",
        "reserved_opcode", "unmasked", "oversized", "close_frame", "close_bad_reason", "ping_payload",
    ])),
)


def wire_attack(conn: FuzzConnection, kind: str) -> list[dict]:
    """Frame-level abuse RawWebSocket's helpers make possible."""
    body = json.dumps({"v": 2, "type": "roster"}).encode()
    if kind == "dangling_fragment":
        return conn.exchange(lambda ws: ws.send_frame(TEXT, body[:5], fin=False))
    if kind == "fragment_then_text":
        return conn.exchange(lambda ws: (ws.send_frame(TEXT, body[:5], fin=False), ws.send_frame(TEXT, body)))
    if kind == "fragment_then_binary_continuation":
        return conn.exchange(lambda ws: (ws.send_frame(TEXT, body[:5], fin=False), ws.send_frame(BINARY, body[5:])))
    if kind == "continuation_alone":
        return conn.exchange(lambda ws: ws.send_frame(0x0, body))
    if kind == "fragmented_ok":
        return conn.exchange(lambda ws: (ws.send_frame(TEXT, body[:5], fin=False), ws.send_frame(PING, b"x"),
                                         ws.send_frame(0x0, body[5:])))
    if kind == "fragmented_control":
        return conn.exchange(lambda ws: ws.send_frame(PING, b"x", fin=False))
    if kind == "big_control":
        return conn.exchange(lambda ws: ws.send_frame(PING, b"x" * 200))
    if kind == "rsv_bits":
        return conn.exchange(lambda ws: ws.sock.sendall(frame_header(0x80 | 0x40 | TEXT, len(body), masked=False) + body))
    if kind == "reserved_opcode":
        return conn.exchange(lambda ws: ws.send_frame(0x3, body))
    if kind == "unmasked":
        return conn.exchange(lambda ws: ws.sock.sendall(frame_header(0x80 | TEXT, len(body), masked=False) + body))
    if kind == "oversized":
        # Announce 2 MiB and send nothing: the server must refuse on the header alone.
        return conn.exchange(lambda ws: ws.sock.sendall(frame_header(0x80 | TEXT, 2 * 1024 * 1024) + b"abcd"))
    if kind == "close_frame":
        return conn.exchange(lambda ws: ws.send_frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
    if kind == "close_bad_reason":
        return conn.exchange(lambda ws: ws.send_frame(CLOSE, struct.pack("!H", 1000) + b"\xff\xfe"))
    if kind == "ping_payload":
        return conn.exchange(lambda ws: ws.send_frame(PING, b"\x00\xff" * 40))
    raise AssertionError(kind)


def plan_text(frame: dict, ensure_ascii: bool, cut) -> str:
    try:
        text = json.dumps(frame, ensure_ascii=ensure_ascii)
    except ValueError:  # an integer longer than Python will print
        text = json.dumps({k: str(v) for k, v in frame.items()})
    return text if cut is None else text[: int(len(text) * cut)]


def rebase(frame: dict, template: dict, fresh: dict) -> dict:
    """A mutation drawn from the fixed template, carried over to a fresh frame: fields left as
    in the template take the fresh values; ts keeps the drawn offset."""
    out = {}
    for name, value in frame.items():
        old = template.get(name, object())
        if name == "ts" and type(value) is int and type(old) is int:
            out[name] = fresh[name] + (value - old)
        elif name == "keys" and isinstance(value, dict) and isinstance(old, dict):
            out[name] = {sid: fresh["keys"].get(sid, w) if w == old.get(sid) else w for sid, w in value.items()}
        elif name in fresh and value == old:
            out[name] = fresh[name]
        else:
            out[name] = value
    return out


def run_action(conn: FuzzConnection, data, kind: str, payload) -> None:
    COUNTS[f"live:sent:{kind}"] += 1
    # Draw before looking at the connection: Hypothesis needs the same draws whatever state a
    # previous example left the server in, so mutations start from fixed templates.
    plan = None
    if conn.foreign:
        conn.drop(None)
    if kind in ("mutated_join", "mutated_msg"):
        template = conn.join_template if kind == "mutated_join" else conn.msg_template
        plan = (data.draw(mutated(template), label=kind), data.draw(st.booleans(), label="ascii"),
                data.draw(cut_fraction, label="cut"))
    conn.history.append({"action": kind if kind != "wire" else payload})
    if kind in ("valid_msg", "mutated_msg", "replay_msg", "roster", "squat") and not conn.joined:
        conn.exchange(lambda ws: ws.send_json(conn.join_frame()))
        if not conn.joined:
            return  # closed meanwhile (e.g. strikes); the next action reconnects
    if kind == "text":
        conn.exchange(lambda ws: ws.send_text(encode_text(payload)))
    elif kind == "join":
        conn.exchange(lambda ws: ws.send_json(conn.join_frame()))
    elif kind == "mutated_join":
        if conn.joined:
            conn.drop(None)  # a join on a joined connection only ever says already_joined
        conn.exchange(lambda ws: ws.send_text(encode_text(plan_text(*plan))))
    elif kind == "valid_msg":
        frames = conn.exchange(lambda ws: ws.send_json(conn.msg_frame()))
        if conn.ws is not None:
            assert any(f["type"] == "ack" for f in frames), frames
    elif kind == "hostile_key":
        # A correctly signed join whose identity or session key is almost right.
        if conn.joined:
            conn.drop(None)
        field, key = payload
        conn.open()  # the statement signs this connection's challenge
        frame = dict(conn.join_frame(), **{field: key})
        if field == "session_key":
            frame.update(conn.statement(key))
        frames = conn.exchange(lambda ws: ws.send_json(frame))
        codes = [f.get("code") for f in frames if f["type"] == "error"]
        assert set(codes) <= {"bad_key", "bad_signature", "bad_frame"}, frames
        if conn.joined:
            # A flipped modulus byte can still be a valid RSA-2048 key: the join then succeeds
            # under a session key we cannot address (our msgs would be stale_recipients).
            COUNTS["live:hostile_key_accepted"] += 1
            conn.drop(None)
    elif kind == "replay_msg":
        # The same valid frame twice: the second must be refused as a replay.
        frame = conn.msg_frame()
        conn.exchange(lambda ws: ws.send_json(frame))
        frames = conn.exchange(lambda ws: ws.send_json(frame))
        if conn.ws is not None:
            if [f.get("code") for f in frames] != ["replay"]:
                pytest.fail(f"a replayed msg got {frames}; we are {conn.session.sid[:6]}; recent: {list(conn.history)[-40:]}")
    elif kind == "squat":
        # Another identity under the fuzzer's name (any case): username_taken, never a takeover.
        name = payload
        other = FuzzConnection(conn.port, SQUATTER, conn.session)
        try:
            other.open()
            squatter = {"v": 2, "type": "join", "username": name, "identity_key": SQUATTER.spki_b64,
                        "session_key": conn.session.spki_b64,
                        **other.statement(conn.session.spki_b64, name=name, identity=SQUATTER)}
            frames = other.exchange(lambda ws: ws.send_json(squatter))
            assert [f.get("code") for f in frames] == ["username_taken"], frames
        finally:
            if other.ws is not None:
                other.ws.close()
    elif kind == "mutated_msg":
        frame, ensure_ascii, cut = plan
        frame = rebase(frame, conn.msg_template, conn.msg_frame())
        conn.exchange(lambda ws: ws.send_text(encode_text(plan_text(frame, ensure_ascii, cut))))
    elif kind in ("roster", "invalid_utf8"):
        conn.exchange(lambda ws: ws.send_text(payload))
    elif kind == "binary":
        conn.exchange(lambda ws: ws.send_frame(BINARY, payload))
    elif kind == "wire":
        wire_attack(conn, payload)
        if payload in ("dangling_fragment", "fragmented_ok") and conn.ws is not None:
            conn.drop(None)  # hang up with the fragment dangling / start clean


def test_live_endpoint(live):
    server, loop, config, faults = live
    identity, session = crypto.Identity.generate(), crypto.SessionKey.generate()
    conn = FuzzConnection(server.port, identity, session)
    started = time.monotonic()

    @fuzz_settings(100)
    @given(actions=st.lists(ACTIONS, min_size=1, max_size=6), data=st.data())
    def fuzz(actions, data):
        COUNTS["live:examples"] += 1
        before = len(faults.records)  # faults are logged before the error frame, so before our pong
        for kind, payload in actions:
            run_action(conn, data, kind, payload)
        assert len(faults.records) == before, faults.report()

    try:
        fuzz()
    finally:
        if conn.ws is not None:
            conn.ws.close()
    elapsed = time.monotonic() - started

    # No traceback or error in the server log.
    assert not faults.records, faults.report()
    # No corrupt line in the ciphertext log, and the fuzzer's valid messages are in it.
    records = list(read_log(config.log_dir))
    problems = [r for r in records if isinstance(r, LogProblem)]
    assert not problems, problems[:3]
    events = Counter(r.record.get("event") for r in records if isinstance(r, LogRecord))
    assert set(events) <= {"msg", "join", "leave"}, events
    # Two honest clients still join and exchange a message that decrypts.
    url = f"ws://127.0.0.1:{server.port}/ws"

    async def honest_chat():
        # Our hang-ups reach the server asynchronously; let it notice them before honest joins.
        for _ in range(100):
            if not server.hub.rooms.get().members:
                break
            await asyncio.sleep(0.02)
        alice, bob = ChatClient(url, "honest alice"), ChatClient(url, "honest bob")
        try:
            await alice.connect()
            await bob.connect()
            for _ in range(100):
                if len(alice.members) >= 2 and bob.sid in alice.members:
                    break
                try:
                    await alice.recv(timeout=0.05)
                except asyncio.TimeoutError:
                    pass
            await alice.send("after the fuzz")
            return await bob.next_message()
        finally:
            # Wait for each close handshake: a Tornado client stream left open when this loop ends
            # is an unclosed socket that some later test's garbage collection reports.
            for client in (alice, bob):
                if client.ws is not None:
                    client.close()
                    while await asyncio.wait_for(client.ws.read_message(), 5) is not None:
                        pass

    received = asyncio.run_coroutine_threadsafe(honest_chat(), loop).result(30)
    assert isinstance(received, Message) and received.text == "after the fuzz", received
    assert not faults.records, faults.report()
    COUNTS["live:log_records"] = sum(events.values())
    print(f"\n[fuzz] live endpoint: {COUNTS['live:examples']} examples, "
          f"{sum(v for k, v in COUNTS.items() if k.startswith('live:sent:'))} actions, "
          f"{COUNTS['live:connections']} connections, {sum(events.values())} log records, {elapsed:.1f}s")


def test_zz_summary():
    """One line per property with the number of inputs actually run (visible with -s)."""
    validator = {k.split(":", 1)[1]: v for k, v in COUNTS.items() if k.startswith("validator:")}
    print(f"\n[fuzz] validator examples: {validator}")
    print("[fuzz] outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())
                                           if not k.startswith("validator:")))
