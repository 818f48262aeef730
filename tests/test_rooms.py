"""Rooms end to end: a real server on loopback, real protocol clients in several rooms.

`/ws?room=<name>` names the room a connection belongs to; the server's hello confirms it and
the client signs it into its join. Rooms never see each other's frames or rosters.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import serving, settle
from tornado.websocket import websocket_connect

from securechat import qr
from securechat.client import ChatClient, ClientError
from securechat.config import Config
from securechat.storage.ciphertext_log import LogRecord, read_log

pytestmark = pytest.mark.gen_test(timeout=30)

TOKEN = "rooms-admin-token-0123456789abcdef"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", admin_token=TOKEN)


@pytest.fixture
def enter(ws_url):
    """`await enter("alice", "design")` joins room design (None: the default room)."""
    clients: list[ChatClient] = []

    async def _enter(username: str, room: str | None = None, **kwargs) -> ChatClient:
        client = ChatClient(ws_url + (f"?room={room}" if room is not None else ""), username, **kwargs)
        clients.append(client)
        await client.connect()
        return client

    yield _enter
    for client in clients:
        client.close()


async def admin(http_client, base_url, path):
    response = await http_client.fetch(base_url + path, headers={"Authorization": f"Bearer {TOKEN}"},
                                       raise_error=False)
    return response.code, json.loads(response.body)


async def quiet(client: ChatClient, seconds: float = 0.3) -> list[dict]:
    """Every frame a client receives within `seconds`: what leaked to it, if anything."""
    frames = list(client.events)
    client.events.clear()
    try:
        while True:
            frame = await client.recv(timeout=seconds)
            if frame is None:
                break
            frames.append(frame)
    except asyncio.TimeoutError:
        pass
    return frames


async def leave(client: ChatClient) -> None:
    """Send leave and read until the server has closed the socket."""
    await client.send_frame({"v": 2, "type": "leave"})
    while await client.recv() is not None:
        pass


async def test_hello_names_the_room_the_socket_asked_for(enter, hub):
    alice = await enter("alice", "design")
    assert alice.room == "design"
    lobby = await enter("bob")
    assert lobby.room == "lobby" == hub.rooms.default
    assert {room.name for room in hub.rooms} == {"design", "lobby"}


async def test_two_rooms_never_see_each_others_frames_or_rosters(enter, config, ciphertext_log):
    alice, bob = await enter("alice", "design"), await enter("bob", "design")
    carol = await enter("carol")
    await settle(alice, bob, members=2)
    assert set(m.username for m in carol.members.values()) == {"carol"}

    msg_id = await alice.send("only for design")
    assert (await bob.next_message()).text == "only for design"
    await alice.expect("ack")
    assert alice.acks[msg_id] == 2  # alice and bob: carol was never a recipient

    await carol.send("only for the lobby")
    await carol.expect("ack")
    dave = await enter("dave", "design")  # joins are announced only in their own room
    await settle(alice, bob, members=3)
    await dave.send_frame({"v": 2, "type": "leave"})
    await alice.expect("left")

    await carol.send_frame({"v": 2, "type": "roster"})
    roster = await carol.expect("roster")
    assert roster["room"] == "lobby" and [p["username"] for p in roster["participants"]] == ["carol"]
    leaked = [f for f in await quiet(carol) if f.get("type") in ("msg", "joined", "joins", "left")
              and f.get("from") != carol.sid]  # her own message's echo is hers
    assert not leaked, leaked
    for client in (alice, bob):
        assert not [f for f in await quiet(client) if f.get("type") == "msg" and f["from"] == carol.sid]

    ciphertext_log.flush()
    records = [r.record for r in read_log(config.log_dir) if isinstance(r, LogRecord)]
    by_room = {(r["event"], r.get("username") or r["from"]["username"], r["room"]) for r in records}
    assert ("msg", "alice", "design") in by_room and ("msg", "carol", "lobby") in by_room
    assert ("join", "dave", "design") in by_room and ("leave", "dave", "design") in by_room
    assert not {r for r in by_room if r[2] == "lobby" and r[1] != "carol"}


async def test_a_join_signed_for_another_room_is_refused(ws_url):
    """The room is in the signed statement: a join made for the lobby cannot enter design."""
    mallory = ChatClient(ws_url + "?room=design", "mallory")
    mallory.ws = await websocket_connect(mallory.url)
    hello = await mallory.expect("hello")
    assert hello["room"] == "design"
    from securechat import crypto

    mallory.challenge = hello["challenge"]
    mallory.session = crypto.SessionKey.generate()
    await mallory.send_frame(mallory.join_frame("lobby"))
    error = await mallory.expect("error")
    assert error["code"] == "bad_signature"
    mallory.close()


@pytest.mark.parametrize("name", ["Design", "", "a" * 33, "design%20team", "d%D0%B5sign", "../lobby", "x%0Ay"])
async def test_a_socket_naming_no_valid_room_is_refused_before_the_upgrade(http_client, base_url, name):
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    response = await http_client.fetch(f"{base_url}/ws?room={name}", headers=upgrade, raise_error=False)
    assert response.code == 400
    error = json.loads(response.body)["error"]
    assert error.endswith("a room name is 1 to 32 characters: lowercase letters a-z, digits 0-9 and -")


async def test_a_room_disappears_when_its_last_member_leaves(enter, hub, http_client, base_url):
    alice, bob = await enter("alice", "design"), await enter("bob", "design")
    await settle(alice, bob, members=2)
    code, body = await admin(http_client, base_url, "/api/admin/rooms")
    assert code == 200
    assert [(r["name"], r["members"]) for r in body["rooms"]] == [("design", 2)]
    alice.close()
    await bob.expect("left")
    assert hub.rooms.find("design").roster()[0]["username"] == "bob"
    await bob.send_frame({"v": 2, "type": "leave"})
    for _ in range(100):
        if hub.rooms.find("design") is None:
            break
        await asyncio.sleep(0.02)
    assert hub.rooms.find("design") is None
    assert (await admin(http_client, base_url, "/api/admin/rooms"))[1]["rooms"] == []


async def test_each_room_answers_with_its_own_roster_and_a_room_made_again_starts_fresh(enter, hub):
    """The Hub encodes a roster once per change (roster_frame); per room, and never from a room
    of the same name that emptied before: its revisions start again."""
    alice, bob = await enter("alice", "design"), await enter("bob", "garden")
    design, garden = hub.rooms.find("design"), hub.rooms.find("garden")
    assert hub.roster_frame(design) is hub.roster_frame(design)  # encoded once
    assert '"alice"' in hub.roster_frame(design) and '"bob"' not in hub.roster_frame(design)
    assert '"bob"' in hub.roster_frame(garden) and '"alice"' not in hub.roster_frame(garden)
    await bob.send_frame({"v": 2, "type": "roster"})
    assert [p["username"] for p in (await bob.expect("roster"))["participants"]] == ["bob"]

    await leave(alice)
    for _ in range(100):
        if hub.rooms.find("design") is None:
            break
        await asyncio.sleep(0.02)
    assert hub.rooms.find("design") is None and "design" not in hub._roster_frames
    carol = await enter("carol", "design")  # a new room called design, at the same revision
    await carol.send_frame({"v": 2, "type": "roster"})
    roster = await carol.expect("roster")
    assert roster["room"] == "design" and [p["username"] for p in roster["participants"]] == ["carol"]


async def test_the_server_opens_at_most_max_rooms_besides_the_default_room(tmp_path):
    config = Config(data_dir=tmp_path / "capped", port=0, log_fsync="never", max_rooms=1)
    async with serving(config) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        clients = []

        async def enter(name, room=None):
            client = ChatClient(url + (f"?room={room}" if room else ""), name)
            clients.append(client)
            await client.connect()
            return client

        try:
            alice = await enter("alice", "one")
            with pytest.raises(ClientError) as info:
                await enter("bob", "two")
            assert str(info.value) == ("too_many_rooms: this server has 1 rooms open, the most it allows; "
                                       "join a room that exists, or try again later")
            await enter("carol")  # the default room is always open
            dave = await enter("dave", "one")  # and a room that exists takes more people
            for member in (alice, dave):
                await leave(member)
            assert (await enter("erin", "two")).room == "two"  # "one" closed: room for another
        finally:
            for client in clients:
                client.close()


async def test_one_address_is_in_at_most_max_rooms_per_address_rooms(tmp_path):
    config = Config(data_dir=tmp_path / "per-address", port=0, log_fsync="never", max_rooms_per_address=2)
    async with serving(config) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        first, second, third = (ChatClient(f"{url}?room={room}", "alice") for room in ("one", "two", "three"))
        try:
            await first.connect()
            await second.connect()
            with pytest.raises(ClientError) as info:
                await third.connect()
            assert str(info.value) == ("too_many_rooms_joined: your address is in 2 rooms already, the most this "
                                       "server allows; leave one of them first")
            await leave(first)
            # The refusal left the connection open: the same socket joins once a room is free.
            await third.send_frame(third.join_frame("three"))
            assert (await third.expect("welcome"))["room"] == "three"
        finally:
            for client in (first, second, third):
                client.close()


async def test_the_room_page_and_the_bad_name_page(http_client, base_url):
    page = await http_client.fetch(base_url + "/r/design")
    html = page.body.decode()
    assert 'data-room="design"' in html and 'data-default-room="lobby"' in html
    assert "<title>#design · securechat</title>" in html
    root = (await http_client.fetch(base_url + "/")).body.decode()
    assert 'data-room="lobby"' in root and "<title>#lobby · securechat</title>" in root
    assert 'data-room="lobby"' in (await http_client.fetch(base_url + "/r/lobby")).body.decode()

    for path, shown, suggestion in [
        ("/r/Design", "/r/Design", "/r/design"),
        ("/r/design%20team", "/r/design team", "/r/design-team"),
        ("/r/", "/r/", None),
        ("/r/" + "x" * 40, "/r/" + "x" * 40, "/r/" + "x" * 32),
        ("/r/d%D0%B5sign", "/r/dеsign", None),  # a Cyrillic е is never "corrected" into a room
        ("/r/%3Cscript%3E", "/r/&lt;script&gt;", "/r/script"),
        ("/r/a%0Ab", "/r/aU+000Ab", "/r/a-b"),
    ]:
        response = await http_client.fetch(base_url + path, raise_error=False)
        text = response.body.decode()
        assert response.code == 404, path
        assert "This is not a room address" in text and "Traceback" not in text
        assert f'<code class="room-path">{shown}</code>' in text, (path, text)
        assert "lowercase letters a-z, digits 0-9 and -" in text
        assert ("Did you mean" in text) == (suggestion is not None)
        if suggestion:
            assert f'<a href="{suggestion}">{suggestion}</a>' in text
        assert "<script" not in text
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")


async def test_the_invite_qr_code_is_the_rooms_full_url(http_client, base_url):
    response = await http_client.fetch(base_url + "/r/design/qr.svg")
    assert response.headers["Content-Type"] == "image/svg+xml"
    link = f"{base_url}/r/design"  # the address the page was opened under
    assert response.body.decode() == qr.svg(link, f"QR code of {link}")
    lobby = await http_client.fetch(base_url + "/r/lobby/qr.svg")
    assert lobby.body.decode() == qr.svg(f"{base_url}/", f"QR code of {base_url}/")  # the default room is /
    missing = await http_client.fetch(base_url + "/r/Design/qr.svg", raise_error=False)
    assert missing.code == 404


async def test_admin_rooms_roster_and_logs_by_room(enter, http_client, base_url, ciphertext_log):
    alice, bob = await enter("alice", "design"), await enter("bob", "design")
    carol = await enter("carol")
    await settle(alice, bob, members=2)
    await alice.send("design talk")
    await alice.expect("ack")
    await carol.send("lobby talk")
    await carol.expect("ack")

    code, rooms = await admin(http_client, base_url, "/api/admin/rooms")
    assert code == 200 and rooms["default"] == "lobby"
    assert [(r["name"], r["members"], r["default"]) for r in rooms["rooms"]] == [
        ("lobby", 1, True), ("design", 2, False)]
    assert all(r["age"] >= 0 and r["created"] > 0 for r in rooms["rooms"])

    code, roster = await admin(http_client, base_url, "/api/admin/roster")
    assert roster["room"] is None
    assert [(p["room"], p["username"]) for p in roster["participants"]] == [
        ("lobby", "carol"), ("design", "alice"), ("design", "bob")]
    code, design = await admin(http_client, base_url, "/api/admin/roster?room=design")
    assert design["room"] == "design" and [p["username"] for p in design["participants"]] == ["alice", "bob"]
    code, empty = await admin(http_client, base_url, "/api/admin/roster?room=nobody-here")
    assert code == 200 and empty == {"room": "nobody-here", "participants": []}
    code, bad = await admin(http_client, base_url, "/api/admin/roster?room=Design")
    assert code == 400 and "lowercase letters" in bad["error"]

    ciphertext_log.flush()
    response = await http_client.fetch(base_url + "/api/admin/logs?room=design",
                                       headers={"Authorization": f"Bearer {TOKEN}"})
    records = [json.loads(line) for line in response.body.decode().splitlines()]
    assert records and {r["room"] for r in records} == {"design"}
    assert [r["event"] for r in records] == ["join", "join", "msg"]
    response = await http_client.fetch(base_url + "/api/admin/logs?room=Bad%20name", raise_error=False,
                                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.code == 400

    code, status = await admin(http_client, base_url, "/api/admin/status")
    assert status["rooms"] == 2 and status["participants"] == 3 and status["in_default"] == 1


async def test_the_default_room_name_must_follow_the_rule(tmp_path):
    from securechat.config import ConfigError

    with pytest.raises(ConfigError) as info:
        Config(data_dir=tmp_path, room="Main Hall")
    assert str(info.value).startswith("server.room (SECURECHAT_ROOM): the room name has \"M\"")


async def test_the_http_fallback_names_the_room_too(http_port, enter, hub):
    """An iPhone on the HTTP transport (§1.2) and a laptop on the WebSocket share a named room."""
    laptop = await enter("laptop", "design")
    phone = ChatClient(f"http://127.0.0.1:{http_port}/?room=design", "phone", transport="http")
    lobby = await enter("carol")
    try:
        welcome = await phone.connect()
        assert welcome["room"] == "design" and phone.room == "design"
        await settle(laptop, members=2)
        await laptop.send("over both transports")
        assert (await phone.next_message()).text == "over both transports"
        assert sorted(p.username for p in hub.rooms.find("design").members.values()) == ["laptop", "phone"]
        assert [p.username for p in hub.rooms.find("lobby").members.values()] == ["carol"]
        assert not [f for f in await quiet(lobby) if f.get("type") in ("msg", "joined", "joins")]
    finally:
        phone.close()


async def test_the_http_fallback_refuses_a_bad_room_name(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/stream?room=Design", raise_error=False,
                                       headers={"Accept": "text/event-stream"})
    assert response.code == 400
    body = json.loads(response.body)
    assert body["error"] == "bad_room" and "lowercase letters a-z" in body["message"]


async def test_a_client_refuses_a_hello_for_another_room(ws_url, hub):
    """The server (or a proxy) answers for the lobby although the client asked for design."""
    client = ChatClient(ws_url + "?room=design", "alice")
    hub.room_of = lambda connection: "lobby"  # a server that lies about the room
    try:
        with pytest.raises(ClientError) as info:
            await client.connect()
        assert str(info.value) == "the server answered for room 'lobby', not 'design'"
        assert hub.rooms.find("lobby") is None  # nothing was joined
    finally:
        del hub.room_of
        client.close()
