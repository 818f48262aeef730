"""Frame validation without a server: every bad shape maps to its §6.2 code."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import VECTORS

from securechat.relay import protocol
from securechat.relay.protocol import ProtocolError, parse_frame

MSG = VECTORS["message"]["frame_out"]
SESSION, IDENTITY = VECTORS["session"], VECTORS["identity"]
JOIN = {"v": 2, "type": "join", "username": "alice", "identity_key": IDENTITY["spki"],
        "session_key": SESSION["spki"], "issued": SESSION["issued"], "challenge": SESSION["challenge"],
        "stream": SESSION["stream"], "session_sig": SESSION["sig"]}


def code_of(frame) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_frame(frame if isinstance(frame, str) else json.dumps(frame))
    return info.value.code


def with_(base: dict, **changes) -> dict:
    frame = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            del frame[key]
        else:
            frame[key] = value
    return frame


def test_valid_frames_parse():
    msg = parse_frame(json.dumps(MSG))
    assert isinstance(msg, protocol.Msg) and msg.id == MSG["id"] and msg.keys == MSG["keys"]
    join = parse_frame(json.dumps(JOIN))
    assert isinstance(join, protocol.Join) and join.username == "alice"
    assert isinstance(parse_frame('{"v":2,"type":"roster"}'), protocol.RosterRequest)
    assert isinstance(parse_frame('{"v":2,"type":"leave"}'), protocol.Leave)


@pytest.mark.parametrize("frame, code", [
    ("{", "bad_json"),
    ("null", "bad_json"),
    ('"msg"', "bad_json"),
    ({"type": "msg"}, "unsupported_version"),
    ({"v": True, "type": "roster"}, "unsupported_version"),
    ({"v": "1", "type": "roster"}, "unsupported_version"),
    ({"v": 2}, "unknown_type"),
    ({"v": 2, "type": ["msg"]}, "unknown_type"),
    (with_(MSG, id="XYZ"), "bad_frame"),
    (with_(MSG, id=MSG["id"].upper()), "bad_frame"),
    (with_(MSG, ts=-1), "bad_frame"),
    (with_(MSG, ts=1.5), "bad_frame"),
    (with_(MSG, ts=True), "bad_frame"),
    (with_(MSG, ts=2**53), "bad_frame"),
    (with_(MSG, counter=1), "bad_frame"),
    (with_(MSG, to=MSG["to"][:-2] + "A="), "bad_frame"),
    (with_(MSG, ct=MSG["ct"][:-4]), "bad_frame"),
    (with_(JOIN, challenge="00"), "bad_frame"),
    (with_(JOIN, issued=...), "bad_frame"),
    (with_(MSG, iv="AAAA"), "bad_frame"),
    (with_(MSG, iv=MSG["iv"][:-1] + "!"), "bad_frame"),
    (with_(MSG, ct="not base64"), "bad_frame"),
    (with_(MSG, ct="A" * 100000), "bad_frame"),
    (with_(MSG, sig=MSG["sig"][:40]), "bad_frame"),
    (with_(MSG, keys={}), "bad_frame"),
    (with_(MSG, keys=[]), "bad_frame"),
    (with_(MSG, keys={"nothex": "AAAA"}), "bad_frame"),
    (with_(MSG, keys={MSG["id"]: "@@@@"}), "bad_frame"),
    (with_(MSG, keys={MSG["id"]: 5}), "bad_frame"),
    (with_(MSG, sig=...), "bad_frame"),
    (with_(MSG, sender="bob"), "bad_frame"),
    (with_(MSG, **{"from": {"username": "bob"}}), "bad_frame"),
    (with_(JOIN, username=5), "bad_frame"),
    (with_(JOIN, session_sig="short"), "bad_frame"),
    (with_(JOIN, username="a\u0000b"), "bad_username"),
])
def test_rejections(frame, code):
    assert code_of(frame) == code


def test_a_v1_frame_gets_a_v1_error_that_says_reload():
    with pytest.raises(ProtocolError) as info:
        parse_frame('{"v":1,"type":"join","username":"alice"}')
    error = json.loads(protocol.error_frame(info.value))
    assert (error["v"], error["code"]) == (1, "unsupported_version")
    assert "reload the page" in error["message"]


def test_to_must_commit_to_exactly_the_keys():
    keys = dict(MSG["keys"])
    keys.pop(next(iter(keys)))
    with pytest.raises(ProtocolError, match="commitment"):
        parse_frame(json.dumps(with_(MSG, keys=keys)))


def test_a_message_to_more_than_256_recipients_is_refused_whatever_the_server_allows():
    from securechat import crypto
    wrapped = next(iter(MSG["keys"].values()))
    keys = {f"{i:032x}": wrapped for i in range(257)}
    frame = with_(MSG, keys=keys, to=crypto.recipients_commitment(sorted(keys)))
    with pytest.raises(ProtocolError, match="1 to 256") as info:
        parse_frame(json.dumps(frame), max_recipients=1024)
    assert info.value.code == "bad_frame"
    del keys[f"{256:032x}"]
    frame = with_(MSG, keys=keys, to=crypto.recipients_commitment(sorted(keys)))
    assert len(parse_frame(json.dumps(frame), max_recipients=1024).keys) == 256


def test_msg_errors_carry_the_message_id():
    with pytest.raises(ProtocolError) as info:
        parse_frame(json.dumps(with_(MSG, iv="AAAA")))
    assert info.value.msg_id == MSG["id"]
    assert json.loads(protocol.error_frame(info.value))["id"] == MSG["id"]


def test_a_dropped_frame_s_id_is_found_without_parsing():
    """rate_limited answers carry the id of the msg it dropped (§6.2), read without json.loads."""
    frame = json.dumps(MSG)
    assert protocol.peek_msg_id(frame) == MSG["id"]
    assert protocol.peek_msg_id(json.dumps(MSG, indent=2)) == MSG["id"]
    # Only ever 32 lowercase hex digits, never whatever else the sender wrote there.
    assert protocol.peek_msg_id('{"id": "<img src=x>"}') is None
    assert protocol.peek_msg_id('{"id": "' + "A" * 32 + '"}') is None
    assert protocol.peek_msg_id('{"v":2,"type":"roster"}') is None
    assert protocol.peek_msg_id("not json at all") is None
    assert protocol.peek_msg_id('{"x":"\\"id\\":\\"' + "a" * 32 + '\\""}') is None
    # A frame stuffed with decoys costs a few searches, not one per decoy.
    assert protocol.peek_msg_id('"id" ' * 100_000 + f'"id":"{MSG["id"]}"') is None


def test_too_many_recipients():
    keys = {f"{i:032x}": next(iter(MSG["keys"].values())) for i in range(5)}
    with pytest.raises(ProtocolError):
        parse_frame(json.dumps(with_(MSG, keys=keys)), max_recipients=4)


def test_deep_nesting_is_bad_json_not_a_crash():
    assert code_of("[" * 200000 + "]" * 200000) == "bad_json"


@pytest.mark.parametrize("case", VECTORS["invalid"]["usernames"], ids=lambda c: c["why"])
def test_username_rules(case):
    with pytest.raises(ProtocolError) as info:
        protocol.check_username(case["username"])
    assert info.value.code == case["code"]


@pytest.mark.parametrize("name", VECTORS["invalid"]["valid_usernames"])
def test_valid_usernames(name):
    assert protocol.check_username(name) == name


@pytest.mark.parametrize("name", ["\u0430lice", "p\u0430yp\u0430l", "\u03a9mega", "bob\u0431"])
def test_mixed_script_usernames_are_refused(name):
    with pytest.raises(ProtocolError, match="mixes scripts") as info:
        protocol.check_username(name)
    assert info.value.code == "bad_username"


@pytest.mark.parametrize("name", ["\u6e21\u8fba Ken", "\u5c71\u7530\u305f\u308d\u3046", "\u0441\u043e\u0441\u043e", "bob_2"])
def test_single_script_and_latin_with_cjk_usernames_pass(name):
    assert protocol.check_username(name) == name


def verify(join=JOIN, room="lobby", expected=SESSION["challenge"], now=SESSION["issued"]):
    frame = parse_frame(json.dumps(join))
    return protocol.verify_session(
        room=room, username=frame.username, identity_key=frame.identity_key, session_key=frame.session_key,
        issued=frame.issued, challenge=frame.challenge, stream=frame.stream, session_sig=frame.session_sig,
        expected_challenge=expected, now_ms=now, max_skew_ms=300_000)


def test_verify_session_checks_signature_challenge_time_and_derives_ids():
    verified = verify()
    assert verified.fingerprint == IDENTITY["fingerprint"] and verified.sid == SESSION["sid"]
    assert verified.wrapped_key_length == 344
    for kwargs, code in [({"room": "another-room"}, "bad_signature"),
                         ({"expected": "0" * 32}, "bad_challenge"), ({"expected": None}, "bad_challenge"),
                         ({"now": SESSION["issued"] + 300_001}, "clock_skew"),
                         ({"join": with_(JOIN, identity_key=SESSION["spki"])}, "bad_key"),
                         ({"join": with_(JOIN, stream="1" * 32)}, "bad_signature")]:
        with pytest.raises(ProtocolError) as info:
            verify(**kwargs)
        assert info.value.code == code, kwargs
