"""Memory that must not grow: what members leave behind when they go is dropped.

Before, the replay guard kept every message id of every identity that had ever sent one (each
identity's ids were pruned only when their count reached a multiple of 256), and the join
window kept every address that had ever joined (`forget_idle` was never called). Departed
members cost ~160 bytes per message they had sent, for the server's lifetime.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from helpers import Server

from securechat import crypto
from securechat.client import ChatClient
from securechat.config import Config
from securechat.relay.room import ReplayGuard
from securechat.relay.session import Session

NOW = 1_764_097_200_000


def test_replay_ids_are_kept_while_they_could_pass_and_then_dropped_with_their_identity():
    guard = ReplayGuard(window_ms=1000)
    for n in range(200):  # 200 identities, one message each, then gone
        guard.remember(f"{n:064x}", f"{n:032x}", ts=NOW, now_ms=NOW)
    guard.remember("f" * 64, "f" * 32, ts=NOW + 900, now_ms=NOW)  # a clock 0.9 s ahead
    assert len(guard) == 201 and guard.identities() == 201
    guard.prune(NOW + 1000)  # ts + window: still inside the clock-skew window
    assert guard.seen(f"{7:064x}", f"{7:032x}") and len(guard) == 201
    guard.prune(NOW + 1001)
    assert len(guard) == 1 and guard.identities() == 1  # only the one stamped in the future
    assert guard.seen("f" * 64, "f" * 32)
    guard.prune(NOW + 1901)
    assert len(guard) == 0 and guard.identities() == 0


class Peer:
    """A Hub Connection from any address we like (a real socket is always 127.0.0.1 here)."""

    def __init__(self, hub, remote: str, name: str, session_key: crypto.SessionKey):
        self.remote, self.frames = remote, []
        self.client = ChatClient("unused", name)
        self.client.session = session_key
        self.session = Session(hub, self)
        self.session.open()

    def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def close(self, code: int, reason: str) -> None:
        self.session.closed()


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", max_clock_skew=SKEW_S)


SKEW_S = 3.0


@pytest.mark.gen_test(timeout=60)
async def test_the_hub_forgets_departed_members_addresses_and_message_ids(hub):
    # Members come one after another, so two session keys take turns (RSA key generation
    # would make the loop slower than the clock-skew window on a loaded machine).
    keys = [crypto.SessionKey.generate() for _ in range(2)]
    # A room exists while someone is in it (and its replay ids go with it): one member stays.
    stays = Peer(hub, "198.51.100.200", "stays", crypto.SessionKey.generate())
    stays.client.challenge = stays.frames[-1]["challenge"]
    stays.session.receive(json.dumps(stays.client.join_frame(hub.rooms.default)))
    assert stays.frames[-1]["type"] == "welcome", stays.frames[-1]
    for n in range(40):
        peer = Peer(hub, f"198.51.100.{n}", f"user{n}", keys[n % 2])
        peer.client.challenge = peer.frames[-1]["challenge"]  # the hello's; the join signs it (§4)
        peer.session.receive(json.dumps(peer.client.join_frame(hub.rooms.default)))
        assert peer.frames[-1]["type"] == "welcome", peer.frames[-1]
        welcome = peer.frames[-1]
        me = next(p for p in welcome["participants"] if p["sid"] == peer.client.session.sid)
        peer.client.room = hub.rooms.default
        peer.client._add_member(me)
        for _ in range(3):
            peer.session.receive(json.dumps(peer.client.seal("hello")))
        assert [f["type"] for f in peer.frames].count("ack") == 3
        peer.session.receive('{"v": 2, "type": "leave"}')
    room = hub.rooms.find()
    assert len(room.replays) == 120 and len(hub.joins) == 41
    await asyncio.sleep(SKEW_S + 0.1)  # past the clock-skew window: no id can pass any more
    hub.tidy(now=time.monotonic() + 61)  # and a minute on, no address is in the join window
    assert len(room.replays) == 0 and room.replays.identities() == 0 and len(hub.joins) == 0


# -- the soak: a real `securechat serve` and its RSS --------------------------------------------

WARM_UP, CYCLES, MESSAGES = 300, 1500, 20
TOGETHER = 6  # members present at once (each with its own session key), so the run is quicker
ALLOWED_GROWTH_MIB = 2.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def member_comes_talks_and_goes(url: str, n: int, session_key: crypto.SessionKey) -> None:
    """A new identity joins, sends MESSAGES messages to itself and leaves.

    The server never checks a message's signature or ciphertext (recipients do, §7.4), so one
    sealed frame is sent again under fresh ids and times: the server's work per message is
    that of any other, and the test spends its time on the server, not on client crypto.
    """
    client = ChatClient(url, f"member{n}", session_keys=lambda: session_key)
    await client.connect()
    sealed = client.seal("soak", recipients=[client.members[client.sid]])
    for _ in range(MESSAGES):
        await client.send_frame(dict(sealed, id=os.urandom(16).hex(), ts=int(time.time() * 1000)))
    answered = 0
    while answered < 2 * MESSAGES:  # an ack and the message itself, each
        text = await asyncio.wait_for(client.ws.read_message(), 30)
        assert text is not None, "the server closed the connection"
        frame = json.loads(text)
        assert frame["type"] in ("ack", "msg", "joined", "joins", "left"), frame  # the others come and go
        answered += frame["type"] in ("ack", "msg")
    client.close()
    while await asyncio.wait_for(client.ws.read_message(), 10) is not None:
        pass


def test_thousands_of_members_come_talk_and_go_and_the_server_gives_the_memory_back(tmp_path):
    """1,500 identities join, send 20 messages each and leave, six at a time (30,000
    messages): the server's RSS ends within ALLOWED_GROWTH_MIB of where it was after a warm-up.
    Measured: before, +5.3 MiB (52.3 -> 57.5) that never came back; now +0.8. The clock-skew window is
    2 s here (300 s by default), so ids expire within the run instead of minutes later."""
    server = Server(tmp_path, SECURECHAT_MAX_CLOCK_SKEW="2", SECURECHAT_JOINS_PER_MINUTE="100000",
                    SECURECHAT_RATE_PER_SECOND="100000", SECURECHAT_RATE_BURST="100000",
                    SECURECHAT_LOG_FSYNC="never", SECURECHAT_LOG_MAX_BYTES=str(64 * 2**20),
                    SECURECHAT_MAX_UNJOINED_PER_ADDRESS=str(2 * TOGETHER))
    keys = [crypto.SessionKey.generate() for _ in range(TOGETHER)]

    async def wave(first: int, last: int) -> None:
        for n in range(first, last, TOGETHER):
            await asyncio.gather(*(member_comes_talks_and_goes(server.ws, m, keys[m % TOGETHER])
                                   for m in range(n, min(n + TOGETHER, last))))

    async def run() -> tuple[float, float]:
        await wave(0, WARM_UP)
        start = rss_mib(server.process.pid)
        await wave(WARM_UP, WARM_UP + CYCLES)
        await asyncio.sleep(2.5)  # the last ids' window passes
        await member_comes_talks_and_goes(server.ws, -1, keys[0])  # its leave tidies
        return start, rss_mib(server.process.pid)

    try:
        start, end = asyncio.run(run())
    finally:
        server.stop()
    print(f"RSS after {WARM_UP} warm-up members: {start:.1f} MiB; after {CYCLES} more: {end:.1f} MiB")
    assert end - start <= ALLOWED_GROWTH_MIB, f"RSS grew {end - start:.1f} MiB: {start:.1f} -> {end:.1f} MiB"
