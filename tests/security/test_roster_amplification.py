"""Roster amplification: a 23-byte request answered with ~700 bytes per member.

Before: every request was answered at once, encoded afresh, up to the frame rate limit (a
burst of 30, then 10 a second). Now a member's roster answers are paced (hub.ROSTER_BURST, then
one per hub.ROSTER_EVERY seconds), extra requests share the next answer, and the encoding is
made once per change of membership.
"""

from __future__ import annotations

import select
import time

import pytest
from conftest import settle
from test_resource_abuse import in_thread, raw_join

from securechat.config import Config
from securechat.relay.hub import ROSTER_BURST, ROSTER_EVERY

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def config(tmp_path) -> Config:
    # A generous frame budget, so what is measured is the roster pacing, not the frame limit.
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", rate_per_second=1000.0, rate_burst=1000)


def frames_for(ws, seconds: float) -> list[dict]:
    """Every frame that arrives within `seconds`."""
    frames, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not ws._buffer and not select.select([ws.sock], [], [], left)[0]:
            break
        frame = ws.recv_json()
        if frame is None:
            break
        frames.append(frame)
    return frames


async def test_a_roster_flood_gets_a_few_answers_and_the_last_is_current(http_server, http_port, connect):
    alice, bob = await connect("alice"), await connect("bob")
    attacker = await in_thread(lambda: raw_join(http_port, "mallory"))
    await settle(alice, bob, members=3)

    def flood():
        for _ in range(200):
            attacker.send_json({"v": 2, "type": "roster"})
        return frames_for(attacker, 1.0)

    first = await in_thread(flood)
    rosters = [f for f in first if f["type"] == "roster"]
    assert len(rosters) == ROSTER_BURST, [f["type"] for f in first]
    assert not [f for f in first if f["type"] == "error"]
    # Someone joins while the next answer waits: the deferred answer lists them.
    carol = await connect("carol")
    later = await in_thread(frames_for, attacker, ROSTER_EVERY + 2)
    rosters = [f for f in later if f["type"] == "roster"]
    assert len(rosters) == 1
    assert "carol" in {p["username"] for p in rosters[0]["participants"]}
    await settle(alice, bob, carol, members=4)
    attacker.close()


async def test_the_roster_is_encoded_once_per_change(hub, connect):
    alice = await connect("alice")
    frame = hub.roster_frame()
    assert hub.roster_frame() is frame
    await connect("bob")
    await settle(alice, members=2)
    assert hub.roster_frame() is not frame and '"bob"' in hub.roster_frame()
    # A session-key rotation changes the roster (new sid and key) as much as a join does.
    before, old_sid = hub.roster_frame(), alice.sid
    await alice.rotate()
    assert hub.roster_frame() is not before
    assert alice.sid in hub.roster_frame() and old_sid not in hub.roster_frame()


async def test_an_honest_roster_request_is_answered_at_once(http_server, http_port, connect):
    await connect("alice")
    member = await in_thread(lambda: raw_join(http_port, "bob"))
    member.send_json({"v": 2, "type": "roster"})
    answer = await in_thread(frames_for, member, 1.0)
    assert [f["type"] for f in answer][-1] == "roster"
    member.close()
