"""The relay end to end: real server on loopback, real WebSocket clients, real crypto."""

from __future__ import annotations

import json

import pytest
from conftest import settle

from securechat import crypto
from securechat.client import ChatClient, Message, Rejected
from securechat.storage.ciphertext_log import LogRecord, read_log

pytestmark = pytest.mark.gen_test(timeout=30)


async def test_three_clients_exchange_messages(connect):
    alice, bob, carol = [await connect(name) for name in ("alice", "bob", "carol")]
    await settle(alice, bob, carol, members=3)
    msg_id = await alice.send("hello, room")
    for client in (alice, bob, carol):
        received = await client.next_message()
        assert isinstance(received, Message)
        assert (received.id, received.sender, received.text) == (msg_id, "alice", "hello, room")
        assert received.fingerprint == alice.fingerprint
    await alice.expect("ack")
    assert alice.acks[msg_id] == 3


async def test_each_recipient_gets_only_its_own_wrapped_key(connect):
    clients = [await connect(f"user{i}") for i in range(4)]
    await settle(*clients, members=4)
    frame = clients[0].seal("fan out")
    await clients[0].send_frame(frame)
    for client in clients:
        relayed = await client.expect("msg")
        assert "keys" not in relayed
        assert relayed["key"] == frame["keys"][client.sid]
        # O(N) egress: a delivery is the shared part plus one key, not every envelope.
        assert len(json.dumps(relayed)) < len(json.dumps(frame)) - 2 * 344


async def test_late_joiner_cannot_read_earlier_messages(connect, config):
    alice = await connect("alice")
    bob = await connect("bob")
    await settle(alice, bob, members=2)
    await alice.send("before carol")
    await bob.next_message()
    carol = await connect("carol")
    await settle(alice, bob, carol, members=3)
    records = [r.record for r in read_log(config.log_dir) if isinstance(r, LogRecord)]
    earlier = next(r for r in records if r["event"] == "msg")
    assert carol.sid not in earlier["keys"]
    for wrapped in earlier["keys"].values():
        with pytest.raises(Exception):
            carol.session.unwrap(wrapped)
    await alice.send("after carol")
    assert (await carol.next_message()).text == "after carol"


async def test_log_holds_every_message_and_no_plaintext(connect, config, ciphertext_log):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    secrets = [f"plaintext secret number {i} ✓" for i in range(5)]
    for secret in secrets:
        await alice.send(secret)
        assert (await bob.next_message()).text == secret
    ciphertext_log.flush()
    raw = b"".join(p.read_bytes() for p in config.log_dir.iterdir() if p.is_file())
    for secret in secrets:
        assert secret.encode() not in raw
        assert json.dumps(secret).encode() not in raw
    events = [r.record["event"] for r in read_log(config.log_dir) if isinstance(r, LogRecord)]
    assert events.count("msg") == 5 and events.count("join") == 2


async def test_leave_is_announced_and_logged(connect, config):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    await bob.send_frame({"v": 2, "type": "leave"})
    left = await alice.expect("left")
    assert (left["username"], left["fingerprint"]) == ("bob", bob.fingerprint)
    assert list(alice.members) == [alice.sid]


async def test_rejoin_with_same_identity_replaces_old_session(connect, ws_url):
    alice = await connect("alice")
    bob = await connect("bob")
    await settle(alice, bob, members=2)
    again = ChatClient(ws_url, "alice", identity=alice.identity)
    await again.connect()
    while (await alice.ws.read_message()) is not None:
        pass
    assert alice.ws.close_code == 4001
    assert (await bob.expect("left"))["sid"] == alice.sid
    assert (await bob.expect("joined"))["participant"]["sid"] == again.sid
    assert set(bob.members) == {bob.sid, again.sid}
    again.close()


async def test_tampered_ciphertext_is_rejected_by_recipient(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    frame = alice.seal("original")
    ct = bytearray(__import__("base64").b64decode(frame["ct"]))
    ct[0] ^= 1
    frame["ct"] = __import__("base64").b64encode(bytes(ct)).decode()
    await alice.send_frame(frame)
    result = await bob.next_message()
    assert isinstance(result, Rejected) and "signature" in result.reason


async def test_identity_key_alone_cannot_open_the_log(connect, ws_url, config, ciphertext_log):
    """Forward secrecy across sessions: the log is wrapped to session keys that die with the session."""
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    await alice.deliver("said in the first session")
    assert (await bob.next_message()).text == "said in the first session"
    alice.close()
    again = await connect("alice", identity=alice.identity)  # the same identity, a new session
    ciphertext_log.flush()
    record = next(r.record for r in read_log(config.log_dir) if isinstance(r, LogRecord) and r.record["event"] == "msg")
    assert record["from"]["fingerprint"] == again.fingerprint
    for wrapped in record["keys"].values():
        with pytest.raises(Exception):
            again.session.unwrap(wrapped)


async def test_a_rotation_swaps_the_key_in_place_and_the_chat_goes_on(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    old_session, challenge = alice.session, alice.challenge
    rekeyed = await alice.rotate()
    assert (rekeyed["old"], rekeyed["participant"]["sid"]) == (old_session.sid, alice.sid)
    assert rekeyed["challenge"] != challenge, "the next rotation must sign a new challenge"
    seen_by_bob = await bob.expect("rekeyed")
    assert "challenge" not in seen_by_bob, "only the rekeying client gets its next challenge"
    assert bob.members[alice.sid].username == "alice" and old_session.sid not in bob.members
    # Nothing says alice left or joined: a rotation is not a membership change.
    assert not [f for f in bob.events if f.get("type") in ("joined", "left")]
    await alice.send("after the rotation")
    assert (await bob.next_message()).text == "after the rotation"
    # The old key is no longer a member: a message still wrapped to it is refused whole.
    to_old = crypto.seal_message(
        identity=bob.identity, sender_sid=bob.sid, room=bob.room, text="to the old key",
        recipients=[crypto.Recipient(old_session.sid, old_session.private_key.public_key(), 9),
                    crypto.Recipient(bob.sid, bob.session.private_key.public_key(), 9)])
    await bob.send_frame(to_old)
    error = await bob.expect("error")
    assert (error["code"], error["stale"]) == ("stale_recipients", [old_session.sid])


async def test_a_rotation_must_sign_the_latest_challenge(connect):
    alice = await connect("alice")
    alice.challenge = "0" * 32
    await alice.send_frame({"v": 2, "type": "rekey", **alice.statement(alice.room, crypto.SessionKey.generate())})
    assert (await alice.expect("error"))["code"] == "bad_challenge"


async def test_the_full_recipient_list_is_given_on_request_and_matches_the_commitment(connect):
    alice, bob, carol = [await connect(name) for name in ("alice", "bob", "carol")]
    await settle(alice, bob, carol, members=3)
    msg_id = await alice.send("to three")
    delivery = await bob.expect("msg")
    assert "recipients" not in delivery
    assert await bob.unknown_recipients(msg_id, delivery["to"]) == []
    await bob.send_frame({"v": 2, "type": "recipients", "id": "f" * 32})
    assert (await bob.expect("error"))["code"] == "unknown_message"


async def test_frames_sent_in_one_turn_leave_in_one_write_in_order_and_before_a_close(connect, hub):
    # ws.ChatSocket.send queues; the turn's frames go out in one socket write at its end.
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    socket = next(p for p in hub.rooms.participants() if p.sid == bob.sid).connection
    stream = socket.ws_connection.stream
    writes = []
    real_write = stream.write

    def counting_write(data):
        writes.append(bytes(data))
        return real_write(data)

    stream.write = counting_write
    for n in range(5):
        socket.send(json.dumps({"v": 2, "type": "probe", "n": n, "text": "é" * n}))
    assert writes == []  # nothing before the end of this turn
    received = [await bob.recv() for _ in range(5)]
    assert [(f["n"], f["text"]) for f in received] == [(n, "é" * n) for n in range(5)]
    assert len(writes) == 1
    # a frame past FLUSH_BYTES goes at once, after what was queued before it
    socket.send(json.dumps({"v": 2, "type": "probe", "n": 5}))
    socket.send(json.dumps({"v": 2, "type": "probe", "n": 6, "pad": "x" * 70_000}))
    assert len(writes) == 2
    assert [(await bob.recv())["n"] for _ in range(2)] == [5, 6]
    # the close frame follows what was sent before it
    socket.send(json.dumps({"v": 2, "type": "probe", "n": 7}))
    socket.close(4001, "replaced by a newer session")
    assert (await bob.recv())["n"] == 7
    assert await bob.recv() is None and bob.ws.close_code == 4001
