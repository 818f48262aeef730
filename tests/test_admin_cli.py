"""The admin commands as people run them, against a real `securechat serve` subprocess."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner
from helpers import cli, close_all, joined

from cli import main
from securechat.admin.client import AdminClient
from securechat.client import ChatClient
from securechat.storage.ciphertext_log import LogRecord, read_log


def test_runtime_file_is_private_holds_the_token_and_goes_away(server):
    s = server()
    path = s.runtime_file()
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    info = json.loads(path.read_text())
    assert info["port"] == s.port and info["scheme"] == "http" and info["data_dir"] == str(s.data)
    assert info["urls"] == [f"http://127.0.0.1:{s.port}/"] and len(info["token"]) >= 40
    out, err = s.stop()
    assert not path.exists()
    assert info["token"] not in out + err  # never printed, never logged


def test_roster_table_and_json(server, tmp_path):
    s = server()

    async def scenario():
        clients = await joined(s.ws, "alice", "bob")
        try:
            table = cli("roster", "--data-dir", str(s.data), runtime=s.runtime)
            as_json = cli("roster", "--json", runtime=s.runtime)  # found without --data-dir: the newest
            return clients, table, as_json
        finally:
            await close_all(clients)

    (alice, bob), table, as_json = asyncio.run(scenario())
    assert table.exit_code == 0, table.output
    assert "alice" in table.output and "bob" in table.output and "127.0.0.1" in table.output
    assert " ".join(alice.fingerprint[i:i + 4] for i in range(0, 64, 4)) in table.output
    people = json.loads(as_json.output)["participants"]
    assert {(p["username"], p["fingerprint"], p["sid"]) for p in people} == {
        ("alice", alice.fingerprint, alice.sid), ("bob", bob.fingerprint, bob.sid)}


def test_roster_with_a_wrong_token_or_no_server_is_one_line(server, tmp_path):
    s = server()
    wrong = cli("roster", "--token", "not-the-token-at-all", runtime=s.runtime)
    assert wrong.exit_code == 1
    assert wrong.output.strip().startswith("securechat: the server at http://127.0.0.1:")
    assert "refused the admin token" in wrong.output and len(wrong.output.strip().splitlines()) == 1
    url_no_token = cli("roster", "--url", f"http://127.0.0.1:{s.port}/", runtime=s.runtime)
    assert url_no_token.exit_code == 1 and "--url needs the server's admin token" in url_no_token.output
    token = json.loads(s.runtime_file().read_text())["token"]
    by_url = cli("roster", "--json", "--url", f"http://127.0.0.1:{s.port}/", runtime=tmp_path / "elsewhere",
                 SECURECHAT_TOKEN=token)
    assert by_url.exit_code == 0 and json.loads(by_url.output)["participants"] == []
    s.stop()
    gone = cli("roster", runtime=s.runtime)
    assert gone.exit_code == 1 and gone.output.startswith("securechat: no running securechat server found")
    refused = cli("roster", "--url", f"http://127.0.0.1:{s.port}/", "--token", token, runtime=s.runtime)
    assert refused.exit_code == 1 and "connection refused" in refused.output


def test_rotation_while_chatting_loses_and_duplicates_nothing(server):
    """M messages from several clients while rotating K times through the admin API."""
    s = server(SECURECHAT_RATE_PER_SECOND="1000", SECURECHAT_RATE_BURST="1000", SECURECHAT_LOG_KEEP="100")
    info = json.loads(s.runtime_file().read_text())
    admin = AdminClient(info["admin_url"], info["token"])
    per_client, rotations = 15, 6

    rotating = asyncio.Event()

    async def chat(client: ChatClient) -> list[str]:
        # Keep talking until every rotation has happened, so each one lands mid-conversation
        # however fast or slow this machine is.
        ids = []
        while len(ids) < per_client or not rotating.is_set():
            ids.append(await client.send(f"{client.username} {len(ids)}"))
            await client.expect("ack")
        return ids

    async def rotate_repeatedly() -> int:
        done = 0
        try:
            while done < rotations:
                await asyncio.sleep(0.05)
                if (await asyncio.to_thread(admin.rotate))["rotated"]:
                    done += 1
        finally:
            rotating.set()
        return done

    async def scenario():
        clients = await joined(s.ws, "alice", "bob", "carol")
        for client in clients:  # everyone sees everyone before sending, so no stale recipients
            while len(client.members) < 3:
                await client.recv()
        try:
            *sent, rotated = await asyncio.gather(*(chat(c) for c in clients), rotate_repeatedly())
        finally:
            await close_all(clients)
        return [i for ids in sent for i in ids], rotated

    sent, rotated = asyncio.run(scenario())
    s.stop()
    assert rotated == rotations
    logged = [r.record["id"] for r in read_log(s.data) if isinstance(r, LogRecord) and r.record["event"] == "msg"]
    assert len(sent) >= 3 * per_client and len(set(sent)) == len(sent)
    assert len(logged) == len(sent) and sorted(logged) == sorted(sent)
    assert len(list(s.data.glob("ciphertext-*.jsonl.gz"))) == rotated


def test_logs_rotate_through_the_server_then_dump(server):
    s = server()

    async def scenario():
        (alice,) = await joined(s.ws, "alice")
        await alice.send("hello")
        await alice.expect("ack")
        rotated = cli("logs", "rotate", "--data-dir", str(s.data), "--keep", "3", runtime=s.runtime)
        await alice.send("again")
        await alice.expect("ack")
        await close_all([alice])
        return alice, rotated

    alice, rotated = asyncio.run(scenario())
    assert rotated.exit_code == 0, rotated.output
    assert rotated.output.startswith("rotated to ciphertext-")
    assert rotated.output.endswith(f".jsonl.gz by the server at http://127.0.0.1:{s.port}/; "
                                   "keeping at most 3 rotated files\n")
    assert len(list(s.data.glob("*.jsonl.gz"))) == 1
    raw = cli("logs", "dump", "--json", "--data-dir", str(s.data), runtime=s.runtime)
    events = [json.loads(line)["event"] for line in raw.output.splitlines()]
    assert events[:3] == ["join", "msg", "msg"]
    stored = [r.raw for r in read_log(s.data) if isinstance(r, LogRecord)]
    assert raw.output.splitlines() == stored  # exactly as stored
    table = cli("logs", "dump", "--data-dir", str(s.data), runtime=s.runtime)
    lines = table.output.splitlines()
    assert lines[0].split()[:3] == ["time", "event", "sender"]
    msg_line = next(line for line in lines if " msg " in line)
    assert "alice" in msg_line and alice.fingerprint[:4] + " " + alice.fingerprint[4:8] in msg_line


def test_offline_rotate_and_a_server_without_a_runtime_file_here(server, tmp_path):
    s = server(runtime_dir=tmp_path / "server-run")
    locked = cli("logs", "rotate", "--data-dir", str(s.data), runtime=tmp_path / "my-run")
    assert locked.exit_code == 1
    # It cannot reach the server, but it says which one holds the log.
    assert f"a securechat server (pid {s.process.pid}, port {s.port}) is using {s.data}" in locked.output
    assert "--url" in locked.output
    s.stop()
    empty = cli("logs", "rotate", "--data-dir", str(s.data), "--keep", "1", runtime=tmp_path / "my-run")
    assert empty.output == (f"nothing to rotate: the live log in {s.data} is empty (no server running); "
                            "keeping at most 1 rotated file\n")
    with (s.data / "ciphertext.jsonl").open("a") as fh:
        fh.write('{"event":"join","t":1}\n')
    offline = cli("logs", "rotate", "--data-dir", str(s.data), "--keep", "2", runtime=tmp_path / "my-run")
    assert offline.exit_code == 0 and offline.output.startswith("rotated to ciphertext-")
    assert offline.output.endswith(f" in {s.data} (no server running); keeping at most 2 rotated files\n")
    missing = cli("logs", "rotate", "--data-dir", str(tmp_path / "nope"), runtime=tmp_path / "my-run")
    assert missing.exit_code == 1 and "no ciphertext log in" in missing.output


def write_log(directory: Path, *lines: str) -> None:
    directory.mkdir(mode=0o700)
    (directory / "ciphertext.jsonl").write_text("".join(line + "\n" for line in lines))


def test_dump_reports_a_corrupt_line_and_goes_on(tmp_path):
    data = tmp_path / "data"
    write_log(data, '{"event":"join","t":1000,"username":"a","fingerprint":"' + "ab" * 32 + '"}',
              '{"event":"msg","t":', '{"event":"leave","t":2000,"username":"a"}')
    result = CliRunner().invoke(main, ["logs", "dump", "--json", "--data-dir", str(data)])
    assert result.exit_code == 0
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["join", "leave"]
    assert result.stderr.startswith(f"securechat: {data / 'ciphertext.jsonl'}:2: invalid JSON")


def test_dump_time_window_and_bad_times(tmp_path):
    import time

    now = int(time.time() * 1000)
    data = tmp_path / "data"
    write_log(data, *(json.dumps({"event": "join", "t": now - age * 60_000, "username": f"u{age}"})
                      for age in (90, 30, 5)))
    recent = CliRunner().invoke(main, ["logs", "dump", "--json", "--since", "1h", "--until", "10m",
                                       "--data-dir", str(data)])
    assert [json.loads(line)["username"] for line in recent.output.splitlines()] == ["u30"]
    bad = CliRunner().invoke(main, ["logs", "dump", "--since", "last week", "--data-dir", str(data)])
    assert bad.exit_code == 2 and "is not a time" in bad.output
    missing = CliRunner().invoke(main, ["logs", "dump", "--data-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and missing.output.startswith("securechat: no ciphertext log in")


def test_dump_follow_prints_what_arrives(tmp_path):
    import threading

    data = tmp_path / "data"
    write_log(data, '{"event":"join","t":1000,"username":"first"}')

    def append_later():
        import time

        time.sleep(0.5)
        with (data / "ciphertext.jsonl").open("a") as fh:
            fh.write('{"event":"join","t":2000,"username":"second"}\n')

    threading.Thread(target=append_later).start()
    result = CliRunner().invoke(main, ["logs", "dump", "--json", "--follow-for", "1.5", "--data-dir", str(data)])
    assert result.exit_code == 0
    assert [json.loads(line)["username"] for line in result.output.splitlines()] == ["first", "second"]


def test_a_configured_token_is_used_and_never_printed(server):
    token = "configured-token-for-this-test-0123"
    s = server(SECURECHAT_TOKEN=token)
    assert json.loads(s.runtime_file().read_text())["token"] == token
    by_url = cli("roster", "--json", "--url", f"http://127.0.0.1:{s.port}/", runtime=s.runtime / "other",
                 SECURECHAT_TOKEN=token)
    assert by_url.exit_code == 0, by_url.output
    out, err = s.stop()
    assert token not in out + err
