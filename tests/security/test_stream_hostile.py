"""Attacks on the HTTP transport's endpoints (PROTOCOL.md §1.2): tokens, origins, content types,
sizes, floods and a stream that never reads. Each attack gets its clear error and costs only the
attacker: two honest participants keep chatting through it."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import pytest
from conftest import serving, settle
from rawstream import RawStream, Refused, post
from rawws import HandshakeRefused, RawWebSocket

from securechat import crypto
from securechat.client import ChatClient, Message
from securechat.config import Config
from securechat.relay.stream import StreamSession

pytestmark = pytest.mark.gen_test(timeout=60)

HOST = "127.0.0.1"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", max_outbound_bytes=65536,
                  max_frame_bytes=40_000, rate_per_second=200.0, rate_burst=200,
                  max_connections_per_address=8, joins_per_minute=20)


async def in_thread(function, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: function(*args, **kwargs))


async def chat_round(alice: ChatClient, bob: ChatClient, text: str) -> float:
    started = time.monotonic()
    await alice.deliver(text)
    while True:
        received = await bob.next_message(timeout=10)
        if isinstance(received, Message) and received.sender == alice.username:
            break
    assert received.text == text
    return time.monotonic() - started


def sessions(hub) -> list[StreamSession]:
    return [c for c in hub.connections if isinstance(c, StreamSession)]


def join_frame(name: str, challenge: str = "0" * 32) -> str:
    """A join signing `challenge` (the hello's, PROTOCOL.md §4)."""
    client = ChatClient("unused", name, challenge=challenge)
    client.session = crypto.SessionKey.generate()
    return json.dumps(client.join_frame("lobby"))


async def joined_stream(port: int, name: str, **kwargs) -> RawStream:
    """A raw HTTP participant: stream opened, joined through one POST, welcome read."""
    raw = await in_thread(RawStream, HOST, port, **kwargs)
    hello = await in_thread(raw.next_frame)
    assert hello["type"] == "hello"
    status, _ = await in_thread(post, HOST, port, "/stream/send", join_frame(name, hello["challenge"]),
                                token=raw.session["token"], seq=1, source=kwargs.get("source"))
    assert status == 204
    assert (await in_thread(raw.next_frame))["type"] == "welcome"
    return raw


async def honest_pair(connect) -> tuple[ChatClient, ChatClient]:
    """Two WebSocket participants who keep chatting through every attack."""
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    return alice, bob


async def test_a_post_without_a_token_or_with_a_forged_one_is_refused(http_port, connect, hub):
    alice, bob = await honest_pair(connect)
    for token, expected in ((None, (401, "no_token")), ("A" * 22, (404, "unknown_session")),
                            ("not-even-the-right-shape", (404, "unknown_session"))):
        status, body = await in_thread(post, HOST, http_port, "/stream/send", '{"v":2,"type":"roster"}',
                                       token=token, seq=1)
        assert (status, body["error"]) == expected
        assert body["message"]
    # A stream's own id is not a token: it opens the stream, never the POSTs.
    raw = await in_thread(RawStream, HOST, http_port)
    try:
        status, body = await in_thread(post, HOST, http_port, "/stream/send", '{"v":2,"type":"roster"}',
                                       token=raw.session["session"], seq=1)
        assert (status, body["error"]) == (404, "unknown_session")
    finally:
        raw.close()
    await chat_round(alice, bob, "after forged tokens")


async def test_an_expired_token_gets_session_closed_then_unknown(http_port, connect, app):
    alice, bob = await honest_pair(connect)
    raw = await joined_stream(http_port, "mallory")
    token, session_id = raw.session["token"], raw.session["session"]
    status, _ = await in_thread(post, HOST, http_port, "/stream/close", "{}", token=token)
    assert status == 204
    assert (await in_thread(raw.next_frame)) == {"type": "close", "code": 1000, "reason": "closed by the client"}
    raw.close()
    status, body = await in_thread(post, HOST, http_port, "/stream/send", '{"v":2,"type":"roster"}', token=token, seq=2)
    assert (status, body["error"], body["code"]) == (410, "session_closed", 1000)
    # A resume of the ended session says why on the stream itself (EventSource reads no bodies).
    again = await in_thread(RawStream, HOST, http_port, query=f"?session={session_id}&last=0")
    assert again.first.name == "close" and json.loads(again.first.data)["code"] == 1000
    again.close()
    # Once the server has forgotten it, the same token is simply unknown.
    sessions_registry = app.settings["stream_sessions"]
    for key in list(sessions_registry.tombstones):
        expires, code, reason = sessions_registry.tombstones[key]
        sessions_registry.tombstones[key] = (time.monotonic() - 1, code, reason)
    status, body = await in_thread(post, HOST, http_port, "/stream/send", '{"v":2,"type":"roster"}', token=token, seq=2)
    assert (status, body["error"]) == (404, "unknown_session")
    with pytest.raises(Refused) as refused:
        await in_thread(RawStream, HOST, http_port, query=f"?session={session_id}&last=0")
    assert refused.value.status == 404
    await chat_round(alice, bob, "after expired tokens")


async def test_foreign_or_missing_origin_is_refused(http_port, connect, hub):
    alice, bob = await honest_pair(connect)
    raw = await joined_stream(http_port, "mallory")
    token = raw.session["token"]
    try:
        for origin in ("https://evil.example", "null", None, f"http://{HOST}:{http_port + 1}"):
            status, body = await in_thread(post, HOST, http_port, "/stream/send", '{"v":2,"type":"roster"}',
                                           token=token, seq=2, origin=origin)
            assert (status, body["error"]) == (403, "bad_origin"), origin
        # The stream itself: a cross-origin EventSource, or a cross-site <img>/no-cors fetch.
        before = len(hub.connections)
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"}):
            with pytest.raises(Refused) as refused:
                await in_thread(RawStream, HOST, http_port, headers=headers)
            assert refused.value.status == 403 and refused.value.json()["error"] == "bad_origin"
        assert len(hub.connections) == before, "a refused stream holds no session"
        # The refused POSTs were never handled: the next frame is still number 2.
        assert (await in_thread(post, HOST, http_port, "/stream/send", '{"v":2,"type":"roster"}',
                                token=token, seq=2))[0] == 204
        assert (await in_thread(raw.next_frame))["type"] == "roster"
    finally:
        raw.close()
    await chat_round(alice, bob, "after foreign origins")


async def test_form_and_text_content_types_are_refused(http_port, connect, hub):
    """What a cross-site <form> can send (urlencoded, multipart, text/plain) never reaches the Hub."""
    alice, bob = await honest_pair(connect)
    raw = await joined_stream(http_port, "mallory")
    token = raw.session["token"]
    msg = alice.seal("forged through a form")
    try:
        for content_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                             "text/plain", "text/plain; charset=utf-8", None,
                             "application/json; charset=latin-1"):
            status, body = await in_thread(post, HOST, http_port, "/stream/send", json.dumps(msg),
                                           token=token, seq=2, content_type=content_type)
            assert (status, body["error"]) == (415, "bad_content_type"), content_type
    finally:
        raw.close()
    assert sessions(hub), "a few refusals do not end the session"
    await chat_round(alice, bob, "after form posts")
    assert all(f["type"] != "msg" or f["id"] != msg["id"] for f in bob.events)


def request(port: int, method: str, path: str, headers: dict, body: bytes | None = None
            ) -> tuple[int, dict[str, str]]:
    """One request with exactly these headers; (status, lower-cased response headers)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


async def test_no_cors_headers_anywhere_and_a_preflight_is_never_granted(http_port, connect, hub):
    """Another origin's fetch with our JSON content type or token header must ask a preflight
    first (PROTOCOL.md §1.2); it is never granted, so the real POST is never sent. Nor does
    any answer of the transport carry a CORS header that would let another origin read it."""
    alice, bob = await honest_pair(connect)
    raw = await joined_stream(http_port, "mallory")
    token = raw.session["token"]
    session = next(s for s in sessions(hub) if s.token == token)
    try:
        for path in ("/stream", "/stream/send", "/stream/ack", "/stream/close"):
            for origin in ("https://evil.example", "null", f"http://{HOST}:{http_port}"):
                status, headers = await in_thread(request, http_port, "OPTIONS", path, {
                    "Host": f"{HOST}:{http_port}", "Origin": origin, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type,securechat-token,securechat-seq"})
                assert status >= 400 and cors_headers(headers) == {}, (path, origin, status, headers)
        # What the transport answers when it works, and when it refuses: never a CORS header.
        assert cors_headers(raw.headers) == {}
        for origin, content_type, expected in ((f"http://{HOST}:{http_port}", "application/json", 204),
                                               ("https://evil.example", "application/json", 403),
                                               (f"http://{HOST}:{http_port}", "text/plain", 415)):
            status, headers = await in_thread(request, http_port, "POST", "/stream/ack", {
                "Host": f"{HOST}:{http_port}", "Origin": origin, "Content-Type": content_type,
                "Securechat-Token": token, "Securechat-Ack": "2"}, body=b"{}")
            assert status == expected and cors_headers(headers) == {}, (origin, content_type, status)
        assert session.received == 1, "only mallory's own join was handled"
    finally:
        raw.close()
    await chat_round(alice, bob, "after preflights")


async def test_an_oversized_post_is_refused_and_closes_the_session_like_1009(http_port, connect, hub, config):
    alice, bob = await honest_pair(connect)
    raw = await joined_stream(http_port, "mallory")
    token = raw.session["token"]
    big = '{"v":2,"type":"roster","pad":"' + "x" * config.max_frame_bytes + '"}'
    status, body = await in_thread(post, HOST, http_port, "/stream/send", big, token=token, seq=2)
    assert (status, body["error"]) == (413, "too_large")
    assert await in_thread(raw.next_frame) == {"type": "close", "code": 1009, "reason": "frame too large"}
    raw.close()
    # Without a valid token the body is never read: the refusal comes first, then the socket closes.
    status, body = await in_thread(post, HOST, http_port, "/stream/send", big, token="B" * 22, seq=1)
    assert (status, body["error"]) == (404, "unknown_session")
    status, body = await in_thread(post, HOST, http_port, "/stream/ack", "x" * 5000, token="B" * 22)
    assert status == 404
    assert sessions(hub) == []
    await chat_round(alice, bob, "after oversized posts")


async def test_a_post_flood_is_rate_limited_then_closed(config):
    # One POST at a time is slower than a pipelined WebSocket: a small budget makes a flood of
    # them a flood (the WebSocket's own test does the same with raw frames).
    async with serving(config.replace(rate_per_second=5.0, rate_burst=10)) as port:
        alice = ChatClient(f"ws://{HOST}:{port}/ws", "alice")
        bob = ChatClient(f"ws://{HOST}:{port}/ws", "bob")
        await alice.connect()
        await bob.connect()
        await settle(alice, bob, members=2)
        raw = await joined_stream(port, "flooder")
        token = raw.session["token"]

        def flood():
            statuses = []
            for seq in range(2, 400):
                status, _ = post(HOST, port, "/stream/send", '{"v":2,"type":"roster"}', token=token, seq=seq)
                statuses.append(status)
                if status == 410:
                    break
            return statuses

        try:
            statuses = await in_thread(flood)
            assert statuses[-1] == 410, "the session was closed"
            codes = []
            while (frame := await in_thread(raw.next_frame)) is not None:
                codes.append(frame.get("code") if frame["type"] in ("error", "close") else frame["type"])
                if frame["type"] == "close":
                    break
            assert "rate_limited" in codes
            assert codes[-1] == 1008
            assert (await bob.expect("left"))["username"] == "flooder"
            await asyncio.sleep(1.0)  # the honest sender's own budget refills
            await chat_round(alice, bob, "after the flood")
        finally:
            raw.close()
            alice.close()
            bob.close()


async def test_garbage_frames_strike_the_session_out(http_port, connect, hub):
    alice, bob = await honest_pair(connect)
    raw = await joined_stream(http_port, "garbage")
    token = raw.session["token"]

    def garbage():
        last = None
        for seq in range(2, 40):
            last = post(HOST, http_port, "/stream/send", b"{nope" if seq % 2 else b"\xff\xfe", token=token, seq=seq)
            if last[0] == 410:
                break
        return last

    status, body = await in_thread(garbage)
    assert (status, body["code"]) == (410, 1008)
    raw.close()
    await chat_round(alice, bob, "after garbage")


async def test_a_stream_that_never_reads_is_dropped_and_others_are_not_slowed(http_port, connect, hub):
    alice, bob = await honest_pair(connect)
    stalled = await joined_stream(http_port, "stalled", rcvbuf=4096)  # reads nothing from here on
    await settle(alice, bob, members=3)
    baseline = max([await chat_round(alice, bob, f"warm-up {i}") for i in range(3)])
    big = "x" * 15_000
    slowest = 0.0
    for i in range(200):
        if not sessions(hub):
            break
        slowest = max(slowest, await chat_round(alice, bob, f"{big} {i}"))
    assert sessions(hub) == [], "the stalled reader was never dropped"
    assert hub.rooms.get().find("stalled") is None
    assert slowest < 2.0, f"honest clients waited {slowest:.2f}s (baseline {baseline:.3f}s)"
    stalled.close()
    await chat_round(alice, bob, "after the stalled reader left")


async def test_acking_what_it_never_read_does_not_buy_unbounded_memory(http_port, connect, hub):
    """A liar acknowledges every frame at once but never reads the socket: the write buffer cap
    (the WebSocket's own max_outbound_bytes) drops it all the same."""
    alice, bob = await honest_pair(connect)
    liar = await joined_stream(http_port, "liar", rcvbuf=4096)
    token = liar.session["token"]
    await settle(alice, bob, members=3)
    (session,) = sessions(hub)
    big = "x" * 15_000
    for i in range(200):
        if not sessions(hub):
            break
        await in_thread(post, HOST, http_port, "/stream/ack", "{}", token=token, ack=session.seq)
        await chat_round(alice, bob, f"{big} {i}")
    assert sessions(hub) == []
    liar.close()
    await chat_round(alice, bob, "after the liar")


async def test_sessions_from_one_address_are_capped_like_websockets(http_port, connect, hub, config):
    """The same Hub admission as the WebSocket: never-joined sessions from one address wait
    in the small pre-join pool, and once it is full neither transport gets another one."""
    alice, bob = await honest_pair(connect)
    cap = min(config.max_unjoined_per_address, config.max_connections_per_address)

    def open_many():
        opened, refused = [], []
        for _ in range(cap + 4):
            try:
                opened.append(RawStream(HOST, http_port, source="127.0.0.4"))
            except Refused as exc:
                refused.append((exc.status, exc.json()["error"], exc.json()["message"]))
        return opened, refused

    opened, refused = await in_thread(open_many)
    try:
        assert len(opened) == cap
        assert {(status, error) for status, error, _ in refused} == {(429, "refused")}
        assert hub.unjoined.held_by("127.0.0.4") == cap
        with pytest.raises(HandshakeRefused) as websocket:
            await in_thread(RawWebSocket, HOST, http_port, source="127.0.0.4", timeout=5)
        assert websocket.value.status == 429
        assert json.loads(websocket.value.body)["error"] == refused[0][2], "one admission, one answer"
        await chat_round(alice, bob, "during the session flood")
    finally:
        for raw in opened:
            raw.close()


async def test_malformed_resumes_are_refused(http_port, connect, hub):
    alice, bob = await honest_pair(connect)
    raw = await joined_stream(http_port, "resumer")
    session_id = raw.session["session"]
    seen = raw.last
    try:
        for query, status in ((f"?session={session_id}", 400), (f"?session={session_id}&last=-1", 400),
                              (f"?session={session_id}&last=abc", 400), ("?session=nope&last=0", 404),
                              ("?last=3", 400)):
            with pytest.raises(Refused) as refused:
                await in_thread(RawStream, HOST, http_port, query=query)
            assert refused.value.status == status, query
        with pytest.raises(Refused) as refused:
            await in_thread(RawStream, HOST, http_port, headers={"Last-Event-ID": "3"})
        assert refused.value.status == 400, "EventSource's own reconnect cannot name a session"
        assert sessions(hub), "none of that touched the real session"
        # Asking for frames beyond what was ever sent is a confused client: it starts over.
        again = await in_thread(RawStream, HOST, http_port, query=f"?session={session_id}&last={seen + 50}")
        assert again.first.name == "close" and json.loads(again.first.data)["code"] == 1008
        again.close()
    finally:
        raw.close()
    await chat_round(alice, bob, "after malformed resumes")


async def test_health_after_http_abuse(http_client, base_url, http_port):
    await in_thread(post, HOST, http_port, "/stream/send", "{" * 5000, token="C" * 22, seq=1)
    body = json.loads((await http_client.fetch(base_url + "/healthz")).body)
    assert body["status"] == "ok"

