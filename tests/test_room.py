"""Room membership and routing as pure logic: no server, no sockets."""

from __future__ import annotations

import json

import pytest

from securechat.relay.protocol import Msg, ProtocolError
from securechat.relay.room import Participant, Room, Rooms

NOW = 1_764_097_200_000
WRAPPED = "A" * 344


def person(name: str, n: int, fingerprint: str | None = None) -> Participant:
    return Participant(sid=f"{n:032x}", username=name, fingerprint=fingerprint or f"{n:064x}",
                       identity_key="ik", session_key="sk", session_sig="sig",
                       wrapped_key_length=344, joined=NOW)


def message(*sids: str, msg_id: str = "f" * 32, ts: int = NOW) -> Msg:
    return Msg(id=msg_id, ts=ts, iv="iv", ct="ct", to="to", sig="sig", keys={sid: WRAPPED for sid in sids})


@pytest.fixture
def room():
    r = Room("lobby", max_participants=3)
    for i, name in enumerate(["alice", "bob", "carol"], start=1):
        r.add(person(name, i))
    return r


def test_roster_is_in_join_order(room):
    assert [p["username"] for p in room.roster()] == ["alice", "bob", "carol"]


def test_names_are_unique_case_insensitively(room):
    with pytest.raises(ProtocolError) as info:
        room.add(person("ALICE", 9))
    assert info.value.code == "username_taken"


@pytest.mark.parametrize("lookalike", ["a1ice", "\uff41lice", "\U0001d41alice", "al\u0456ce"])
def test_a_name_that_looks_like_a_present_one_is_refused(room, lookalike):
    with pytest.raises(ProtocolError, match="looks like 'alice'") as info:
        room.add(person(lookalike, 9))
    assert info.value.code == "username_taken"


def test_a_lookalike_is_admitted_once_the_real_one_left(room):
    room.remove(room.find("alice"))
    assert room.add(person("a1ice", 9)) is None
    assert room.find("alice").username == "a1ice", "find() compares skeletons too"


def test_one_identity_cannot_hold_two_names(room):
    bob = room.find("bob")
    with pytest.raises(ProtocolError, match="already in the room as 'bob'") as info:
        room.add(person("robert", 9, fingerprint=bob.fingerprint))
    assert info.value.code == "identity_in_use"
    room.remove(bob)
    room.add(person("robert", 9, fingerprint=bob.fingerprint))  # a rename after leaving is fine


def test_same_identity_replaces_its_older_session(room):
    alice = room.find("alice")
    newer = person("alice", 7, fingerprint=alice.fingerprint)
    assert room.add(newer) is alice
    assert room.find("alice") is newer and alice.sid not in room.members
    assert room.remove(alice) is False


def test_full_room(room):
    with pytest.raises(ProtocolError) as info:
        room.add(person("dave", 4))
    assert info.value.code == "room_full"


def test_each_recipient_gets_its_own_key_and_nothing_else(room):
    alice, bob, carol = (room.find(n) for n in ("alice", "bob", "carol"))
    msg = Msg(id="f" * 32, ts=NOW, iv="iv", ct="ct", to="to", sig="sig",
              keys={alice.sid: "a" * 344, bob.sid: "b" * 344, carol.sid: "c" * 344})
    relay = room.prepare(alice, msg, NOW)
    frames = {p.username: json.loads(text) for p, text in relay.deliveries()}
    assert frames["bob"]["key"] == "b" * 344 and frames["carol"]["key"] == "c" * 344
    assert frames["bob"]["from"] == alice.sid
    # O(1) per delivery (§6.2): no recipient list, no other member's key
    assert all("keys" not in f and "recipients" not in f for f in frames.values())
    assert json.loads(relay.recipients_json) == sorted(msg.keys)
    record = json.loads(relay.log_line)
    assert record["keys"] == msg.keys and record["t"] == NOW


def test_log_line_is_exactly_what_json_dumps_writes(room):
    alice, bob = room.find("alice"), room.find("bob")
    alice.username = 'al"ice ✓ \\'  # escaped by the JSON encoder, not by the hand-joined parts
    keys = {bob.sid: "QUJD" * 86, alice.sid: "REVG" * 85 + "RA=="}
    msg = Msg(id="e" * 32, ts=NOW, iv="AAAAAAAAAAAAAAAA", ct="Y3Q=", to="dG8=", sig="c2ln", keys=keys)
    relay = room.prepare(alice, msg, NOW)
    expected = {
        "event": "msg", "t": NOW, "room": room.name, "id": msg.id,
        "from": {"sid": alice.sid, "username": alice.username, "fingerprint": alice.fingerprint},
        "ts": NOW, "recipients": sorted(keys), "iv": msg.iv, "ct": msg.ct, "to": msg.to,
        "sig": msg.sig, "keys": keys,
    }
    assert relay.log_line == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
    delivery = {"v": 2, "type": "msg", "from": alice.sid, "id": msg.id, "ts": NOW, "iv": msg.iv,
                "ct": msg.ct, "to": msg.to, "sig": msg.sig, "key": keys[bob.sid]}
    frames = dict(relay.deliveries())
    assert frames[bob] == json.dumps(delivery, separators=(",", ":"), ensure_ascii=False)


def test_recent_recipient_lists_are_kept_and_bounded(room):
    alice, bob = room.find("alice"), room.find("bob")
    room.recipient_lists_kept = 2
    for i in range(3):
        room.commit(room.prepare(alice, message(alice.sid, bob.sid, msg_id=f"{i:032x}"), NOW), NOW)
    assert room.recipient_list(f"{0:032x}") is None
    assert json.loads(room.recipient_list(f"{2:032x}")) == sorted([alice.sid, bob.sid])


def test_rekey_swaps_the_session_in_place(room):
    bob = room.find("bob")
    old = bob.sid
    assert room.rekey(bob, sid="7" * 32, session_key="sk2", session_sig="sig2", wrapped_key_length=344,
                      issued=NOW, challenge="c" * 32) == old
    assert old not in room.members and room.members["7" * 32] is bob
    assert [p["username"] for p in room.roster()] == ["alice", "bob", "carol"]
    with pytest.raises(ProtocolError):
        room.rekey(bob, sid=room.find("alice").sid, session_key="x", session_sig="x", wrapped_key_length=344,
                   issued=NOW, challenge="c" * 32)


def test_stale_recipients_reject_the_whole_message(room):
    alice = room.find("alice")
    gone = "9" * 32
    with pytest.raises(ProtocolError) as info:
        room.prepare(alice, message(alice.sid, gone), NOW)
    assert info.value.code == "stale_recipients" and info.value.stale == [gone]


def test_wrapped_key_length_must_match_recipient_modulus(room):
    alice = room.find("alice")
    msg = Msg(id="f" * 32, ts=NOW, iv="iv", ct="ct", to="to", sig="sig", keys={alice.sid: "A" * 684})
    with pytest.raises(ProtocolError) as info:
        room.prepare(alice, msg, NOW)
    assert info.value.code == "bad_recipient_key"


def test_wrapped_key_lengths_in_a_room_of_mixed_moduli(room):
    # prepare compares the set of lengths with the members' when they share one; a room where
    # they differ (a 3072-bit key next to 2048-bit ones), or a rekey that changes one, must
    # still be checked entry by entry: each key at its own recipient's length.
    alice, bob, carol = (room.find(name) for name in ("alice", "bob", "carol"))
    right = {alice.sid: WRAPPED, bob.sid: WRAPPED, carol.sid: WRAPPED}
    room.prepare(alice, Msg(id="f" * 32, ts=NOW, iv="iv", ct="ct", to="to", sig="sig", keys=right), NOW)
    wide = "A" * 512
    room.rekey(carol, sid="7" * 32, session_key="sk2", session_sig="sig2", wrapped_key_length=512,
               issued=NOW, challenge="c" * 32)
    cases = [({alice.sid: WRAPPED, carol.sid: wide}, None), ({carol.sid: wide}, None),
             ({alice.sid: WRAPPED, bob.sid: WRAPPED}, None),
             ({alice.sid: wide, carol.sid: WRAPPED}, "bad_recipient_key"),
             ({alice.sid: WRAPPED, carol.sid: WRAPPED}, "bad_recipient_key"),
             ({alice.sid: wide, carol.sid: wide}, "bad_recipient_key")]
    for i, (keys, code) in enumerate(cases):
        msg = Msg(id=f"{i:032x}", ts=NOW, iv="iv", ct="ct", to="to", sig="sig", keys=keys)
        if code is None:
            assert [r.sid for r, _ in room.prepare(alice, msg, NOW).targets] == list(keys)
        else:
            with pytest.raises(ProtocolError) as info:
                room.prepare(alice, msg, NOW)
            assert info.value.code == code
    room.remove(carol)  # the others share one length again
    msg = Msg(id="e" * 32, ts=NOW, iv="iv", ct="ct", to="to", sig="sig", keys={alice.sid: WRAPPED, bob.sid: wide})
    with pytest.raises(ProtocolError) as info:
        room.prepare(alice, msg, NOW)
    assert info.value.code == "bad_recipient_key"


def test_replay_by_id(room):
    alice = room.find("alice")
    first = message(alice.sid)
    room.commit(room.prepare(alice, first, NOW), NOW)
    with pytest.raises(ProtocolError) as info:
        room.prepare(alice, first, NOW)
    assert info.value.code == "replay"
    room.prepare(alice, message(alice.sid, msg_id="e" * 32), NOW)


def test_ids_are_remembered_across_sessions_of_the_same_identity(room):
    alice = room.find("alice")
    room.commit(room.prepare(alice, message(alice.sid), NOW), NOW)
    newer = person("alice", 8, fingerprint=alice.fingerprint)
    room.add(newer)
    with pytest.raises(ProtocolError) as info:
        room.prepare(newer, message(newer.sid), NOW)
    assert info.value.code == "replay"


def test_prepare_changes_nothing_until_commit(room):
    alice = room.find("alice")
    room.prepare(alice, message(alice.sid), NOW)
    room.prepare(alice, message(alice.sid), NOW)


@pytest.mark.parametrize("offset", [-300_001, 300_001])
def test_clock_skew_window(room, offset):
    alice = room.find("alice")
    with pytest.raises(ProtocolError) as info:
        room.prepare(alice, message(alice.sid, ts=NOW + offset), NOW)
    assert info.value.code == "clock_skew"
    room.prepare(alice, message(alice.sid, ts=NOW + offset // 2), NOW)


def test_log_line_with_attachments_is_still_exactly_json(room):
    alice, bob = room.find("alice"), room.find("bob")
    keys = {bob.sid: "QUJD" * 86}
    msg = Msg(id="d" * 32, ts=NOW, iv="AAAAAAAAAAAAAAAA", ct="Y3Q=", to="dG8=", sig="c2ln", keys=keys,
              attachments=("ab" * 32,))
    refs = [{"id": "ab" * 32, "size": 1234}]
    relay = room.prepare(alice, msg, NOW, refs)
    record = json.loads(relay.log_line)
    assert record["attachments"] == refs and list(record)[-1] == "attachments"
    assert relay.log_line == json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    # Recipients get no reference: the one that counts is inside the ciphertext.
    assert all("attachments" not in json.loads(text) for _, text in relay.deliveries())


# -- the registry: rooms exist while someone is in them ------------------------------------


def member(name: str, n: int, room: str = "", remote: str = "192.0.2.1") -> Participant:
    joining = person(name, n)
    joining.room, joining.remote = room, remote
    return joining


def registry(**caps) -> Rooms:
    return Rooms("lobby", max_participants=8, max_clock_skew_ms=300_000, **caps)


def test_a_room_is_made_by_its_first_join_and_dropped_with_its_last_member():
    rooms = registry()
    assert rooms.find("design") is None and len(rooms) == 0
    alice, bob = member("alice", 1, "design"), member("bob", 2, "design")
    room, replaced = rooms.admit(alice, NOW)
    assert replaced is None and room.name == "design" and room.created == NOW
    assert rooms.admit(bob, NOW + 5)[0] is room and room.created == NOW  # the age is the first join's
    assert rooms.remove(alice) is room and rooms.find("design") is room
    assert rooms.remove(bob) is room and rooms.find("design") is None and len(rooms) == 0
    assert rooms.remove(bob) is None  # already gone: nothing to announce twice


def test_rooms_never_share_members_names_or_rosters():
    rooms = registry()
    rooms.admit(member("alice", 1, "design"), NOW)
    # The same name (and the same identity) may be in another room: membership is per room.
    rooms.admit(member("alice", 2, "", remote="192.0.2.9"), NOW)
    rooms.admit(member("bob", 3, "design"), NOW)
    assert [p["username"] for p in rooms.find("design").roster()] == ["alice", "bob"]
    assert [p["username"] for p in rooms.find("lobby").roster()] == ["alice"]
    assert rooms.find("lobby").roster()[0]["sid"] == f"{2:032x}"
    assert len(rooms.participants()) == 3


def test_a_join_the_room_refuses_changes_no_count():
    rooms = registry()
    rooms.admit(member("alice", 1, "design"), NOW)
    with pytest.raises(ProtocolError) as info:
        rooms.admit(member("ALICE", 2, "design"), NOW)
    assert info.value.code == "username_taken" and rooms.rooms_of("192.0.2.1") == 1
    intruder = member("mallory", 3, "other")
    intruder.fingerprint = f"{1:064x}"
    rooms.admit(intruder, NOW)  # another room: the same key is free there
    assert rooms.rooms_of("192.0.2.1") == 2


def test_the_server_opens_at_most_max_rooms_besides_the_default_room():
    rooms = registry(max_rooms=2)
    rooms.admit(member("a", 1, "one"), NOW)
    rooms.admit(member("b", 2, "two", remote="192.0.2.2"), NOW)
    with pytest.raises(ProtocolError) as info:
        rooms.admit(member("c", 3, "three", remote="192.0.2.3"), NOW)
    assert info.value.code == "too_many_rooms" and "2 rooms open" in info.value.message
    assert rooms.find("three") is None
    rooms.admit(member("c", 3, "", remote="192.0.2.3"), NOW)  # the default room is always open
    rooms.admit(member("d", 4, "one", remote="192.0.2.4"), NOW)  # and rooms that exist take more people
    rooms.remove(rooms.find("two").members[f"{2:032x}"])
    rooms.admit(member("e", 5, "three", remote="192.0.2.5"), NOW)  # a room closed: room for a new one


def test_one_address_is_in_at_most_max_rooms_per_address_rooms():
    rooms = registry(max_rooms_per_address=2)
    first, second = member("alice", 1, "one"), member("alice", 2, "two")
    rooms.admit(first, NOW)
    rooms.admit(second, NOW)
    with pytest.raises(ProtocolError) as info:
        rooms.admit(member("alice", 3, "three"), NOW)
    assert info.value.code == "too_many_rooms_joined" and "leave one" in info.value.message
    assert rooms.find("three") is None
    rooms.admit(member("bob", 4, "two"), NOW)  # a second person there: still two rooms
    rooms.admit(member("carol", 5, "three", remote="192.0.2.7"), NOW)  # another address
    rooms.remove(first)
    rooms.admit(member("alice", 6, "three"), NOW)
    assert rooms.rooms_of("192.0.2.1") == 2


def test_an_ipv6_network_may_be_in_four_times_as_many_rooms_as_one_address():
    rooms = registry(max_rooms_per_address=1)
    rooms.admit(member("a", 1, "one", remote="2001:db8::1"), NOW)
    with pytest.raises(ProtocolError):
        rooms.admit(member("a", 2, "two", remote="2001:db8::1"), NOW)
    for n in range(2, 5):  # other addresses of the same /64
        rooms.admit(member(f"p{n}", n, f"room{n}", remote=f"2001:db8::{n}"), NOW)
    with pytest.raises(ProtocolError) as info:
        rooms.admit(member("p5", 5, "room5", remote="2001:db8::5"), NOW)
    assert info.value.code == "too_many_rooms_joined"


def test_a_replaced_session_moves_the_address_count_to_the_new_one():
    rooms = registry(max_rooms_per_address=1)
    old = member("alice", 1, "design", remote="192.0.2.1")
    rooms.admit(old, NOW)
    back = member("alice", 2, "design", remote="192.0.2.50")  # same identity, from elsewhere
    back.fingerprint = old.fingerprint
    assert rooms.admit(back, NOW)[1] is old
    assert rooms.rooms_of("192.0.2.1") == 0 and rooms.rooms_of("192.0.2.50") == 1
    assert rooms.remove(old) is None  # the replaced one's leave changes nothing
    assert rooms.remove(back) is not None and len(rooms) == 0


def test_room_names_follow_the_one_rule_the_browser_checks_too():
    from pathlib import Path

    from securechat.relay import roomname

    vectors = json.loads((Path(__file__).parent / "vectors" / "rooms.json").read_text())
    for entry in vectors["names"]:
        assert (roomname.problem(entry["name"]) is None) == entry["valid"], entry["name"]
    assert roomname.suggestion("Design Team") == "design-team"
    assert roomname.suggestion("dеsign") is None  # a Cyrillic е is never "corrected" into a room
    assert roomname.suggestion("design") is None  # nothing to suggest for a valid name
