"""How the admin commands find the server, the way `jupyter server list` does: every running
`securechat serve` registers in this user's runtime dir whatever its data dir; one server just
works, several make the commands say which and how to choose (exit status 2), and
`securechat status` lists them all."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest
from helpers import cli, close_all, joined


def test_one_server_with_its_own_data_dir_is_found_without_options(server, tmp_path):
    # The case: `serve --tls --data-dir /tmp/chat`, then `roster` with no options.
    s = server("--tls", "--host", "127.0.0.1", data_dir=tmp_path / "chat")
    run = s.runtime
    roster = cli("roster", "--json", runtime=run)
    assert roster.exit_code == 0, roster.output
    assert json.loads(roster.output)["participants"] == []
    rotate = cli("logs", "rotate", runtime=run)
    assert rotate.exit_code == 0, rotate.output
    assert f"the server at https://127.0.0.1:{s.port}/" in rotate.output  # not offline on the default dir
    dump = cli("logs", "dump", "--json", runtime=run)
    assert dump.exit_code == 0 and dump.output == ""  # its log (empty), not "no ciphertext log in ~/.local/…"
    status = cli("status", runtime=run)
    assert status.exit_code == 0
    assert f"port {s.port}  https  pid {s.process.pid}" in status.output
    assert f"data dir  {tmp_path / 'chat'}" in status.output and "0 people in lobby" in status.output


def test_two_servers_need_a_choice_and_status_lists_both(server, tmp_path):
    run = tmp_path / "run"
    first = server(data_dir=tmp_path / "one", runtime_dir=run)
    second = server(data_dir=tmp_path / "two", runtime_dir=run)

    async def scenario():
        (alice,) = await joined(first.ws, "alice")
        bob, carol = await joined(second.ws, "bob", "carol")
        try:
            return {
                "roster": cli("roster", runtime=run),
                "dump": cli("logs", "dump", runtime=run),
                "rotate": cli("logs", "rotate", runtime=run),
                "by_port": cli("roster", "--json", "--port", str(second.port), runtime=run),
                "by_dir": cli("roster", "--json", "--data-dir", str(tmp_path / "one"), runtime=run),
                "dump_by_port": cli("logs", "dump", "--json", "--port", str(second.port), runtime=run),
                "no_such_port": cli("roster", "--port", "1", runtime=run),
                "status": cli("status", runtime=run),
                "status_json": cli("status", "--json", runtime=run),
            }
        finally:
            await close_all([alice, bob, carol])

    got = asyncio.run(scenario())
    for name in ("roster", "dump", "rotate"):
        result = got[name]
        assert result.exit_code == 2, (name, result.output)
        lines = result.output.splitlines()
        assert lines[0] == "securechat: 2 securechat servers are running; choose one with --port or --data-dir:"
        # newest first, each with the options that pick it
        assert lines[1].startswith(f"  --port {second.port}  http   --data-dir {tmp_path / 'two'}  (pid ")
        assert lines[2].startswith(f"  --port {first.port}  http   --data-dir {tmp_path / 'one'}  (pid ")
    assert not list((tmp_path / "one").glob("*.gz")) and not list((tmp_path / "two").glob("*.gz"))

    assert {p["username"] for p in json.loads(got["by_port"].output)["participants"]} == {"bob", "carol"}
    assert [p["username"] for p in json.loads(got["by_dir"].output)["participants"]] == ["alice"]
    joins = [json.loads(line) for line in got["dump_by_port"].output.splitlines()]
    assert [r["username"] for r in joins if r["event"] == "join"] == ["bob", "carol"]
    assert got["no_such_port"].exit_code == 1
    assert got["no_such_port"].output.startswith("securechat: no running securechat server on port 1; "
                                                 "`securechat status` lists the 2 running: ")

    status = got["status"].output
    assert status.startswith(f"2 securechat servers running (runtime dir {run / 'securechat'}):")
    assert status.index(f"port {second.port}") < status.index(f"port {first.port}")
    assert "1 person in lobby" in status and "2 people in lobby" in status
    listed = json.loads(got["status_json"].output)["servers"]
    assert [s["port"] for s in listed] == [second.port, first.port]
    assert all("token" not in s for s in listed)
    tokens = [json.loads(s.runtime_file().read_text())["token"] for s in (first, second)]
    assert not any(token in got["status_json"].output + status for token in tokens)

    second.stop()  # one left: no options needed again
    alone = cli("roster", "--json", runtime=run)
    assert alone.exit_code == 0, alone.output
    rotated = cli("logs", "rotate", runtime=run).output  # alice joined and left: something to rotate
    assert rotated.startswith("rotated to ciphertext-") and f"by the server at http://127.0.0.1:{first.port}/" in rotated


def test_no_server_running(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    status = cli("status", runtime=run)
    assert status.exit_code == 0
    assert status.output == f"no securechat server is running (runtime dir {run / 'securechat'})\n"
    assert json.loads(cli("status", "--json", runtime=run).output)["servers"] == []
    roster = cli("roster", runtime=run)
    assert roster.exit_code == 1
    assert roster.output.startswith(f"securechat: no running securechat server found (in {run / 'securechat'})")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user needs root")
def test_a_runtime_dir_planted_by_another_user_neither_blocks_serve_nor_gets_the_token(server, tmp_path):
    shared = tmp_path / "shared"  # an XDG_RUNTIME_DIR another user could write in
    shared.mkdir()
    shared.chmod(0o1777)
    planted = shared / "securechat"
    planted.mkdir(mode=0o700)
    (planted / "server-1.json").write_text(json.dumps({"pid": 1, "port": 9, "admin_url": "http://127.0.0.1:9/"}))
    shutil.chown(planted / "server-1.json", 65534, 65534)
    shutil.chown(planted, 65534, 65534)

    s = server(runtime_dir=shared)
    err_line = "runtime dir: " + f"{planted} belongs to another user (uid 65534)"
    # A configured token goes to OUR server (which refuses it), never to the planted address.
    configured = cli("roster", "--json", runtime=shared, SECURECHAT_TOKEN="a-token-the-planter-wants-0123")
    found = cli("roster", "--json", runtime=shared)
    out, err = s.stop()
    assert err_line in err  # serve said why it registered elsewhere, and started anyway
    assert configured.exit_code == 1 and "refused the admin token" in configured.output
    assert f"the server at http://127.0.0.1:{s.port}/" in configured.output
    assert found.exit_code == 0 and json.loads(found.output)["participants"] == []
    assert list(planted.iterdir()) == [planted / "server-1.json"]
