"""`securechat rooms`, `roster --room` and `logs dump --room` against a real `serve` subprocess."""

from __future__ import annotations

import asyncio
import json
import time

from helpers import cli, close_all

from securechat.client import ChatClient


async def in_rooms(ws: str, *people: tuple[str, str | None]) -> list[ChatClient]:
    clients = [ChatClient(ws + (f"?room={room}" if room else ""), name) for name, room in people]
    for client in clients:
        await client.connect()
    return clients


def test_rooms_roster_and_dump_by_room(server):
    s = server()

    async def scenario():
        clients = await in_rooms(s.ws, ("alice", "design"), ("bob", "design"), ("carol", None))
        alice, bob, carol = clients
        try:
            while len(alice.members) < 2:
                await alice.recv()
            await alice.send("design talk")
            await alice.expect("ack")
            await carol.send("lobby talk")
            await carol.expect("ack")
            return clients, {
                "rooms": cli("rooms", runtime=s.runtime),
                "rooms_json": cli("rooms", "--json", runtime=s.runtime),
                "roster": cli("roster", runtime=s.runtime),
                "roster_design": cli("roster", "--room", "design", "--json", runtime=s.runtime),
                "roster_empty": cli("roster", "--room", "nobody", runtime=s.runtime),
                "roster_bad": cli("roster", "--room", "Design", runtime=s.runtime),
            }
        finally:
            await close_all(clients)

    (alice, bob, carol), out = asyncio.run(scenario())

    assert out["rooms"].exit_code == 0, out["rooms"].output
    lines = out["rooms"].output.splitlines()
    assert lines[0] == "2 rooms open"
    assert lines[1].split() == ["room", "people", "age", "open", "since"]
    assert lines[2].split()[:3] == ["lobby", "(default)", "1"] and lines[3].split()[:2] == ["design", "2"]
    rooms = json.loads(out["rooms_json"].output)
    assert rooms["default"] == "lobby" and [(r["name"], r["members"]) for r in rooms["rooms"]] == [
        ("lobby", 1), ("design", 2)]

    roster = out["roster"].output
    assert out["roster"].exit_code == 0, roster
    assert roster.index("room lobby: 1 connected") < roster.index("carol") < roster.index(
        "room design: 2 connected") < roster.index("alice") < roster.index("bob")
    design = json.loads(out["roster_design"].output)
    assert design["room"] == "design"
    assert [(p["username"], p["fingerprint"]) for p in design["participants"]] == [
        ("alice", alice.fingerprint), ("bob", bob.fingerprint)]
    assert out["roster_empty"].exit_code == 0 and "room nobody: 0 connected" in out["roster_empty"].output
    assert out["roster_bad"].exit_code == 2
    assert "the room name has \"D\", which a room name cannot have" in out["roster_bad"].output

    for _ in range(50):  # the leaves are logged as the server sees the sockets close
        local = cli("logs", "dump", "--room", "design", "--json", runtime=s.runtime)
        assert local.exit_code == 0, local.output
        records = [json.loads(line) for line in local.output.splitlines()]
        if len(records) == 5:
            break
        time.sleep(0.1)
    assert {r["room"] for r in records} == {"design"}
    assert [r["event"] for r in records] == ["join", "join", "msg", "leave", "leave"]
    table = cli("logs", "dump", "--room", "lobby", runtime=s.runtime).output
    assert "carol" in table and "alice" not in table and "bob" not in table

    token = json.loads(s.runtime_file().read_text())["token"]
    remote = cli("logs", "dump", "--room", "design", "--json", "--url", s.url, runtime=s.runtime / "elsewhere",
                 SECURECHAT_TOKEN=token)
    assert remote.exit_code == 0, remote.output
    assert [json.loads(line) for line in remote.output.splitlines()] == records

    after = json.loads(cli("rooms", "--json", runtime=s.runtime).output)
    assert after["rooms"] == []  # everyone left: no room is open
    assert cli("rooms", runtime=s.runtime).output.startswith("no rooms are open: nobody is connected")
