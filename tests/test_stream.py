"""The HTTP transport (PROTOCOL.md §1.2) end to end: a real server on loopback, the reference
client over HTTP next to WebSocket clients, and raw requests where the wire itself is the point."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import settle
from security.rawstream import RawStream, post

from securechat import crypto
from securechat.client import ChatClient, Message
from securechat.config import Config
from securechat.relay.stream import StreamSession
from securechat.server import start

pytestmark = pytest.mark.gen_test(timeout=30)


async def in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def sessions(hub) -> list[StreamSession]:
    return [c for c in hub.connections if isinstance(c, StreamSession)]


@pytest.fixture
def over_http(http_server, http_port):
    """`await over_http("alice")` joins a reference client over the HTTP transport."""
    clients: list[ChatClient] = []

    async def _connect(username: str, **kwargs) -> ChatClient:
        client = ChatClient(f"http://127.0.0.1:{http_port}", username, transport="http", **kwargs)
        clients.append(client)
        await client.connect()
        return client

    yield _connect
    for client in clients:
        client.close()


async def test_an_http_participant_chats_with_websocket_participants(over_http, connect, hub):
    alice = await over_http("alice")
    bob, carol = await connect("bob"), await connect("carol")
    await settle(alice, bob, carol, members=3)
    for sender in (alice, bob, carol):
        msg_id = await sender.deliver(f"from {sender.username}")
        for client in (alice, bob, carol):
            received = await client.next_message()
            assert isinstance(received, Message)
            assert (received.id, received.sender, received.text) == (msg_id, sender.username, f"from {sender.username}")
    # To the Hub she is a participant like the others; only the transport object differs.
    (session,) = sessions(hub)
    assert hub.rooms.get().find("alice").connection is session
    assert len(hub.connections) == 3


async def test_the_stream_is_server_sent_events_carrying_the_websockets_frames(http_port, http_server, hub):
    stream = await in_thread(RawStream, "127.0.0.1", http_port)
    try:
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-store"
        assert stream.headers["x-accel-buffering"] == "no"
        assert "default-src 'self'" in stream.headers["content-security-policy"]
        assert stream.first.name == "session"
        assert set(stream.session) == {"session", "token", "ping_ms", "timeout_ms", "ack_bytes"}
        assert stream.session["session"] != stream.session["token"]
        config = hub.config
        assert stream.session["ping_ms"] == config.ping_interval * 1000
        assert stream.session["timeout_ms"] == config.ping_timeout * 1000
        assert stream.session["ack_bytes"] == config.max_outbound_bytes // 16
        hello = await in_thread(stream.next_event)
        assert (hello.name, hello.id) == ("message", "1")
        frame = json.loads(hello.data)
        assert frame["type"] == "hello" and frame["room"] == "lobby"
        assert frame["limits"] == hub.limits()
    finally:
        stream.close()


async def test_a_dropped_stream_is_resumed_and_loses_no_frame(over_http, connect, hub):
    alice = await over_http("alice")
    bob = await connect("bob")
    await settle(alice, bob, members=2)
    (session,) = sessions(hub)
    # The network cuts alice's stream (not her session); bob keeps talking meanwhile.
    session.stream.request.connection.stream.close()
    sent = [await bob.deliver(f"while you were away {i}") for i in range(5)]
    received = [await alice.next_message() for _ in sent]
    assert [m.id for m in received] == sent
    assert [m.text for m in received] == [f"while you were away {i}" for i in range(5)]
    assert alice.ws.resumes >= 1
    assert sessions(hub) == [session], "the same session carried on"
    # Nobody noticed: no left/joined for bob, alice is still the same member.
    assert [f for f in bob.events if f["type"] in ("left", "joined")] == []
    assert hub.rooms.get().find("alice").connection is session
    await alice.deliver("I am back")
    while (received := await bob.next_message()).sender == "bob":
        pass  # bob's own echoes of what he sent
    assert received.text == "I am back"


async def test_a_resume_replays_exactly_the_frames_after_last(http_port, http_server, connect, hub):
    stream = await in_thread(RawStream, "127.0.0.1", http_port)
    token, session_id = stream.session["token"], stream.session["session"]
    hello = await in_thread(stream.next_frame)
    assert hello["type"] == "hello"
    watcher = ChatClient("unused", "watcher", challenge=hello["challenge"])
    watcher.session = crypto.SessionKey.generate()
    status, _ = await in_thread(lambda: post("127.0.0.1", http_port, "/stream/send",
                                             json.dumps(watcher.join_frame("lobby")), token=token, seq=1))
    assert status == 204
    assert (await in_thread(stream.next_frame))["type"] == "welcome"
    seen = stream.last
    stream.close()
    for name in ("bob", "carol"):
        await connect(name)  # two `joined` frames wait for the watcher in its session
    again = await in_thread(lambda: RawStream("127.0.0.1", http_port, query=f"?session={session_id}&last={seen}"))
    try:
        assert again.session["session"] == session_id
        # Two `joined` frames, or one `joins` when both joins fell in one announcing window (a
        # loaded machine); pings (no id of their own) may come between.
        replayed, names = [], []
        while len(names) < 2:
            event = await in_thread(again.next_event)
            assert event is not None, "the stream ended before both joins were replayed"
            if event.name != "message":
                continue
            replayed.append(event)
            frame = json.loads(event.data)
            names += [p["username"] for p in frame.get("participants", [frame.get("participant")])]
        assert [e.id for e in replayed] == [str(seen + n) for n in range(1, len(replayed) + 1)]
        assert names == ["bob", "carol"]
    finally:
        again.close()


async def test_a_page_from_before_the_upgrade_is_told_to_reload_over_http_too(http_port, http_server):
    """§1: the v1-shaped answer to a v1 frame does not depend on the transport."""
    stream = await in_thread(RawStream, "127.0.0.1", http_port)
    try:
        assert (await in_thread(stream.next_frame))["type"] == "hello"
        token = stream.session["token"]
        errors = []
        for seq, frame in enumerate(['{"v": 1, "type": "join", "username": "alice"}', '{"v": 3, "type": "roster"}'],
                                    start=1):
            status, _ = await in_thread(lambda: post("127.0.0.1", http_port, "/stream/send", frame,
                                                     token=token, seq=seq))
            assert status == 204
            errors.append(await in_thread(stream.next_frame))
        assert [(e["v"], e["type"], e["code"]) for e in errors] == [(1, "error", "unsupported_version"),
                                                                    (2, "error", "unsupported_version")]
        assert "reload the page" in errors[0]["message"] and "reload" not in errors[1]["message"]
    finally:
        stream.close()


async def test_a_retried_post_is_handled_once_and_a_gap_is_refused(http_port, http_server, connect):
    bob = await connect("bob")
    stream = await in_thread(RawStream, "127.0.0.1", http_port)
    token = stream.session["token"]
    hello = await in_thread(stream.next_frame)
    joiner = ChatClient("unused", "alice", challenge=hello["challenge"])
    joiner.session = crypto.SessionKey.generate()

    def send(frame, seq):
        return post("127.0.0.1", http_port, "/stream/send", json.dumps(frame), token=token, seq=seq)

    try:
        join = joiner.join_frame("lobby")
        assert (await in_thread(send, join, 1))[0] == 204
        assert (await in_thread(send, join, 1))[0] == 204  # a retry
        await bob.expect("joined")
        frames = [await in_thread(stream.next_frame) for _ in range(1)]
        assert [hello["type"]] + [f["type"] for f in frames] == ["hello", "welcome"], "the join was handled once"
        status, body = await in_thread(send, {"v": 2, "type": "roster"}, 3)
        assert (status, body["error"]) == (409, "out_of_order")
        assert (await in_thread(send, {"v": 2, "type": "roster"}, 2))[0] == 204
        assert (await in_thread(stream.next_frame))["type"] == "roster"
    finally:
        stream.close()


async def test_acknowledged_frames_are_forgotten(over_http, connect, hub):
    alice = await over_http("alice")
    bob = await connect("bob")
    await settle(alice, bob, members=2)
    (session,) = sessions(hub)
    for i in range(3):
        await bob.deliver(f"note {i}")
        await alice.next_message()
    assert session.unacked and session.unacked_bytes > 0
    await alice.ws.ack()
    assert session.unacked_bytes == 0 and not session.unacked
    assert session.acked == alice.ws.last


@pytest.fixture
def config(tmp_path) -> Config:
    # Short liveness settings (for every test here) so the ping and timeout tests take seconds.
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", ping_interval=1.0, ping_timeout=1.0,
                  join_timeout=2.0)


async def test_pings_keep_a_quiet_session_alive(over_http, connect, hub):
    alice = await over_http("alice")
    bob = await connect("bob")
    await settle(alice, bob, members=2)
    await asyncio.sleep(3.5)  # longer than ping_interval + ping_timeout: the acks answer the pings
    assert sessions(hub) and hub.rooms.get().find("alice") is not None
    await bob.deliver("still there?")
    assert (await alice.next_message()).text == "still there?"


async def test_a_client_that_goes_silent_times_out_and_leaves(http_port, http_server, connect, hub):
    bob = await connect("bob")
    stream = await in_thread(RawStream, "127.0.0.1", http_port)
    joiner = ChatClient("unused", "ghost", challenge=json.loads((await in_thread(stream.next_event)).data)["challenge"])
    joiner.session = crypto.SessionKey.generate()
    await in_thread(lambda: post("127.0.0.1", http_port, "/stream/send", json.dumps(joiner.join_frame("lobby")),
                                 token=stream.session["token"], seq=1))
    await bob.expect("joined")
    started = time.monotonic()

    def read_to_the_end():
        names = []
        while (event := stream.next_event()) is not None:
            names.append(event.name)
            if event.name == "close":
                return names, json.loads(event.data)
        return names, None

    try:
        names, ended = await in_thread(read_to_the_end)  # reads, never answers a ping
    finally:
        stream.close()
    assert "ping" in names
    assert ended == {"code": 4004, "reason": "timed out: no request from the client"}
    assert time.monotonic() - started < 5
    assert (await bob.expect("left"))["username"] == "ghost"
    assert sessions(hub) == []


async def test_a_session_that_never_joins_meets_the_hubs_join_deadline(http_port, http_server, hub):
    stream = await in_thread(RawStream, "127.0.0.1", http_port)
    token = stream.session["token"]

    def keep_acking_until_closed():
        # Alive (it answers every ping) but it never joins: the Hub's deadline, not ours, ends it.
        while (event := stream.next_event()) is not None:
            if event.name == "ping":
                post("127.0.0.1", http_port, "/stream/ack", "{}", token=token, ack=stream.last)
            if event.name == "close":
                return json.loads(event.data)
        return None

    try:
        assert hub.unjoined.held_by("127.0.0.1") == 1
        assert await in_thread(keep_acking_until_closed) == {"code": 4003, "reason": "did not join in time"}
    finally:
        stream.close()
    assert hub.unjoined.held_by("127.0.0.1") == 0 and sessions(hub) == []


async def test_replaced_by_a_websocket_session_of_the_same_identity(over_http, http_port, hub, ws_url):
    alice = await over_http("alice")
    again = ChatClient(ws_url, "alice", identity=alice.identity)
    await again.connect()
    try:
        while await alice.ws.read_message() is not None:
            pass
        assert alice.ws.close_code == 4001
        status, body = await in_thread(lambda: post("127.0.0.1", http_port, "/stream/ack", "{}",
                                                    token=alice.ws.session["token"], ack=0))
        assert (status, body["error"], body["code"]) == (410, "session_closed", 4001)
        assert body["reason"] == "replaced by a newer session"
    finally:
        again.close()


async def test_leave_and_close_end_the_session_at_once(over_http, connect, hub):
    alice, carol = await over_http("alice"), await over_http("carol")
    bob = await connect("bob")
    await settle(alice, bob, carol, members=3)
    await alice.send_frame({"v": 2, "type": "leave"})
    assert (await bob.expect("left"))["username"] == "alice"
    while await alice.ws.read_message() is not None:
        pass
    assert (alice.ws.close_code, alice.ws.close_reason) == (1000, "left the room")
    carol.close()  # POST /stream/close: the page went away
    assert (await bob.expect("left"))["username"] == "carol"
    assert sessions(hub) == []


async def test_a_server_shutdown_ends_http_sessions_with_1001(tmp_path):
    server = await start(Config(data_dir=tmp_path / "own", port=0, log_fsync="never"))
    alice = ChatClient(f"http://127.0.0.1:{server.port}", "alice", transport="http")
    await alice.connect()
    await server.shutdown()
    while await asyncio.wait_for(alice.ws.read_message(), 5) is not None:
        pass
    assert (alice.ws.close_code, alice.ws.close_reason) == (1001, "the server is shutting down")
