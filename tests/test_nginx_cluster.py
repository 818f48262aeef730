"""Several machines behind one real nginx, as docs/DEPLOY.md describes them.

Two `securechat serve` processes on different ports, each with its own data dir and runtime
dir (two machines, as far as securechat can tell), share one real redis-server; nginx (Debian's
package) balances them with the documented `upstream` block and no sticky sessions (round
robin). People who land on different backends chat, and every backend's roster is whole.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys

import pytest
import redis
from redis_server import redis_server  # noqa: F401  (fixture)
from test_nginx import ROOT, close_all, documented_config, join, nginx_binary, start_nginx, wait_for_port

from helpers import clean_env, cli, free_port, wait_for_http
from securechat.admin.client import AdminClient
from securechat.client import Message

TOKEN = "nginx-cluster-test-admin-token-0123"


def documented_upstream(ports: list[int]) -> str:
    """DEPLOY.md's `upstream` block with this test's backends in place of the example machines."""
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    (block,) = re.findall(r"```conf\n(.*?)```", text, re.S)
    servers = re.findall(r"^\s*server (\S+);$", block, re.M)
    assert len(servers) == len(ports) == 2, servers
    for example, port in zip(servers, ports):
        block = block.replace(f"server {example};", f"server 127.0.0.1:{port};")
    assert "proxy_pass http://securechat;" in block  # what the location block's proxy_pass becomes
    return block


class Machine:
    """One `securechat serve`: its own port, data dir and runtime dir; Redis shared."""

    def __init__(self, tmp_path, name: str, redis_url: str):
        self.port = free_port()
        self.data = tmp_path / name / "data"
        self.runtime = tmp_path / name / "run"
        self.runtime.mkdir(parents=True, mode=0o700)
        env = clean_env(XDG_RUNTIME_DIR=str(self.runtime), XDG_DATA_HOME=str(tmp_path / name / "home"),
                        SECURECHAT_TOKEN=TOKEN, SECURECHAT_ALLOWED_HOSTS="chat.example.org",
                        SECURECHAT_PROXY_TRUSTED="127.0.0.1", SECURECHAT_CLUSTER_REDIS_URL=redis_url)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_http(f"http://127.0.0.1:{self.port}/healthz", self.process)
        self.admin = AdminClient(f"http://127.0.0.1:{self.port}/", TOKEN)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=15)
        return err


def backend_of(redis_url: str) -> dict[str, int]:
    """sid -> the port of the machine holding that member, as the machines registered in Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        found = {}
        for worker in client.zrange("securechat:workers", 0, -1):
            port = json.loads(client.hget(b"securechat:worker:" + worker, "port"))
            for sid in client.hkeys(b"securechat:members:" + worker):
                found[sid.decode()] = port
        return found
    finally:
        client.close()


def per_machine(status: dict) -> dict[int, tuple[int, int]]:
    """port -> (members, messages relayed) of every process in a status answer's cluster view."""
    return {p["port"]: (p["members"], p["relayed"]) for p in status["cluster"]["processes"]}


@pytest.fixture
def machines(tmp_path, redis_server):  # noqa: F811
    nginx = nginx_binary()
    started = []
    proxy = None
    try:
        started = [Machine(tmp_path, name, redis_server.url) for name in ("one", "two")]
        for machine in started:  # both registered in Redis before anyone connects
            for _ in range(200):
                if machine.admin.status()["cluster"]["workers"] == 2:
                    break
                asyncio.run(asyncio.sleep(0.05))
            assert machine.admin.status()["cluster"]["workers"] == 2
        plain, tls = free_port(), free_port()
        server_block = documented_config("http://securechat", plain, tls, *cert_files(tmp_path))
        proxy, prefix = start_nginx(nginx, tmp_path, documented_upstream([m.port for m in started]) + server_block)
        wait_for_port(tls, proxy, prefix / "error.log")
        yield {"machines": started, "tls": tls, "redis": redis_server}
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGQUIT)
            try:
                proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        for machine in started:
            assert "Traceback" not in machine.stop()


def cert_files(tmp_path):
    from securechat.tls import ensure_self_signed

    cert = ensure_self_signed(tmp_path / "cert")
    return cert.cert_path, cert.key_path


def test_people_on_different_machines_behind_round_robin_nginx_chat_and_see_one_roster(machines):
    one, two = machines["machines"]
    tls, redis_url = machines["tls"], machines["redis"].url
    public = f"https://127.0.0.1:{tls}"
    names = ["alice", "bob", "carol", "dave"]
    sources = ["127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"]

    async def scenario():
        people = []
        try:
            for name, source in zip(names, sources):
                people.append(await join(f"wss://127.0.0.1:{tls}/ws", name, source=source, origin=public))
            for person in people:
                while len(person.members) < len(names):
                    await person.recv()
            placed = backend_of(redis_url)
            where = {person.username: placed[person.sid] for person in people}
            received = {}
            for sender in people:
                msg_id = await sender.send(f"from {sender.username}")
                for person in people:
                    message = await person.next_message()
                    assert isinstance(message, Message)
                    received.setdefault(person.username, []).append((message.id == msg_id, message.sender,
                                                                     message.text))
                assert (await sender.expect("ack"))["recipients"] == len(names)
            rosters = [await asyncio.to_thread(m.admin.roster) for m in (one, two)]
            # Per-machine figures: the answering machine's as of now, the other's as of its
            # last heartbeat (at most 2 s old).
            for _ in range(100):
                statuses = [await asyncio.to_thread(m.admin.status) for m in (one, two)]
                if all(per_machine(status) == {one.port: (2, 2), two.port: (2, 2)} for status in statuses):
                    break
                await asyncio.sleep(0.1)
        finally:
            await close_all(people)
        return where, received, rosters, statuses

    where, received, rosters, statuses = asyncio.run(scenario())
    # Round robin, nothing sticky: the four connections are split over both machines.
    assert sorted(where.values()) == sorted([one.port, one.port, two.port, two.port]), where
    for name in names:
        assert received[name] == [(True, sender, f"from {sender}") for sender in names]
    # Each machine lists everyone, with the address nginx saw (not the proxy's), wherever they are.
    for roster in rosters:
        assert {p["username"]: p["remote"] for p in roster["participants"]} == dict(zip(names, sources))
    for status in statuses:
        assert status["cluster"]["redis"] == "up" and status["participants"] == len(names)
        # Every machine, with its own figures: 2 people each, 2 messages each relayed (its senders').
        assert per_machine(status) == {one.port: (2, 2), two.port: (2, 2)}, status
    # A message is logged once, by the machine holding its sender, in that machine's own data dir.
    for machine in (one, two):
        result = cli("logs", "dump", "--json", "--data-dir", str(machine.data), runtime=machine.runtime)
        assert result.exit_code == 0, result.output
        logged = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        senders = sorted(r["from"]["username"] for r in logged if r["event"] == "msg")
        assert senders == sorted(name for name, port in where.items() if port == machine.port)


@pytest.fixture
def two_machines(tmp_path, redis_server):  # noqa: F811
    started = []
    try:
        started = [Machine(tmp_path, name, redis_server.url) for name in ("one", "two")]
        for machine in started:
            for _ in range(200):
                if machine.admin.status()["cluster"]["workers"] == 2:
                    break
                asyncio.run(asyncio.sleep(0.05))
        yield started
    finally:
        for machine in started:
            assert "Traceback" not in machine.stop()


def test_logs_dump_of_two_machines_has_every_message_once_across_rotations(two_machines):
    """Each machine logs what its own people sent, in its own data dir; `logs rotate` on one
    rotates both; `logs dump` given both data dirs, or both URLs, reads them as one log."""
    one, two = two_machines
    sent = []

    async def scenario():
        alice = await join(f"ws://127.0.0.1:{one.port}/ws", "alice")
        bob = await join(f"ws://127.0.0.1:{two.port}/ws", "bob")
        try:
            while len(alice.members) < 2 or len(bob.members) < 2:
                await (alice if len(alice.members) < 2 else bob).recv()
            for round_ in range(3):
                for sender in (alice, bob):
                    for _ in range(3):
                        sent.append(await sender.send(f"message {len(sent)}"))
                for sender in (alice, bob):
                    for _ in range(3):
                        await sender.expect("ack")
                # Through machine one only: it tells machine two, through Redis, to rotate too.
                rotated = await asyncio.to_thread(cli, "logs", "rotate", runtime=one.runtime)
                assert rotated.exit_code == 0 and "rotated to ciphertext-" in rotated.output, rotated.output
                assert rotated.output.count("\n") == 1, rotated.output
            for _ in range(100):  # machine two rotated as well, each time
                if len(list(two.data.glob("ciphertext-*.jsonl.gz"))) == 3:
                    break
                await asyncio.sleep(0.05)
        finally:
            await close_all([alice, bob])

    asyncio.run(scenario())
    for machine in (one, two):
        assert len(list(machine.data.glob("ciphertext-*.jsonl.gz"))) == 3
    local = cli("logs", "dump", "--json", "--data-dir", str(one.data), "--data-dir", str(two.data),
                runtime=one.runtime)
    assert local.exit_code == 0 and local.stderr == "", local.output
    records = [json.loads(line) for line in local.stdout.splitlines()]
    ids = [r["id"] for r in records if r["event"] == "msg"]
    assert sorted(ids) == sorted(sent) and len(ids) == len(set(ids)) == 18
    times = [r["t"] for r in records]
    assert times == sorted(times)
    assert sorted(r["username"] for r in records if r["event"] == "join") == ["alice", "bob"]
    # One machine's dir alone has its own people's messages only: the union needs both.
    alone = cli("logs", "dump", "--json", "--data-dir", str(one.data), runtime=one.runtime)
    assert {json.loads(line)["from"]["username"] for line in alone.stdout.splitlines()
            if json.loads(line)["event"] == "msg"} == {"alice"}
    # The same, each machine's log read over its admin API.
    remote = cli("logs", "dump", "--json", "--url", f"http://127.0.0.1:{one.port}/",
                 "--url", f"http://127.0.0.1:{two.port}/", runtime=one.runtime, SECURECHAT_TOKEN=TOKEN)
    assert remote.exit_code == 0, remote.output
    assert sorted(remote.stdout.splitlines()) == sorted(local.stdout.splitlines())
    assert [json.loads(line)["t"] for line in remote.stdout.splitlines()] == times
    # And the table: one header, every message once.
    table = cli("logs", "dump", "--data-dir", str(one.data), "--data-dir", str(two.data), runtime=one.runtime)
    assert table.exit_code == 0 and all(table.stdout.count(msg_id[:16]) == 1 for msg_id in sent), table.output
