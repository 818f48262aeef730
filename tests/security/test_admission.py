"""Never-joined WebSockets: a join deadline, a smaller pre-join pool, counting per IPv6 /64.

Attack: open sockets and never join. 10,000 of them from 313 addresses of one IPv6 /64 once
made every newcomer get 503. IPv6 sources come through a trusted proxy's X-Forwarded-For here
(loopback has one IPv6 address); the counting is the same one direct clients get.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import settle
from rawws import HandshakeRefused, RawWebSocket
from test_resource_abuse import chat_round, in_thread, raw_join
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from securechat.client import ChatClient
from securechat.config import Config
from securechat.relay.admission import NETWORK_FACTOR, Pool, address_keys

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", join_timeout=3.0,
                  proxy_trusted=("127.0.0.1",), joins_per_minute=100)


def test_ipv6_is_counted_per_address_and_per_64():
    assert address_keys("192.0.2.7") == (("192.0.2.7", 1),)
    assert address_keys("::ffff:192.0.2.7") == (("192.0.2.7", 1),)
    assert address_keys("2001:db8:1:2:aaaa::7") == (("2001:db8:1:2:aaaa::7", 1), ("2001:db8:1:2::/64", NETWORK_FACTOR))
    assert address_keys("fe80::1%eth0")[1] == ("fe80::/64", NETWORK_FACTOR)
    assert address_keys("") == (("", 1),)


def test_a_pool_forgets_emptied_keys():
    pool = Pool("p", total=10, per_address=2)
    keys = [address_keys(f"2001:db8::{i}") for i in range(1, 9)]
    for k in keys:
        assert pool.full_for(k) is None
        pool.take(k)
    assert pool.full_for(address_keys("2001:db8::99")) == "address"  # the /64 holds 8 = 4 x 2
    assert pool.full_for(address_keys("2001:db8:0:1::1")) is None  # another /64
    for k in keys:
        pool.give_back(k)
    assert pool.size == 0 and pool.counts == {}


async def test_a_socket_that_never_joins_is_closed_at_the_join_deadline(http_server, http_port, hub):
    ws = await in_thread(lambda: RawWebSocket("127.0.0.1", http_port))
    assert hub.unjoined.size == 1
    assert await in_thread(ws.recv_json) is None and ws.close_code == 4003
    ws.close()
    assert hub.unjoined.size == 0


async def test_joining_leaves_the_pre_join_pool(http_server, http_port, hub, config):
    waiting = [await in_thread(lambda: RawWebSocket("127.0.0.1", http_port, source="127.0.0.4"))
               for _ in range(config.max_unjoined_per_address)]
    with pytest.raises(HandshakeRefused) as refused:
        await in_thread(lambda: RawWebSocket("127.0.0.1", http_port, source="127.0.0.4"))
    assert refused.value.status == 429 and b"waiting to join" in refused.value.body
    for ws in waiting:
        ws.close()
    await asyncio.sleep(0.2)
    # Joined sockets do not count against the pre-join pool: more can open after them.
    joined = [await in_thread(lambda: raw_join(http_port, f"p{i}", source="127.0.0.4")) for i in range(6)]
    assert hub.unjoined.held_by("127.0.0.4") == 0 and hub.sessions.held_by("127.0.0.4") == 6
    assert await in_thread(lambda: joined[0].recv_json()) is not None  # still in the room after the deadline
    for ws in joined:
        ws.close()


async def test_one_ipv6_64_cannot_fill_the_pre_join_pool(tmp_path):
    from conftest import serving

    config = Config(data_dir=tmp_path / "v6", port=0, log_fsync="never", join_timeout=5.0,
                    proxy_trusted=("127.0.0.1",))
    async with serving(config) as port:
        def through_proxy(client: str) -> HTTPRequest:
            return HTTPRequest(f"ws://127.0.0.1:{port}/ws", headers={"X-Forwarded-For": client})

        opened, refused = [], []
        for i in range(1, 41):  # 40 addresses of one /64, two sockets each
            for _ in range(2):
                try:
                    opened.append(await websocket_connect(through_proxy(f"2001:db8:1:2::{i:x}")))
                except Exception as exc:
                    refused.append(str(exc))
        try:
            per_64 = config.max_unjoined_per_address * NETWORK_FACTOR
            assert len(opened) == per_64 and len(refused) == 80 - per_64
            assert all("429" in text for text in refused)
            # A newcomer from elsewhere is let in and joins.
            newcomer = ChatClient(f"ws://127.0.0.1:{port}/ws", "newcomer")
            newcomer.ws = await websocket_connect(through_proxy("2001:db8:9:9::1"))
            hello = await newcomer.expect("hello")
            newcomer.room, newcomer.challenge = hello["room"], hello["challenge"]
            await newcomer.join()
            newcomer.close()
            # The deadline empties the pool although the attacker never closes.
            for ws in opened:
                assert await asyncio.wait_for(ws.read_message(), 10) is not None  # hello
                assert await asyncio.wait_for(ws.read_message(), 10) is None
                assert ws.close_code == 4003
        finally:
            for ws in opened:
                ws.close()


async def test_a_full_pre_join_pool_refuses_newcomers_with_503_not_members(tmp_path):
    from conftest import serving

    config = Config(data_dir=tmp_path / "full", port=0, log_fsync="never", max_unjoined=3, join_timeout=30.0)
    async with serving(config) as port:
        member = await in_thread(lambda: raw_join(port, "member"))
        waiting = [await in_thread(lambda: RawWebSocket("127.0.0.1", port, source=f"127.0.0.{10 + i}"))
                   for i in range(3)]
        with pytest.raises(HandshakeRefused) as refused:
            await in_thread(lambda: RawWebSocket("127.0.0.1", port, source="127.0.0.20"))
        assert refused.value.status == 503
        member.send_json({"v": 2, "type": "roster"})
        assert (await in_thread(member.recv_json))["type"] == "roster"
        for ws in [member, *waiting]:
            ws.close()
