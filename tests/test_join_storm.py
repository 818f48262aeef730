"""Joins coalesced (PROTOCOL.md §6.2 `joins`): a burst costs each member one frame, order holds.

Real server, real clients. The Hub's announcer waits `delay` seconds for company before it
announces a join (20 ms in production); tests that need a burst to coalesce for certain stretch
it to seconds, so a loaded machine cannot split the burst.
"""

from __future__ import annotations

import json

import pytest
from conftest import settle
from tornado.websocket import websocket_connect

from securechat.client import ChatClient
from securechat.config import Config

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def config(tmp_path) -> Config:
    # Five sockets from 127.0.0.1 wait unjoined at once (the default allows 4 per address).
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", max_unjoined_per_address=16)


async def opened(ws_url: str, name: str) -> ChatClient:
    """A client whose socket is open and whose hello is read, not joined yet."""
    client = ChatClient(ws_url, name)
    client.ws = await websocket_connect(ws_url)
    hello = await client.expect("hello")
    client.room, client.challenge = hello["room"], hello["challenge"]
    return client


async def join_together(clients: list[ChatClient]) -> None:
    """Every join frame written back to back, then each welcome read (ChatClient.join's steps)."""
    from securechat import crypto

    for client in clients:
        client.session = crypto.SessionKey.generate()
        client.ws.write_message(json.dumps(client.join_frame(client.room)))
    for client in clients:
        welcome = await client.expect("welcome")
        client.challenge = welcome["challenge"]
        client.members = {}
        for entry in welcome["participants"]:
            client._add_member(entry)


async def roster_frames(client: ChatClient, members: int) -> list[dict]:
    """The joined/joins frames the client reads until its roster has `members` entries."""
    seen = []
    while len(client.members) < members:
        frame = await client.recv(timeout=10)
        assert frame is not None, "closed"
        if frame["type"] in ("joined", "joins"):
            seen.append(frame)
    return seen


async def test_a_burst_of_joins_reaches_each_member_as_one_frame_in_join_order(connect, ws_url, hub):
    hub.announcer.delay = 5.0
    alice = await connect("alice")
    newcomers = [await opened(ws_url, f"user{i}") for i in range(5)]
    await join_together(newcomers)
    order = [sid for sid in newcomers[-1].members if sid != alice.sid]  # the last welcome lists all, in join order

    frames = await roster_frames(alice, members=6)
    assert [f["type"] for f in frames] == ["joins"]
    assert [p["sid"] for p in frames[0]["participants"]] == order
    # each newcomer hears only of those who joined after its welcome: never twice, never itself
    for client in newcomers:
        later = order[order.index(client.sid) + 1:]
        got = await roster_frames(client, members=6) if later else []
        entries = [p["sid"] for f in got for p in (f["participants"] if f["type"] == "joins" else [f["participant"]])]
        assert entries == later
        assert [f["type"] for f in got] == (["joins"] if len(later) > 1 else ["joined"] if later else [])
    await settle(alice, *newcomers, members=6)
    for client in newcomers:
        client.close()


async def test_a_single_join_is_still_a_plain_joined_frame(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    joined = await alice.expect("joined")
    assert joined["participant"]["sid"] == bob.sid and "participants" not in joined


async def test_nobody_reads_a_message_from_a_member_before_hearing_it_join(connect, ws_url, hub):
    hub.announcer.delay = 5.0  # only the flush before the fan-out can announce them in time
    alice = await connect("alice")
    bob, carol = await opened(ws_url, "bob"), await opened(ws_url, "carol")
    await join_together([bob, carol])
    await carol.deliver("first words")
    frames = []
    while not frames or frames[-1]["type"] != "msg":
        frames.append(await alice.recv(timeout=10))
    assert [f["type"] for f in frames] == ["joins", "msg"]
    assert frames[-1]["from"] == carol.sid and carol.sid in alice.members
    for client in (bob, carol):
        client.close()


async def test_a_member_who_leaves_before_its_join_was_announced_is_announced_then_left(connect, ws_url, hub):
    hub.announcer.delay = 5.0
    alice = await connect("alice")
    (bob,) = [await opened(ws_url, "bob")]
    await join_together([bob])
    await bob.send_frame({"v": 2, "type": "leave"})
    first = await alice.recv(timeout=10)
    second = await alice.recv(timeout=10)
    assert (first["type"], first["participant"]["sid"]) == ("joined", bob.sid)
    assert (second["type"], second["sid"]) == ("left", bob.sid)
    assert list(alice.members) == [alice.sid]
    bob.close()


async def test_a_roster_answer_comes_after_the_pending_joins(connect, ws_url, hub):
    hub.announcer.delay = 5.0
    alice = await connect("alice")
    bob, carol = await opened(ws_url, "bob"), await opened(ws_url, "carol")
    await join_together([bob, carol])
    await alice.send_frame({"v": 2, "type": "roster"})
    kinds = []
    while "roster" not in kinds:
        kinds.append((await alice.recv(timeout=10))["type"])
    assert kinds == ["joins", "roster"]
    assert set(alice.members) == {alice.sid, bob.sid, carol.sid}
    for client in (bob, carol):
        client.close()
