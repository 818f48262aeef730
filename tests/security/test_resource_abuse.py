"""Attacks on the server's resources: stalled readers, connection floods, join storms.

Each test keeps two honest clients chatting through the attack and checks the server is
healthy afterwards. The attacker is a raw socket (tests/security/rawws.py), because Tornado's
own client always reads and cannot pick its source address.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time

import pytest
from conftest import settle
from rawws import HandshakeRefused, RawWebSocket

from securechat import crypto
from securechat.client import ChatClient, Message
from securechat.config import Config

pytestmark = pytest.mark.gen_test(timeout=60)


async def chat_round(alice: ChatClient, bob: ChatClient, text: str) -> float:
    """Seconds from alice's send until bob has the message open."""
    started = time.monotonic()
    await alice.deliver(text)
    received = await bob.next_message(timeout=10)
    assert isinstance(received, Message) and received.text == text
    return time.monotonic() - started


def raw_join(port: int, name: str, **kwargs) -> RawWebSocket:
    ws = RawWebSocket("127.0.0.1", port, **kwargs)
    client = ChatClient("unused", name, challenge=ws.hello["challenge"])
    client.session = crypto.SessionKey.generate()
    ws.send_json(client.join_frame("lobby"))
    assert ws.recv_json()["type"] == "welcome"
    ws.sid = client.sid
    return ws


async def in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", max_outbound_bytes=65536,
                  max_frame_bytes=40_000,
                  rate_per_second=200.0, rate_burst=200, max_connections_per_address=8, joins_per_minute=8)


async def test_stalled_reader_is_dropped_and_others_are_not_slowed(connect, http_port, hub):
    alice, bob = await connect("alice"), await connect("bob")
    stalled = await in_thread(lambda: raw_join(http_port, "stalled", rcvbuf=4096))
    await settle(alice, bob, members=3)
    baseline = max([await chat_round(alice, bob, f"warm-up {i}") for i in range(5)])
    # Large messages fill the stalled reader's socket buffers, then its outbound cap.
    big = "x" * 12_000  # padded to the 16 KiB bucket (§7.1), under max_frame_bytes
    slowest = 0.0
    for i in range(400):
        if stalled.sid not in alice.members:
            break
        slowest = max(slowest, await chat_round(alice, bob, f"{big} {i}"))
    assert stalled.sid not in alice.members, "the stalled reader was never dropped"
    assert stalled.sid not in hub.rooms.get().members
    assert slowest < 2.0, f"honest clients waited {slowest:.2f}s (baseline {baseline:.3f}s)"
    await chat_round(alice, bob, "after the stalled reader left")
    stalled.close()


async def test_connection_flood_from_one_address_is_capped(connect, http_port, config, hub, http_server):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    flood = min(2000, (hard - 200) // 2) if hard != resource.RLIM_INFINITY else 2000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * flood + 200)), hard))

    def attack():
        opened, refused = [], []
        for _ in range(flood):
            try:
                opened.append(RawWebSocket("127.0.0.1", http_port, source="127.0.0.2", timeout=5))
            except HandshakeRefused as exc:
                refused.append(exc.status)
            except ConnectionError:
                refused.append("closed")  # over the TCP cap: closed as soon as accepted
        return opened, refused

    opened, refused = await in_thread(attack)
    try:
        # Never-joined sockets wait in the smaller pre-join pool.
        assert len(opened) == config.max_unjoined_per_address
        assert set(refused) <= {429, "closed"} and len(refused) == flood - len(opened)
        assert 429 in refused
        await chat_round(alice, bob, "during the flood")
        carol = await connect("carol")  # another address still gets in
        await settle(alice, bob, carol, members=3)
    finally:
        for ws in opened:
            ws.close()
    for _ in range(100):
        if hub.sessions.held_by("127.0.0.2") == 0 and http_server.tcp.held_by("127.0.0.2") == 0:
            break
        await asyncio.sleep(0.05)
    assert hub.sessions.held_by("127.0.0.2") == 0, "closed attack sockets were not released"
    assert hub.unjoined.held_by("127.0.0.2") == 0 and http_server.tcp.held_by("127.0.0.2") == 0


async def test_join_storm_from_one_address_is_limited(connect, http_port, config):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)

    def storm():
        codes = []
        for i in range(config.joins_per_minute + 3):
            ws = RawWebSocket("127.0.0.1", http_port, source="127.0.0.3")
            client = ChatClient("unused", f"storm{i}", challenge=ws.hello["challenge"])
            client.session = crypto.SessionKey.generate()
            ws.send_json(client.join_frame("lobby"))
            reply = ws.recv_json()
            codes.append(reply["type"] if reply["type"] != "error" else reply["code"])
            ws.close()
        return codes

    codes = await in_thread(storm)
    assert codes[: config.joins_per_minute] == ["welcome"] * config.joins_per_minute
    assert set(codes[config.joins_per_minute :]) == {"rate_limited"}
    await chat_round(alice, bob, "after the storm")


async def test_invalid_utf8_and_truncated_frames_cost_only_the_attacker(connect, http_port):
    alice, bob = await connect("alice"), await connect("bob")

    def attack():
        results = []
        ws = RawWebSocket("127.0.0.1", http_port)
        ws.send_text(b'{"v":2,"type":"roster"\xff}')
        results.append(ws.recv_json())
        ws.close()
        ws = RawWebSocket("127.0.0.1", http_port)
        ws.send_frame(0x1, b'{"v":2,', fin=False)
        ws.send_frame(0x2, b"not a continuation")
        results.append(ws.recv_json())
        ws.close()
        return results

    assert await in_thread(attack) == [None, None]
    await settle(alice, bob, members=2)
    await chat_round(alice, bob, "unaffected")


async def test_health_after_abuse(http_client, base_url, connect):
    alice = await connect("alice")
    await alice.send_frame("{" * 5000)
    assert (await alice.expect("error"))["code"] == "bad_json"
    body = json.loads((await http_client.fetch(base_url + "/healthz")).body)
    assert body["status"] == "ok"
