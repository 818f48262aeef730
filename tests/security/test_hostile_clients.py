"""Bad input from one client gets a clear error; everyone else keeps chatting."""

from __future__ import annotations

import json

import pytest
from conftest import settle

from securechat import crypto
from securechat.client import ChatClient, Message

pytestmark = pytest.mark.gen_test(timeout=30)


async def error_for(client: ChatClient, frame) -> dict:
    await client.send_frame(frame if isinstance(frame, str) else json.dumps(frame))
    return await client.expect("error")


async def still_chatting(alice: ChatClient, bob: ChatClient) -> None:
    await alice.send("still here")
    received = await bob.next_message()
    assert isinstance(received, Message) and received.text == "still here"


@pytest.fixture
async def pair(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    return alice, bob


@pytest.mark.parametrize("raw, code", [
    ("not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('{"v": 3, "type": "msg"}', "unsupported_version"),
    ('{"v": 1, "type": "msg"}', "unsupported_version"),
    ('{"v": 2, "type": "shout"}', "unknown_type"),
    ('{"v": 2, "type": "roster", "extra": 1}', "bad_frame"),
    ('{"v": 2, "type": "join"}', "bad_frame"),
    ("[" * 100000, "bad_json"),
])
async def test_malformed_frames(connect, raw, code):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    error = await error_for(alice, raw)
    assert error["code"] == code and error["message"]
    await still_chatting(alice, bob)


async def test_binary_frame(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    await alice.ws.write_message(b"\x00\x01binary", binary=True)
    assert (await alice.expect("error"))["code"] == "binary_unsupported"
    await still_chatting(alice, bob)


async def test_spoofed_sender_is_ignored(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    frame = alice.seal("I am bob")
    frame["from"] = {"sid": bob.sid, "username": "bob", "fingerprint": bob.fingerprint}
    error = await error_for(alice, frame)
    assert error["code"] == "bad_frame"
    await still_chatting(alice, bob)


async def test_server_stamps_the_real_sender(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    await alice.send("from alice")
    relayed = await bob.expect("msg")
    assert relayed["from"] == alice.sid


async def test_non_member_recipients_are_rejected_whole(connect, ws_url):
    alice, bob = await connect("alice"), await connect("bob")
    carol = await connect("carol")
    await settle(alice, bob, carol, members=3)
    roster = list(alice.members.values())
    carol.close()
    await settle(alice, bob, members=2)
    frame = alice.seal("to a departed member", recipients=roster)
    error = await error_for(alice, frame)
    assert error["code"] == "stale_recipients" and error["stale"] == [carol.sid]
    assert error["id"] == frame["id"]
    # Nothing was relayed: bob's next message is the retry, not the rejected one.
    await still_chatting(alice, bob)


async def test_replayed_frame_is_refused(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    frame = alice.seal("once")
    await alice.send_frame(frame)
    assert (await bob.next_message()).text == "once"
    error = await error_for(alice, frame)
    assert error["code"] == "replay"
    await still_chatting(alice, bob)


async def test_clock_skew_is_refused(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    frame = alice.seal("from the past")
    frame["ts"] -= 3_600_000
    assert (await error_for(alice, frame))["code"] == "clock_skew"
    await still_chatting(alice, bob)


async def test_oversized_frame_closes_with_1009(connect, config):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    await alice.ws.write_message("x" * (config.max_frame_bytes + 1))
    assert await alice.ws.read_message() is None
    assert alice.ws.close_code == 1009
    await settle(bob, members=1)


@pytest.mark.parametrize("username", [c["username"] for c in
                                      __import__("conftest").VECTORS["invalid"]["usernames"]])
async def test_invalid_usernames(ws_url, username):
    client = ChatClient(ws_url, username)
    with pytest.raises(Exception, match="bad_username"):
        await client.connect()
    client.close()


async def test_duplicate_username_case_insensitive(connect, ws_url):
    alice = await connect("Alice")
    impostor = ChatClient(ws_url, "aLICE")
    with pytest.raises(Exception, match="username_taken"):
        await impostor.connect()
    impostor.close()
    bob = await connect("bob")
    await settle(alice, bob, members=2)
    await still_chatting(alice, bob)


async def test_weak_and_malformed_keys(connect, ws_url):
    client = ChatClient(ws_url, "mallory")
    client.ws = await __import__("tornado.websocket").websocket.websocket_connect(ws_url)
    client.challenge = (await client.expect("hello"))["challenge"]
    client.session = crypto.SessionKey.generate(bits=1024)
    weak = client.join_frame("lobby")
    assert (await error_for(client, weak))["code"] == "bad_key"
    client.session = crypto.SessionKey.generate()
    garbage = dict(client.join_frame("lobby"), identity_key=crypto.b64encode(b"\x30\x03\x02\x01\x01"))
    assert (await error_for(client, garbage))["code"] == "bad_key"
    wrong_sig = dict(client.join_frame("lobby"), username="notmallory")
    assert (await error_for(client, wrong_sig))["code"] == "bad_signature"
    # A session statement made for another connection's challenge, or long ago, is refused.
    replayed = dict(client.join_frame("lobby"), challenge="0" * 32)
    assert (await error_for(client, replayed))["code"] == "bad_challenge"
    old = client.join_frame("lobby")
    old.update(client.statement("lobby", client.session, issued=old["issued"] - 3600_000))
    assert (await error_for(client, old))["code"] == "clock_skew"
    client.close()


async def test_messages_before_join_and_double_join(connect, ws_url):
    alice = await connect("alice")
    assert (await error_for(alice, alice.join_frame("lobby")))["code"] == "already_joined"
    stranger = ChatClient(ws_url, "stranger")
    stranger.ws = await __import__("tornado.websocket").websocket.websocket_connect(ws_url)
    assert (await error_for(stranger, {"v": 2, "type": "roster"}))["code"] == "not_joined"
    stranger.close()


async def test_flood_is_rate_limited_then_closed(connect, config):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    flood = json.dumps({"v": 2, "type": "roster"})
    for _ in range(config.rate_burst + 100):
        await alice.ws.write_message(flood)
    codes = []
    while (frame := await alice.ws.read_message()) is not None:
        codes.append(json.loads(frame).get("code"))
    assert "rate_limited" in codes
    assert alice.ws.close_code == 1008
    await settle(bob, members=1)
    carol = await connect("carol")
    await settle(bob, carol, members=2)
    await still_chatting(bob, carol)


async def test_a_rate_limited_message_is_named_in_the_error(connect, config):
    """The sender can fail exactly that message with a Retry: the error carries its id."""
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    dropped = alice.seal("one too many")  # sealed first: the burst below must be quick
    # Ten frames past the burst leave room for tokens that refill meanwhile on a busy machine,
    # and stay under the 20 strikes that close the connection.
    for _ in range(config.rate_burst + 10):
        await alice.send_frame({"v": 2, "type": "roster"})
    await alice.send_frame(dropped)
    while (error := await alice.expect("error")).get("id") is None:
        assert error["code"] == "rate_limited"  # the dropped rosters name no message
    assert error["code"] == "rate_limited"
    assert error["id"] == dropped["id"]
    await settle(bob, members=2)


async def test_cross_site_origin_is_refused(ws_url, http_port):
    client = ChatClient(ws_url, "victim")
    with pytest.raises(Exception):
        await client.connect(origin="http://evil.example")
    ok = ChatClient(ws_url, "friend")
    await ok.connect(origin=f"http://127.0.0.1:{http_port}")
    ok.close()
