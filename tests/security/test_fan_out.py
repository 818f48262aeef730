"""Mutation during fan-out: a member found stalled in the middle of a loop that sends.

Transports drop a reader that stopped reading from inside `send` (ws.py: the write buffer is
full -> Session.stalled -> Hub.leave). Before, that leave ran at once, inside the loop that
was sending: `_announce_leave` iterating the room's members raised "dictionary changed size
during iteration", the leave in progress was never finished and its member stayed a zombie;
a relay told the others "bob left" in the middle of delivering a message. The Hub now sends
over snapshots and runs such leaves when the fan-out is done.

The connections here are the Hub's Connection protocol with a peer that stalls after a given
number of frames; everything else (Session, Hub, Room, the log) is the real thing.
"""

from __future__ import annotations

import json

import pytest

from securechat import crypto
from securechat.client import ChatClient
from securechat.relay.session import TOO_SLOW, Session

pytestmark = pytest.mark.gen_test(timeout=30)


class Peer:
    """One participant's connection; stops reading after `reads` more frames once told to."""

    def __init__(self, hub, name: str):
        self.remote = "127.0.0.1"
        self.frames: list[dict] = []
        self.closed_with: int | None = None
        self.reads: int | None = None
        self.client = ChatClient("unused", name)
        self.client.session = crypto.SessionKey.generate()
        self.session = Session(hub, self)
        self.session.open()

    def send(self, text: str) -> None:
        if self.closed_with is not None:
            return
        if self.reads is not None and self.reads <= 0:
            # What ws.ChatSocket does when the write buffer is full.
            self.session.stalled()
            self.close(TOO_SLOW, "too slow: stopped reading messages")
            return
        if self.reads is not None:
            self.reads -= 1
        self.frames.append(json.loads(text))

    def close(self, code: int, reason: str) -> None:
        if self.closed_with is None:
            self.closed_with = code
            self.session.closed()

    def join(self, room: str) -> None:
        (hello,) = [f for f in self.frames if f["type"] == "hello"]
        self.client.challenge = hello["challenge"]  # the join signs it (§4)
        self.session.receive(json.dumps(self.client.join_frame(room)))
        (welcome,) = [f for f in self.frames if f["type"] == "welcome"]
        self.client.room = room
        self.client.members = {}
        for entry in welcome["participants"]:
            self.client._add_member(entry)

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


def room_of(hub, *names):
    peers = [Peer(hub, name) for name in names]
    for peer in peers:
        peer.join(hub.rooms.default)
    hub.announcer.flush()  # joins are announced a moment later (relay/announce.py): now
    for peer in peers:  # every client learns everyone from its welcome and the joined frames
        for frame in peer.frames:
            if frame["type"] == "joined":
                peer.client._add_member(frame["participant"])
            elif frame["type"] == "joins":
                for entry in frame["participants"]:
                    peer.client._add_member(entry)
    return peers


async def test_a_reader_that_stalls_while_a_leave_is_announced(hub):
    alice, bob, carol, dave = room_of(hub, "alice", "bob", "carol", "dave")
    bob.reads = 0  # bob's next frame finds his buffer full
    dave.session.receive('{"v": 2, "type": "leave"}')
    # dave's leave finished (no "dictionary changed size"), and bob's followed it.
    assert set(hub.rooms.get().members) == {alice.client.sid, carol.client.sid}
    for peer in (alice, carol):
        lefts = [f["username"] for f in peer.frames if f["type"] == "left"]
        assert lefts == ["dave", "bob"], peer.types()
    assert bob.closed_with == TOO_SLOW
    # Both leaves are in the log; nobody is left behind as a zombie.
    hub.log.flush()
    names = {p.username for p in hub.rooms.participants()}
    assert names == {"alice", "carol"}


async def test_a_reader_that_stalls_mid_message_leaves_after_the_delivery(hub):
    alice, bob, carol = room_of(hub, "alice", "bob", "carol")
    bob.reads = 0
    frame = alice.client.seal("hello everyone")
    alice.session.receive(json.dumps(frame))
    # carol gets the whole message first, and only then hears that bob left.
    tail = [f["type"] for f in carol.frames[-2:]]
    assert tail == ["msg", "left"] and carol.frames[-1]["username"] == "bob"
    assert [f for f in alice.frames if f["type"] == "ack"][-1]["recipients"] == 3
    assert set(hub.rooms.get().members) == {alice.client.sid, carol.client.sid}


async def test_a_reader_that_stalls_on_a_joined_frame(hub):
    alice, bob = room_of(hub, "alice", "bob")
    bob.reads = 0
    (carol,) = room_of(hub, "carol")
    assert set(hub.rooms.get().members) == {alice.client.sid, carol.client.sid}
    assert [f["username"] for f in carol.frames if f["type"] == "left"] == ["bob"]
