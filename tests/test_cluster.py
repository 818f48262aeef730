"""Several server processes as one chat through a real Redis: rosters, joins, leaves and
messages cross processes; a process that dies vanishes; Redis going away and coming back.

Servers here are real `securechat.server.start()` servers, each with its own Hub, log and
Redis connections, in this test's event loop (the worker processes of `serve --workers` are
tested in test_workers.py); Redis is a real redis-server on a unix socket (redis_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import settle
from redis_server import redis_server  # noqa: F401  (fixture)

from helpers import ROOT, clean_env, free_port, wait_for_http
from securechat.client import ChatClient, Message
from securechat.config import Config
from securechat.relay.room import Rooms
from securechat.server import start
from securechat.storage.ciphertext_log import LogRecord, read_log

pytestmark = pytest.mark.gen_test(timeout=60)


@contextlib.asynccontextmanager
async def cluster(tmp_path, redis_url: str, count: int):
    """`count` servers sharing Redis, each with its own data dir; yields their ws URLs."""
    servers = []
    try:
        for index in range(count):
            config = Config(data_dir=tmp_path / f"node{index}", port=0, log_fsync="never",
                            cluster_redis_url=redis_url, attachments_max_bytes=0)
            servers.append(await start(config))
        for server in servers:
            await until(lambda s=server: s.hub.cluster.up, what="connected to Redis")
        yield servers
    finally:
        for server in servers:
            await server.shutdown()


def ws(server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def until(check, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        await asyncio.sleep(0.02)


async def joined(url: str, name: str, opened: list) -> ChatClient:
    client = ChatClient(url, name)
    opened.append(client)
    await client.connect()
    return client


def records(server) -> list[dict]:
    server.hub.log.flush()
    return [r.record for r in read_log(server.config.log_dir) if isinstance(r, LogRecord)]


@pytest.fixture
def opened(io_loop):
    """Every client a test opens, closed at the end whatever happened."""
    clients: list[ChatClient] = []
    yield clients
    for client in clients:
        client.close()


async def test_three_people_on_three_servers_chat(tmp_path, redis_server, opened):
    async with cluster(tmp_path, redis_server.url, 3) as servers:
        alice, bob, carol = [await joined(ws(s), name, opened) for s, name in zip(servers, ("alice", "bob", "carol"))]
        await settle(alice, bob, carol, members=3)
        for sender in (alice, bob, carol):
            msg_id = await sender.send(f"hello from {sender.username}")
            for client in (alice, bob, carol):
                received = await client.next_message()
                assert isinstance(received, Message)
                assert (received.id, received.sender, received.text) == (msg_id, sender.username,
                                                                         f"hello from {sender.username}")
            assert (await sender.expect("ack"))["recipients"] == 3
        # Validated and logged once, by the process holding the sender; the others log nothing.
        for server, sender in zip(servers, (alice, bob, carol)):
            logged = [r for r in records(server) if r["event"] == "msg"]
            assert [r["from"]["username"] for r in logged] == [sender.username]
            joins = [r["username"] for r in records(server) if r["event"] == "join"]
            assert joins == [sender.username]


async def test_a_message_crossing_servers_is_not_formatted_into_a_redis_debug_line(tmp_path, redis_server, opened):
    """redis-py's RESP3 parser builds "Push response: ..." for every pushed message whether
    anyone logs it or not; the subscriber speaks RESP2, which has no such line to build."""
    import logging

    heard: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            heard.append(record)

    logger, handler = logging.getLogger("push_response"), Keep()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        async with cluster(tmp_path, redis_server.url, 2) as servers:
            alice, bob = [await joined(ws(s), name, opened) for s, name in zip(servers, ("alice", "bob"))]
            await settle(alice, bob, members=2)
            msg_id = await alice.send("across")
            assert (await bob.next_message()).id == msg_id
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [r.getMessage()[:40] for r in heard] == []


async def test_a_command_redis_refuses_fails_alone_and_the_link_stays_up(tmp_path, redis_server, opened):
    """Commands leave for Redis in batches on one connection: one that Redis answers with an
    error settles its own future with that error, the commands around it in the same batch get
    their own replies, and messages still cross."""
    from redis.exceptions import ResponseError

    async with cluster(tmp_path, redis_server.url, 2) as servers:
        alice, bob = [await joined(ws(s), name, opened) for s, name in zip(servers, ("alice", "bob"))]
        await settle(alice, bob, members=2)
        link = servers[0].hub.cluster
        loop = asyncio.get_running_loop()
        before, refused, after = (loop.create_future() for _ in range(3))
        link._send(("PUBLISH", "securechat:nobody", "before"), before)
        link._send(("EVAL", "return redis.error_reply('refused here')", 0), refused)
        link._send(("PUBLISH", "securechat:nobody", "after"), after)
        assert await before == 0
        with pytest.raises(ResponseError, match="refused here"):
            await refused
        assert await after == 0
        assert link.up
        msg_id = await alice.send("still crossing")
        assert (await bob.next_message()).id == msg_id
        assert (await alice.expect("ack"))["recipients"] == 2


async def test_publishing_waits_while_redis_holds_too_much_of_ours_unread(tmp_path, redis_server, opened, monkeypatch):
    """Redis closes a subscriber that falls 32 MB behind, and what it held is lost for that
    process's members. Our own subscription is sent the same stream, so while our echo is more
    than ECHO_LAG_BYTES behind nothing more is published, and acks wait instead of messages being
    dropped; once it catches up, everything queued goes out in order."""
    from securechat.cluster import bridge

    async with cluster(tmp_path, redis_server.url, 2) as servers:
        alice, bob = [await joined(ws(s), name, opened) for s, name in zip(servers, ("alice", "bob"))]
        await settle(alice, bob, members=2)
        link = servers[0].hub.cluster
        link._unechoed = bridge.ECHO_LAG_BYTES + 1  # as if Redis still held that much for us
        held = [await alice.send(f"held {n}") for n in range(3)]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(bob.next_message(), 0.5)
        link._unechoed = 0
        link._echoed.set()
        assert [(await bob.next_message()).id for _ in held] == held
        # The bound counted in bytes, each event waiting for the one before it to come back.
        monkeypatch.setattr(bridge, "ECHO_LAG_BYTES", 0)
        sent = [await alice.send(f"one at a time {n}") for n in range(5)]
        assert [(await bob.next_message()).id for _ in sent] == sent
        assert link._unechoed == 0 and link.up


async def test_a_late_joiner_on_another_server_cannot_read_earlier_messages(tmp_path, redis_server, opened):
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        await settle(alice, bob, members=2)
        await alice.send("before carol")
        assert (await bob.next_message()).text == "before carol"
        carol = await joined(ws(two), "carol", opened)
        await settle(alice, bob, carol, members=3)
        earlier = next(r for r in records(one) if r["event"] == "msg")
        assert carol.sid not in earlier["keys"]
        for wrapped in earlier["keys"].values():
            with pytest.raises(Exception):
                carol.session.unwrap(wrapped)
        await alice.send("after carol")
        assert (await carol.next_message()).text == "after carol"
        assert (await bob.next_message()).text == "after carol"


async def test_leaves_rekeys_replays_and_recipient_lists_cross_servers(tmp_path, redis_server, opened):
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        carol = await joined(ws(two), "carol", opened)
        await settle(alice, bob, carol, members=3)
        # A rotated session key reaches the other server: messages to the new sid go through.
        old = alice.sid
        await alice.rotate()
        for _ in range(100):
            if alice.sid in bob.members and old not in bob.members:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await bob.recv(timeout=0.05)
        assert alice.sid in bob.members and old not in bob.members
        frame = bob.seal("to the rotated alice")
        await bob.send_frame(frame)
        assert (await alice.next_message()).text == "to the rotated alice"
        # The same frame again, to the same server: a replay; the other server remembers it too.
        await bob.expect("ack")
        await bob.send_frame(frame)
        error = await bob.expect("error")
        assert error["code"] == "replay"
        room = one.hub.rooms.get()
        assert room.recipient_list(frame["id"]) is not None  # alice's server can answer `recipients`
        assert await alice.unknown_recipients(frame["id"], frame["to"]) == []
        # A leave on one server is announced on the other, and logged once.
        carol.close()
        await settle(alice, bob, members=2)
        leaves = [r["username"] for s in (one, two) for r in records(s) if r["event"] == "leave"]
        assert leaves == ["carol"]


async def test_the_same_identity_joining_elsewhere_replaces_its_older_session(tmp_path, redis_server, opened):
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        await settle(alice, bob, members=2)
        again = ChatClient(ws(two), "alice", identity=alice.identity)
        opened.append(again)
        await again.connect()
        # alice's old session on server one is closed and gone from every roster.
        for _ in range(100):
            if alice.ws.close_code is not None:
                break
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await alice.recv(timeout=0.05)
        assert alice.ws.close_code == 4001
        await settle(bob, again, members=2)
        await until(lambda: len(one.hub.rooms.get().members) == 2, "server one lists two members")
        await again.send("it is me, on the other server")
        assert (await bob.next_message()).text == "it is me, on the other server"


async def test_a_server_killed_with_sigkill_disappears_from_every_roster(tmp_path, redis_server, opened):
    """A real `securechat serve` process killed with -9: no goodbye, only its heartbeats stop."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(port), "--data-dir", str(tmp_path / "victim")],
        cwd=ROOT, env=clean_env(XDG_RUNTIME_DIR=str(tmp_path / "run"), XDG_DATA_HOME=str(tmp_path / "home"),
                                SECURECHAT_CLUSTER_REDIS_URL=redis_server.url),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "run").mkdir(mode=0o700, exist_ok=True)
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, wait_for_http, f"http://127.0.0.1:{port}/healthz", process)
        async with cluster(tmp_path, redis_server.url, 1) as (survivor,):
            alice = await joined(ws(survivor), "alice", opened)
            bob = await joined(f"ws://127.0.0.1:{port}/ws", "bob", opened)
            dave = await joined(f"ws://127.0.0.1:{port}/ws", "dave", opened)
            await settle(alice, bob, dave, members=3)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            killed = time.monotonic()
            gone = set()
            while len(gone) < 2:
                frame = await alice.expect("left", timeout=15)
                gone.add(frame["username"])
            assert gone == {"bob", "dave"}
            assert time.monotonic() - killed < 15
            assert len(alice.members) == 1
            # The survivor logged their leaves (the dead process could not): once each.
            leaves = sorted(r["username"] for r in records(survivor) if r["event"] == "leave")
            assert leaves == ["bob", "dave"]
            carol = await joined(ws(survivor), "carol", opened)
            await settle(alice, carol, members=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_redis_stopped_and_restarted_mid_conversation(tmp_path, redis_server, opened):
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        erin = await joined(ws(one), "erin", opened)
        bob = await joined(ws(two), "bob", opened)
        await settle(alice, erin, bob, members=3)
        await alice.send("before the outage")
        assert (await bob.next_message()).text == "before the outage"
        assert (await erin.next_message()).text == "before the outage"
        await alice.expect("ack")

        redis_server.stop()
        await until(lambda: not one.hub.cluster.up and not two.hub.cluster.up, "both servers see Redis down")
        # /healthz says so.
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(f"http://127.0.0.1:{one.port}/healthz")
        assert refused.value.code == 503
        health = json.loads(refused.value.response.body)
        assert health["status"] == "degraded" and health["cluster"]["redis"] == "down"
        # A message that must cross is refused before anything is logged: no ack, nothing sent.
        logged_before = len(records(one))
        failed = await alice.send("during the outage")
        error = await alice.expect("error")
        assert error["id"] == failed and error["code"] == "server_error" and "Redis" in error["message"]
        assert len(records(one)) == logged_before
        # One that stays on this server still goes through (erin only).
        members = [m for m in alice.members.values() if m.username in ("alice", "erin")]
        frame = alice.seal("just us", members)
        await alice.send_frame(frame)
        assert (await erin.next_message()).text == "just us"
        assert (await alice.expect("ack"))["id"] == frame["id"]

        redis_server.start()  # empty: no persistence
        await until(lambda: one.hub.cluster.up and two.hub.cluster.up, "both servers reconnected", 20)
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{one.port}/healthz")
        assert json.loads(response.body)["cluster"]["redis"] == "up"
        # Members re-announced: a newcomer on server two sees everyone, and messages cross again.
        frank = await joined(ws(two), "frank", opened)
        await settle(frank, members=4)
        await settle(alice, erin, bob, members=4)
        msg_id = await alice.send("after the outage")
        for client in (bob, frank, erin):
            received = await client.next_message()
            assert (received.id, received.text) == (msg_id, "after the outage")
        await alice.expect("ack")
        # Nothing logged twice: every message id once across both logs.
        ids = [r["id"] for s in (one, two) for r in records(s) if r["event"] == "msg"]
        assert len(ids) == len(set(ids)) == 3


def test_a_single_server_without_redis_url_imports_nothing_of_the_cluster(tmp_path):
    code = ("import sys, asyncio; from securechat.config import Config; from securechat.server import start\n"
            "async def main():\n"
            f"    s = await start(Config(data_dir={str(tmp_path)!r}, port=0, log_fsync='never'))\n"
            "    assert s.hub.cluster is None\n"
            "    await s.shutdown()\n"
            "asyncio.run(main())\n"
            "assert not [m for m in sys.modules if m.startswith(('securechat.cluster', 'redis'))], 'imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.skipif(not hasattr(Rooms, "admits"), reason="named rooms (issue 16) are not on this branch yet")
async def test_named_rooms_are_shared_across_servers_and_stay_apart(tmp_path, redis_server, opened):
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(one) + "?room=design", "alice", opened)
        bob = await joined(ws(two) + "?room=design", "bob", opened)
        lobby = await joined(ws(two), "carol", opened)
        await settle(alice, bob, members=2)
        await settle(lobby, members=1)
        # Every room exists on both servers, whoever holds its members.
        await until(lambda: all({r.name: len(r.members) for r in s.hub.rooms} == {"design": 2, "lobby": 1}
                                for s in (one, two)), "both servers list both rooms")
        msg_id = await alice.send("design only")
        received = await bob.next_message()
        assert (received.id, received.text) == (msg_id, "design only")
        with pytest.raises(asyncio.TimeoutError):
            await lobby.expect("msg", timeout=0.5)
        record = next(r for r in records(one) if r["event"] == "msg")
        assert record["room"] == "design"
        # The last member leaving a room removes it everywhere.
        alice.close()
        await settle(bob, members=1)
        bob.close()
        await until(lambda: all({r.name for r in s.hub.rooms} == {"lobby"} for s in (one, two)),
                    "design gone on both servers")


async def test_http_fallback_posts_landing_on_another_server_reach_the_one_holding_the_session(
        tmp_path, redis_server, opened, monkeypatch):
    """The HTTP transport's stream is held by one process; its POSTs may land on any other (a
    load balancer, or the shared accept queue of `serve --workers`). They are run where the
    session lives, with that process's answer."""
    from security.rawstream import post

    from securechat.client_transport import HttpStreamConnection

    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(two), "alice", opened)
        # bob's stream is on server one; every POST of his (join, messages, acks, close) goes to two.
        monkeypatch.setattr(HttpStreamConnection, "posts_to", f"http://127.0.0.1:{two.port}")
        bob = ChatClient(f"http://127.0.0.1:{one.port}", "bob", transport="http")
        opened.append(bob)
        await bob.connect()
        await settle(alice, bob, members=2)
        assert len(one.app.settings["stream_sessions"].by_token) == 1  # one holds bob's session
        assert not two.app.settings["stream_sessions"].by_token  # two only passed his POSTs on
        for text in ("from bob, posted to the other server", "and again"):
            msg_id = await bob.send(text)
            received = await alice.next_message()
            assert (received.id, received.sender, received.text) == (msg_id, "bob", text)
            assert (await bob.expect("ack"))["recipients"] == 2
            assert (await bob.next_message()).id == msg_id  # his own copy, on his stream
        msg_id = await alice.send("to bob's stream")
        assert (await bob.next_message()).id == msg_id
        await bob.ws.ack()  # an ack through two, too
        held = next(iter(one.app.settings["stream_sessions"].by_token.values()))
        assert held.acked == bob.ws.last
        # bob's join and messages were validated and logged by the process holding him, once.
        assert [r["username"] for r in records(one) if r["event"] == "join"] == ["bob"]
        assert [r["from"]["username"] for r in records(one) if r["event"] == "msg"] == ["bob", "bob"]
        assert [r["from"]["username"] for r in records(two) if r["event"] == "msg"] == ["alice"]
        assert two.hub.cluster.forwarded >= 4 and one.hub.cluster.answered >= 4

        # Refusals come back as the holder gave them, and count against the session there.
        token = bob.ws.session["token"]
        status, body = await asyncio.get_running_loop().run_in_executor(None, lambda: post(
            "127.0.0.1", two.port, "/stream/ack", token=token, ack=bob.ws.last, content_type="text/plain"))
        assert (status, body["error"]) == (415, "bad_content_type")
        assert len(held.pipeline.strikes) == 1
        # A token nobody holds: every process said no.
        status, body = await asyncio.get_running_loop().run_in_executor(None, lambda: post(
            "127.0.0.1", two.port, "/stream/ack", token="A" * 22, ack=0))
        assert (status, body["error"]) == (404, "unknown_session")

        # Closing through two ends the session on one: alice sees bob leave; later POSTs learn why.
        bob.close()
        await settle(alice, members=1)
        await until(lambda: not one.app.settings["stream_sessions"].by_token, "bob's session ended")
        status, body = await asyncio.get_running_loop().run_in_executor(None, lambda: post(
            "127.0.0.1", two.port, "/stream/ack", token=token, ack=0))
        assert (status, body["error"], body["code"]) == (410, "session_closed", 1000)


async def test_a_fallback_stream_resumed_on_another_server_replays_what_it_missed_and_carries_on(
        tmp_path, redis_server, opened, monkeypatch):
    """A dropped HTTP-transport stream may come back on any process (GET /stream?session=...).
    The session stays where it is; the process the resume reached relays its stream: exactly
    the frames after the client's last id, then everything live, and the chat goes on."""
    from security.rawstream import RawStream, Refused

    from securechat.client_transport import HttpStreamConnection

    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(two), "alice", opened)
        bob = ChatClient(f"http://127.0.0.1:{one.port}", "bob", transport="http")
        opened.append(bob)
        await bob.connect()
        await settle(alice, bob, members=2)
        sessions_one, sessions_two = (s.app.settings["stream_sessions"] for s in (one, two))
        held = next(iter(sessions_one.by_id.values()))
        ids: list[int] = []  # every frame id bob's client reads, in order
        read = bob.ws._event

        def recording(event):
            if event.name == "message":
                ids.append(int(event.id))
            read(event)

        bob.ws._event = recording
        # bob's client resumes only when the test says so, to the server the test says.
        gate = asyncio.Event()
        resume = bob.ws._resume

        async def gated():
            await gate.wait()
            gate.clear()
            await resume()

        bob.ws._resume = gated

        async def drop(handler, to) -> int:
            """Cut bob's stream where it is written out; his client resumes at `to` when let go."""
            last = bob.ws.last
            handler.request.connection.stream.close()
            await until(lambda: held.stream is None, "bob's stream detached from his session")
            bob.ws.base = f"http://127.0.0.1:{to.port}"
            monkeypatch.setattr(HttpStreamConnection, "posts_to", bob.ws.base)
            return last

        seen = await drop(held.stream, two)
        missed = [await alice.send(f"while bob was away {n}") for n in range(3)]
        await until(lambda: held.seq >= seen + 3, "alice's messages waiting in bob's session")
        ids.clear()
        gate.set()
        for msg_id in missed:
            assert (await bob.next_message()).id == msg_id
            assert (await alice.next_message()).id == msg_id  # her own copy
        assert ids == list(range(seen + 1, seen + 4))  # exactly the frames after his last, once
        assert bob.ws.resumes == 1
        # His session is still one's; two only writes its stream out, from one, through Redis.
        assert list(sessions_one.by_id) == [held.id] and not sessions_two.by_id
        assert len(one.hub.cluster.relays.outgoing) == 1 and len(two.hub.cluster.relays.incoming) == 1

        # And on: bob's messages (posted to two, run on one) and alice's, over the relayed stream.
        msg_id = await bob.send("back, through the other server")
        received = await alice.next_message()
        assert (received.id, received.sender) == (msg_id, "bob")
        assert (await bob.expect("ack"))["recipients"] == 2
        assert (await bob.next_message()).id == msg_id
        msg_id = await alice.send("welcome back")
        assert (await bob.next_message()).id == msg_id
        assert (await alice.next_message()).id == msg_id
        await bob.ws.ack()
        assert held.acked == bob.ws.last
        assert ids == list(range(seen + 1, bob.ws.last + 1))

        # Dropped again, now where two writes it out: two tells one, and the session waits for
        # him; he resumes on one, locally, with what he missed meanwhile.
        relayed = next(iter(two.hub.cluster.relays.incoming.values()))
        seen = await drop(relayed, one)
        await until(lambda: not one.hub.cluster.relays.outgoing, "one told that the relay ended")
        msg_id = await alice.send("and again")
        await until(lambda: held.seq > seen, "alice's message waiting in bob's session")
        ids.clear()
        gate.set()
        assert (await bob.next_message()).id == msg_id
        assert bob.ws.resumes == 2 and held.stream is not None and not two.hub.cluster.relays.incoming
        assert ids == list(range(seen + 1, bob.ws.last + 1))
        # A resume on two supersedes the stream on one and is itself superseded by one on one.
        raw = await in_thread(RawStream, "127.0.0.1", two.port, query=f"?session={held.id}&last={bob.ws.last}")
        try:
            assert raw.session["session"] == held.id and one.hub.cluster.relays.outgoing
            again = await in_thread(RawStream, "127.0.0.1", one.port, query=f"?session={held.id}&last={bob.ws.last}")
            again.close()
            events = [await in_thread(raw.next_event)]
            while events[-1] is not None and len(events) < 10:  # pings may come first
                events.append(await in_thread(raw.next_event))
            assert events[-1] is None  # two's response ended when one's began
        finally:
            raw.close()
        # A session nobody holds: every process said no.
        with pytest.raises(Refused) as refused:
            await in_thread(RawStream, "127.0.0.1", two.port, query=f"?session={'A' * 22}&last=0")
        assert refused.value.status == 404 and refused.value.json()["error"] == "unknown_session"
        bob.close()
        await settle(alice, members=1)
        await until(lambda: not sessions_one.by_id, "bob's session ended")


def in_thread(function, *args, **kwargs):
    return asyncio.get_running_loop().run_in_executor(None, lambda: function(*args, **kwargs))


async def test_a_large_post_for_another_servers_session_is_checked_there_before_its_body_is_read(
        tmp_path, redis_server, opened):
    """Bodies past the default limit are read only for a real session: the holder checks the
    token and headers first. A frame larger than the default body limit gets through; one
    larger than a frame closes the session where it lives, as on the WebSocket (1009)."""
    from security.rawstream import RawStream, post

    def in_thread(function, *args):
        return asyncio.get_running_loop().run_in_executor(None, function, *args)

    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        stream = await in_thread(RawStream, "127.0.0.1", one.port)
        try:
            token = stream.session["token"]
            assert (await in_thread(stream.next_frame))["type"] == "hello"
            big = json.dumps({"v": 2, "type": "roster", "pad": "x" * (one.config.max_body_bytes * 2)})
            status, _ = await in_thread(lambda: post("127.0.0.1", two.port, "/stream/send", big, token=token, seq=1))
            assert status == 204  # handed to the session's pipeline on one, which answers on the stream
            assert (await in_thread(stream.next_frame))["type"] == "error"
            # An unknown token with a large body: refused before the body, as no one holds it.
            status, body = await in_thread(lambda: post("127.0.0.1", two.port, "/stream/send", big,
                                                        token="B" * 22, seq=1))
            assert (status, body["error"]) == (404, "unknown_session")
            huge = "x" * (one.config.max_frame_bytes + 1)
            status, body = await in_thread(lambda: post("127.0.0.1", two.port, "/stream/send", huge,
                                                        token=token, seq=2))
            assert (status, body["error"]) == (413, "too_large")
            event = await in_thread(stream.next_event)
            assert event.name == "close" and json.loads(event.data)["code"] == 1009
        finally:
            stream.close()


@contextlib.asynccontextmanager
async def workers_of_one_machine(tmp_path, redis_url: str, count: int, **options):
    """`count` servers as `serve --workers` makes them: one data dir (the blobs shared, a log
    each), worker numbers 0.., one Redis; but each on its own port, so a test picks which one
    a request reaches."""
    servers = []
    try:
        for index in range(count):
            config = Config(data_dir=tmp_path / "data", port=0, log_fsync="never", cluster_redis_url=redis_url,
                            worker=index, **options)
            servers.append(await start(config))
        for server in servers:
            await until(lambda s=server: s.hub.cluster.up, what="connected to Redis")
        yield servers
    finally:
        for server in servers:
            await server.shutdown()


async def test_an_attachment_uploaded_through_one_worker_is_downloaded_through_another(
        tmp_path, redis_server, opened):
    """Workers share the blob directory. An upload's requests may land on any worker: those that
    reach one not holding the uploader are passed on to the one that does (it keeps the upload's
    state); a download is served by whichever worker it reaches, from the shared directory."""
    from securechat.client import AttachmentError

    async with workers_of_one_machine(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        await settle(alice, bob, members=2)
        await until(lambda: all(len(s.hub.cluster.grants) == 1 for s in (one, two)), "capabilities known")
        data = os.urandom(1_500_000)  # two parts of 1 MiB at most
        alice.url = ws(two)  # her uploads reach two; her session (and the upload) is one's
        msg_id, ref = await alice.send_file(data, "notes.bin")
        assert two.hub.cluster.proxied == 3  # start and two parts, passed on to one
        assert not two.hub.blobs.pending() and not one.hub.blobs.pending()
        received = await bob.next_message()
        assert received.id == msg_id and received.files[0].id == ref.id
        # bob's own worker finds the blob one stored; one honours bob's capability, held by two.
        assert await bob.fetch_file(received.files[0]) == data
        bob.url = ws(one)
        assert await bob.fetch_file(received.files[0]) == data
        assert sorted(p.name for p in (tmp_path / "data" / "blobs").iterdir()
                      if p.is_file()) == sorted([ref.id, f"{ref.id}.json"])
        # A capability nobody issued is refused by both; alice's ends with her session, everywhere.
        token = alice.attachments["token"]
        alice.close()
        await settle(bob, members=1)
        await until(lambda: not two.hub.cluster.grants, "alice's capability forgotten on two")
        for server in (one, two):
            alice.url = ws(server)
            with pytest.raises(AttachmentError) as refused:
                await alice._call("GET", f"/api/blobs/{ref.id}")
            assert refused.value.code == "no_capability"
        assert token not in one.hub.grants


async def test_uploads_in_progress_on_two_workers_share_one_quota(tmp_path, redis_server, opened):
    """The quota counts every worker's uploads in progress, not only this one's: each start
    reserves its bytes in Redis atomically, so two uploads started on two workers cannot
    together take more than the quota holds, however their requests interleave."""
    import redis.asyncio as aioredis

    from securechat.client import AttachmentError

    size, quota = 2_000_000, 3_000_000  # one fits, two do not

    async def start(client):
        try:
            answer = await client._call("POST", "/api/blobs", {"Upload-Length": str(size)})
        except AttachmentError as refused:
            return refused
        return json.loads(answer.body)["upload"]

    async with workers_of_one_machine(tmp_path, redis_server.url, 2, attachments_quota_bytes=quota) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        await settle(alice, bob, members=2)
        redis = aioredis.from_url(redis_server.url)
        key = f"securechat:uploads:{one.hub.blobs.scope}"
        try:
            assert one.hub.blobs.scope == two.hub.blobs.scope  # one blob directory, one quota
            # One after the other: bob's start, on two, counts alice's upload in progress on one.
            first = await start(alice)
            assert isinstance(first, str), first
            refused = await start(bob)
            assert isinstance(refused, AttachmentError), "two uploads were let past the quota"
            assert (refused.code, refused.status) == ("quota_exceeded", 507)
            assert f"{quota - size} of {quota} bytes left" in str(refused)
            assert await redis.hlen(key) == 1  # alice's reservation; bob's went with his refusal
            await alice._call("DELETE", f"/api/blobs/uploads/{first}")
            await until(lambda: not one.hub.blobs.pending(), "alice's upload cancelled")
            # At the same moment on both workers: exactly one of the two gets in, every time.
            for _ in range(5):
                results = await asyncio.gather(start(alice), start(bob))
                accepted = [(client, upload) for client, upload in zip((alice, bob), results)
                            if isinstance(upload, str)]
                assert len(accepted) == 1, results
                assert [r.code for r in results if isinstance(r, AttachmentError)] == ["quota_exceeded"]
                client, upload = accepted[0]
                await client._call("DELETE", f"/api/blobs/uploads/{upload}")
                await until(lambda: not one.hub.blobs.pending() and not two.hub.blobs.pending(), "cancelled")
            # A finished upload gives up its reservation (its blob counts instead).
            await bob.send_file(os.urandom(500_000), "small.bin")
            for _ in range(500):
                if await redis.hlen(key) == 0:
                    break
                await asyncio.sleep(0.01)
            assert await redis.hlen(key) == 0
            assert isinstance(await start(alice), str)  # 0.5 MB stored + 2 MB: fits
            assert isinstance(await start(bob), AttachmentError)
            assert await redis.hlen(key) == 1
        finally:
            await redis.aclose()


async def hello_only(url: str, name: str, opened: list) -> ChatClient:
    """A client that has its hello and a session key ready, but has not sent its join yet."""
    from tornado.websocket import websocket_connect

    from securechat import crypto

    key = crypto.SessionKey.generate()
    client = ChatClient(url, name, session_keys=lambda: key)
    opened.append(client)
    client.ws = await websocket_connect(url)
    hello = await client.expect("hello")
    client.room, client.challenge = hello["room"], hello["challenge"]
    return client


async def test_look_alike_names_joining_two_servers_at_once_are_refused_across_processes(
        tmp_path, redis_server, opened):
    """Each server checks names against the room as it knows it, but a join on another server
    reaches it only a Redis round trip later: the name is claimed atomically in Redis first,
    so of "alice" and "a1ice" joining at the same moment, one gets in."""
    from securechat.client import ClientError

    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        rounds = []
        for attempt, (name, look_alike) in enumerate([("alice", "a1ice"), ("bella", "be11a"), ("carl", "Car1")]):
            first = await hello_only(ws(one), name, opened)  # the same race three times, new people
            second = await hello_only(ws(two), look_alike, opened)
            results = await asyncio.gather(first.join(timeout=5), second.join(timeout=5), return_exceptions=True)
            refused = [r for r in results if isinstance(r, ClientError)]
            assert len(refused) == 1 and str(refused[0]).startswith("username_taken:"), results
            assert len([r for r in results if isinstance(r, dict)]) == 1
            rounds.append((first, second) if isinstance(results[0], dict) else (second, first))
            await until(lambda a=attempt: all(len(s.hub.rooms.get().members) == a + 1 for s in (one, two)),
                        "both servers list the one who got in")
        # A leave frees the name everywhere: the one refused in the first round gets in now.
        winner, loser = rounds[0]
        winner.close()
        await until(lambda: all(len(s.hub.rooms.get().members) == 2 for s in (one, two)), "the leave crossed")
        retry = await joined(loser.url, loser.username, opened)
        assert len(retry.members) == 3


async def test_joins_on_another_server_are_announced_in_one_joins_frame(tmp_path, redis_server, opened):
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        carol = await joined(ws(one), "carol", opened)
        one.hub.announcer.delay = 0.5  # the moment a burst of joins shares, here made long
        burst = [await hello_only(ws(two), name, opened) for name in ("dave", "erin", "frank")]
        await asyncio.gather(*(person.join() for person in burst))
        frames = []
        while len(carol.members) < 4:
            frames.append(await carol.recv(timeout=5))
        kinds = [f["type"] for f in frames]
        assert kinds == ["joins"], kinds
        # in the order two admitted them (their join records there)
        order = [r["username"] for r in records(two) if r["event"] == "join"]
        assert [p["username"] for p in frames[0]["participants"]] == order and sorted(order) == ["dave", "erin", "frank"]


async def test_shutdown_ends_the_server_even_when_it_comes_while_the_lost_redis_is_being_let_go(tmp_path):
    """SIGTERM just after Redis went away must end the process: the shutdown may arrive at any
    point of the failed connection's clean-up (seen: a `serve --workers 2` that never exited when
    Redis stopped first). Each run gets its shutdown one more turn of the loop after Redis stops."""
    from redis_server import RedisServer

    for turns in range(0, 60, 3):
        redis = RedisServer(tmp_path / f"redis{turns}").start()
        config = Config(data_dir=tmp_path / f"data{turns}", port=0, log_fsync="never",
                        cluster_redis_url=redis.url, attachments_max_bytes=0)
        server = await start(config)
        try:
            await until(lambda: server.hub.cluster.up, what="connected to Redis")
            redis.stop()
            for _ in range(turns):
                await asyncio.sleep(0)
            try:
                await asyncio.wait_for(server.shutdown(), 5)
            except asyncio.TimeoutError:
                raise AssertionError(f"shutdown {turns} turns after Redis stopped never ended") from None
        finally:
            redis.stop()


async def test_the_cluster_view_reads_redis_going_away_as_unreachable(tmp_path, redis_server):
    """Asked for every process's figures at the moment Redis goes away (before the link has
    noticed), the bridge says "unreachable" — what the admin API answers with this process's
    own figures — instead of letting the Redis client's error make the status a 500."""
    async with cluster(tmp_path, redis_server.url, 1) as (server,):
        assert len(await server.hub.cluster.workers()) == 1
        redis_server.stop()
        assert server.hub.cluster._client is not None  # not noticed yet: no loop turn since
        with pytest.raises(ConnectionError, match="Redis is unreachable"):
            await server.hub.cluster.workers()


class Machine:
    """`securechat serve` as if on a machine of its own: its own host name (a UTS namespace,
    `unshare -u`, so the process's gethostname() is `name`), port, data dir and runtime dir;
    Redis shared. Nothing but Redis joins two of them."""

    def __init__(self, tmp_path, name: str, redis_url: str):
        self.name = name
        self.port = free_port()
        self.data = tmp_path / name / "data"
        runtime = tmp_path / name / "run"
        runtime.mkdir(parents=True, mode=0o700)
        env = clean_env(XDG_RUNTIME_DIR=str(runtime), XDG_DATA_HOME=str(tmp_path / name / "home"),
                        SECURECHAT_CLUSTER_REDIS_URL=redis_url)
        command = [sys.executable, str(ROOT / "cli.py"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--data-dir", str(self.data)]
        self.process = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name, *command],
                                        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        wait_for_http(f"http://127.0.0.1:{self.port}/healthz", self.process)

    def workers(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as answer:
            return json.loads(answer.read())["cluster"]["workers"]

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=15)
        return err


@pytest.fixture
def two_machines(tmp_path, redis_server):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("a host name of its own per server (unshare --uts) needs root")
    started = []
    try:
        started = [Machine(tmp_path, name, redis_server.url) for name in ("machine-a", "machine-b")]
        deadline = time.monotonic() + 15
        while not all(machine.workers() == 2 for machine in started):
            assert time.monotonic() < deadline, "the two machines did not find each other in Redis"
            time.sleep(0.05)
        yield started
    finally:
        for machine in started:
            assert "Traceback" not in machine.stop()


async def test_attachments_on_two_machines_with_their_own_data_dirs(tmp_path, redis_server, two_machines, opened):
    """Two `securechat serve` on two machines (host names), each its own data dir, one Redis.
    An upload whose requests reach the other machine is run, through Redis, by the one holding
    the uploader; its blob is stored there only, and a download through the other machine is
    fetched from it through Redis, part by part."""
    import redis as sync_redis

    from securechat.client import AttachmentError

    a, b = two_machines
    hosts = sync_redis.Redis.from_url(redis_server.url)
    try:
        assert sorted(json.loads(hosts.hget(b"securechat:worker:" + worker, "host"))
                      for worker in hosts.zrange("securechat:workers", 0, -1)) == ["machine-a", "machine-b"]
    finally:
        hosts.close()
    alice = await joined(f"ws://127.0.0.1:{a.port}/ws", "alice", opened)
    bob = await joined(f"ws://127.0.0.1:{b.port}/ws", "bob", opened)
    await settle(alice, bob, members=2)
    data = os.urandom(1_500_000)  # two upload parts of 1 MiB at most, three download parts of 512 KiB
    alice.url = f"ws://127.0.0.1:{b.port}/ws"  # her upload reaches b; her session (and the upload) is a's
    msg_id, ref = await alice.send_file(data, "notes.bin")  # b knows her capability: bob sees her
    received = await bob.next_message()
    assert received.id == msg_id and received.files[0].id == ref.id
    blobs = lambda machine: sorted(p.name for p in (machine.data / "blobs").iterdir() if p.is_file())
    assert blobs(a) == sorted([ref.id, f"{ref.id}.json"]) and blobs(b) == []  # stored by a alone
    # bob's own machine b fetches it from a; a serves it to him directly too.
    assert await bob.fetch_file(received.files[0]) == data
    bob.url = f"ws://127.0.0.1:{a.port}/ws"
    assert await bob.fetch_file(received.files[0]) == data
    assert blobs(b) == []
    # Nobody has this one: every process said no.
    bob.url = f"ws://127.0.0.1:{b.port}/ws"
    with pytest.raises(AttachmentError) as missing:
        await bob._call("GET", f"/api/blobs/{'0' * 64}")
    assert (missing.value.code, missing.value.status) == ("not_found", 404)
    alice.close()
    bob.close()
    await asyncio.sleep(0.2)
