"""`securechat logs dump --url`: a running server's log over HTTP, printed like the local dump."""

from __future__ import annotations

import asyncio
import json

from helpers import cli, close_all, joined

from securechat.admin.client import AdminClient
from securechat.storage.ciphertext_log import LogRecord, read_log


def test_remote_dump_equals_the_local_dump(server):
    s = server(SECURECHAT_RATE_PER_SECOND="1000", SECURECHAT_RATE_BURST="1000")
    token = json.loads(s.runtime_file().read_text())["token"]
    url = f"http://127.0.0.1:{s.port}/"

    async def scenario():
        clients = await joined(s.ws, "alice", "bob")
        for n in range(5):
            await clients[0].send(f"message {n}")
            await clients[0].expect("ack")
            if n == 2:
                assert cli("logs", "rotate", "--data-dir", str(s.data), runtime=s.runtime).exit_code == 0
        await close_all(clients)

    asyncio.run(scenario())
    # Paging with a small page over a rotated file and the live one.
    admin = AdminClient(url, token)
    paged = list(admin.logs(page=2))
    remote = cli("logs", "dump", "--json", "--url", url, runtime=s.runtime / "elsewhere", SECURECHAT_TOKEN=token)
    local = cli("logs", "dump", "--json", "--data-dir", str(s.data), runtime=s.runtime)
    assert remote.exit_code == 0 and local.exit_code == 0, remote.output
    stored = [r.raw for r in read_log(s.data) if isinstance(r, LogRecord)]
    assert remote.stdout == local.stdout and remote.stdout.splitlines() == stored == paged
    assert len(stored) >= 8 and list(s.data.glob("*.jsonl.gz"))
    table = cli("logs", "dump", "--url", url, "--token", token, runtime=s.runtime / "elsewhere")
    assert table.stdout == cli("logs", "dump", "--data-dir", str(s.data), runtime=s.runtime).stdout
    window = cli("logs", "dump", "--json", "--since", "1h", "--url", url, runtime=s.runtime, SECURECHAT_TOKEN=token)
    assert window.stdout == local.stdout


def test_remote_dump_errors_are_one_line(server):
    s = server()
    url = f"http://127.0.0.1:{s.port}/"
    wrong = cli("logs", "dump", "--url", url, "--token", "not-the-token-at-all", runtime=s.runtime)
    assert wrong.exit_code == 1 and wrong.output.startswith("securechat: ") and "refused the admin token" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1
    follow = cli("logs", "dump", "--follow", "--url", url, "--token", "x" * 20, runtime=s.runtime)
    assert follow.exit_code == 2 and "does not go with --url" in follow.output
    s.stop()
    gone = cli("logs", "dump", "--url", url, "--token", "x" * 20, runtime=s.runtime)
    assert gone.exit_code == 1 and "connection refused" in gone.output
