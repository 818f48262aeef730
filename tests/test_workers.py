"""`securechat serve --workers N`: real worker processes sharing one port, joined by a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import pytest
import redis
from conftest import settle
from redis_server import redis_server  # noqa: F401  (fixture)

from helpers import cli
from securechat.admin.client import AdminClient
from securechat.client import ChatClient, Message
from securechat.storage.ciphertext_log import LogRecord, read_log

pytestmark = pytest.mark.gen_test(timeout=90)

# on_distinct_workers opens connections from one address until the kernel has spread the names
# over the workers (a dozen tries is not rare): those are not the joins these tests are about,
# and the default 20 joins a minute per address refused some of them as rate_limited.
PLACING = {"SECURECHAT_JOINS_PER_MINUTE": "1000"}


def holders(redis_url: str) -> dict[str, dict]:
    """sid -> the worker's info (pid, worker number) holding that member, read from Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        found = {}
        for worker in client.zrange("securechat:workers", 0, -1):
            info = {k.decode(): json.loads(v) for k, v in client.hgetall(b"securechat:worker:" + worker).items()}
            for sid in client.hkeys(b"securechat:members:" + worker):
                found[sid.decode()] = info
        return found
    finally:
        client.close()


async def on_distinct_workers(url: str, redis_url: str, names: list[str], opened: list) -> list[ChatClient]:
    """Connect until each name is held by a different worker (the kernel picks who accepts)."""
    chosen: dict[int, ChatClient] = {}
    for attempt in range(60):
        name = names[len(chosen)]
        client = ChatClient(url, name)
        opened.append(client)
        await client.connect()
        pid = None
        for _ in range(100):
            pid = holders(redis_url).get(client.sid, {}).get("pid")
            if pid is not None:
                break
            await asyncio.sleep(0.02)
        if pid not in chosen:
            chosen[pid] = client
            if len(chosen) == len(names):
                people = list(chosen.values())
                await same_roster(people)
                return people
        else:
            client.close()
            await asyncio.sleep(0.1)
    raise AssertionError(f"could not place {names} on distinct workers in 60 connections")


async def same_roster(people: list[ChatClient]) -> None:
    """Until everyone lists exactly these people (the extra connections' leaves have arrived)."""
    wanted = {person.sid for person in people}
    for person in people:
        for _ in range(300):
            if set(person.members) == wanted:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await person.recv(timeout=0.05)
        assert set(person.members) == wanted, f"{person.username} lists {sorted(person.members)}"


@pytest.fixture
def opened(io_loop):
    clients: list[ChatClient] = []
    yield clients
    for client in clients:
        client.close()


def test_workers_above_one_without_redis_say_what_is_missing_in_one_line(tmp_path):
    result = cli("serve", "--workers", "3", "--port", "0", "--data-dir", str(tmp_path / "data"),
                 runtime=tmp_path / "run")
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "--workers 3" in lines[0] and "[cluster] redis_url" in lines[0]
    assert "Traceback" not in result.output


async def test_three_workers_share_the_port_and_a_killed_worker_leaves_everywhere(
        tmp_path, redis_server, server, opened):
    served = server("--workers", "3", **PLACING, SECURECHAT_CLUSTER_REDIS_URL=redis_server.url)
    for _ in range(200):  # every worker registered
        if len(redis.Redis.from_url(redis_server.url).zrange("securechat:workers", 0, -1)) == 3:
            break
        await asyncio.sleep(0.05)
    alice, bob, carol = await on_distinct_workers(served.ws, redis_server.url, ["alice", "bob", "carol"], opened)
    await settle(alice, bob, carol, members=3)
    for sender in (alice, bob, carol):
        msg_id = await sender.send(f"from {sender.username}'s worker")
        for client in (alice, bob, carol):
            received = await client.next_message()
            assert isinstance(received, Message) and received.id == msg_id
        await sender.expect("ack")

    # One runtime file, the parent's: the admin commands see one server.
    files = list((served.runtime / "securechat").glob("server-*.json"))
    assert [f.name for f in files] == [f"server-{served.process.pid}.json"]
    # Each worker writes its own log; every message id is in exactly one of them.
    logs = sorted((served.data / "workers").iterdir())
    assert [d.name for d in logs] == ["0", "1", "2"]

    # kill -9 carol's worker: alice and bob hear that she left, within 15 s.
    victim = holders(redis_server.url)[carol.sid]["pid"]
    assert victim != served.process.pid
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    for client in (alice, bob):
        frame = await client.expect("left", timeout=15)
        assert frame["username"] == "carol"
    assert time.monotonic() - killed < 15
    assert len(alice.members) == len(bob.members) == 2
    # The parent started a new worker in its place: three again.
    for _ in range(300):
        pids = {info["pid"] for info in holders(redis_server.url).values()}
        workers = redis.Redis.from_url(redis_server.url).zrange("securechat:workers", 0, -1)
        if len(workers) == 3 and victim not in pids:
            break
        await asyncio.sleep(0.05)
    assert len(workers) == 3
    dave = ChatClient(served.ws, "dave")
    opened.append(dave)
    await dave.connect()
    await settle(alice, bob, dave, members=3)
    await dave.send("hi all")
    assert (await alice.next_message()).text == "hi all"
    assert (await bob.next_message()).text == "hi all"

    # SIGHUP to the parent rotates every worker's log.
    served.process.send_signal(signal.SIGHUP)
    for _ in range(200):
        rotated = [d for d in logs if list(d.glob("ciphertext-*.jsonl*"))]
        if len(rotated) >= 2:  # the restarted worker's log may be empty: nothing to rotate
            break
        await asyncio.sleep(0.05)
    assert len(rotated) >= 2
    for client in opened:
        client.close()
    await asyncio.sleep(0.2)
    out, err = served.stop()
    assert served.process.returncode == 0, err
    assert not served.runtime_file().exists()
    with contextlib.suppress(FileNotFoundError):
        assert list((served.runtime / "securechat").glob("server-*.json")) == []


async def test_rotation_across_workers_loses_and_duplicates_nothing(tmp_path, redis_server, server, opened):
    token = "workers-test-admin-token-0123456789"
    served = server("--workers", "2", **PLACING, SECURECHAT_CLUSTER_REDIS_URL=redis_server.url, SECURECHAT_TOKEN=token)
    alice, bob = await on_distinct_workers(served.ws, redis_server.url, ["alice", "bob"], opened)
    sent = []
    for round_ in range(4):
        for sender in (alice, bob):
            for _ in range(3):
                sent.append(await sender.send(f"message {len(sent)}"))
        # `securechat logs rotate`: the worker that answers tells the other to rotate too.
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: cli("logs", "rotate", runtime=served.runtime))
        assert result.exit_code == 0, result.output
    for sender in (alice, bob):
        for _ in range(12):
            await sender.expect("ack")
    await asyncio.sleep(0.3)
    for worker in ("0", "1"):
        assert len(list((served.data / "workers" / worker).glob("ciphertext-*.jsonl*"))) >= 2

    # `securechat logs dump` reads every worker's log as one, in time order.
    result = await asyncio.get_running_loop().run_in_executor(
        None, lambda: cli("logs", "dump", "--json", runtime=served.runtime))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    ids = [r["id"] for r in records if r["event"] == "msg"]
    assert sorted(ids) == sorted(sent) and len(ids) == len(set(ids))
    times = [r["t"] for r in records]
    assert times == sorted(times)
    # (on_distinct_workers may have joined and closed extra connections: those are logged too)
    assert {r["username"] for r in records if r["event"] == "join"} == {"alice", "bob"}
    # The same over the admin API: every worker's log is read (?worker=N), whichever answers.
    remote = await asyncio.get_running_loop().run_in_executor(
        None, lambda: cli("logs", "dump", "--json", "--url", served.url, runtime=served.runtime,
                          SECURECHAT_TOKEN=token))
    assert remote.exit_code == 0, remote.output
    local_lines = [line for line in result.output.splitlines() if line.startswith("{")]
    assert sorted(remote.stdout.splitlines()) == sorted(local_lines)
    assert [json.loads(line)["t"] for line in remote.stdout.splitlines()] == times
    # Page by page (5 records each, so both workers answer pages of each log): each worker's
    # log exactly as stored in its files.
    admin = AdminClient(served.url, token)
    for worker in (0, 1):
        paged = await asyncio.get_running_loop().run_in_executor(None, lambda: list(admin.logs(page=5, worker=worker)))
        stored = [r.raw for r in read_log(served.data / "workers" / str(worker)) if isinstance(r, LogRecord)]
        assert paged == stored and len(stored) > 5

    # `securechat status`: Redis up, and both workers with their own figures (another
    # worker's are as of its last heartbeat, at most 2 s old).
    for _ in range(30):
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: cli("status", runtime=served.runtime))
        assert result.exit_code == 0, result.output
        assert "redis     up" in result.output
        workers = [line for line in result.output.splitlines() if line.strip().startswith("worker ")]
        if len(workers) == 2 and all("1 joined  1 connections  12 messages relayed" in line for line in workers):
            break
        await asyncio.sleep(0.25)
    assert len(workers) == 2 and all("1 joined  1 connections  12 messages relayed" in line
                                     for line in workers), result.output


async def test_status_roster_and_rooms_while_redis_is_down_say_so_in_one_line(tmp_path, server, redis_server,
                                                                              opened):
    served = server("--workers", "2", **PLACING, SECURECHAT_CLUSTER_REDIS_URL=redis_server.url)
    alice, bob = await on_distinct_workers(served.ws, redis_server.url, ["alice", "bob"], opened)
    run = asyncio.get_running_loop().run_in_executor

    async def command(*args):
        result = await run(None, lambda: cli(*args, runtime=served.runtime))
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        return result

    redis_server.stop()
    for _ in range(100):  # both workers have noticed (whichever answers says so)
        answers = [json.loads((await command("status", "--json")).stdout) for _ in range(4)]
        if all(a["servers"][0]["status"]["cluster"]["redis"] == "down" for a in answers):
            break
        await asyncio.sleep(0.1)

    status = await command("status")
    lines = status.output.splitlines()
    down = [line for line in lines if line.strip().startswith("redis ")]
    assert len(down) == 1 and "DOWN since" in down[0] and "other processes cannot be reached" in down[0]
    assert any("only this process's figures are known" in line for line in lines)
    # The answering worker's own figures: it holds one of the two.
    workers = [line for line in lines if line.strip().startswith("worker ")]
    assert len(workers) == 1 and "1 joined  1 connections" in workers[0], status.output

    for args in (("roster",), ("rooms",)):
        result = await command(*args)
        warnings = [line for line in result.stderr.splitlines() if line.startswith("securechat: warning:")]
        assert len(warnings) == 1 and "Redis is DOWN since" in warnings[0], result.output
        assert "people on other processes are listed as they were then" in warnings[0]
        assert "Redis" not in result.stdout  # the table itself is unchanged
    roster = await command("roster")
    assert "alice" in roster.stdout and "bob" in roster.stdout  # the other one as of the outage
    answer = json.loads((await command("roster", "--json")).stdout)
    assert answer["cluster"]["redis"] == "down" and isinstance(answer["cluster"]["down_since"], int)
    assert json.loads((await command("rooms", "--json")).stdout)["cluster"]["redis"] == "down"

    # Redis is back: the whole cluster again, every worker with its own figures, no warning.
    redis_server.start()
    for _ in range(200):
        status = await command("status")
        workers = [line for line in status.output.splitlines() if line.strip().startswith("worker ")]
        if "redis     up" in status.output and len(workers) == 2 and all(
                "1 joined  1 connections" in line for line in workers):
            break
        await asyncio.sleep(0.1)
    assert "redis     up" in status.output and len(workers) == 2, status.output
    assert all("1 joined  1 connections" in line for line in workers), status.output
    for _ in range(50):
        roster = await command("roster")
        if "warning" not in roster.stderr:
            break
        await asyncio.sleep(0.1)
    assert roster.stderr == "" and "alice" in roster.stdout and "bob" in roster.stdout
    # Stopped here, with Redis up (the fixtures would stop Redis first).
    for client in opened:
        client.close()
    await asyncio.sleep(0.2)
    served.stop()
    assert served.process.returncode == 0


async def test_an_http_fallback_client_and_a_websocket_client_on_different_workers_chat(
        tmp_path, redis_server, server, opened):
    """Every POST of the HTTP transport is a new request the kernel gives to any worker: those
    that land on the worker not holding the session are run by the one that does."""
    served = server("--workers", "2", **PLACING, SECURECHAT_CLUSTER_REDIS_URL=redis_server.url)
    for _ in range(200):
        if len(redis.Redis.from_url(redis_server.url).zrange("securechat:workers", 0, -1)) == 2:
            break
        await asyncio.sleep(0.05)
    alice = ChatClient(served.ws, "alice")
    opened.append(alice)
    await alice.connect()
    await asyncio.sleep(0.1)
    alice_pid = holders(redis_server.url)[alice.sid]["pid"]
    for attempt in range(30):
        bob = ChatClient(served.ws.replace("ws://", "http://"), "bob", transport="http")
        opened.append(bob)
        await bob.connect()
        for _ in range(100):
            bob_pid = holders(redis_server.url).get(bob.sid, {}).get("pid")
            if bob_pid is not None:
                break
            await asyncio.sleep(0.02)
        if bob_pid != alice_pid:
            break
        bob.close()
        await asyncio.sleep(0.1)
    assert bob_pid not in (None, alice_pid)
    await same_roster([alice, bob])

    def figures(pid: int) -> dict:
        client = redis.Redis.from_url(redis_server.url)
        try:
            for worker in client.zrange("securechat:workers", 0, -1):
                info = {k.decode(): json.loads(v) for k, v in client.hgetall(b"securechat:worker:" + worker).items()}
                if info["pid"] == pid:
                    return info
            return {}
        finally:
            client.close()

    for round_ in range(40):
        await asyncio.sleep(0.15)  # within the frame budget (limits.rate_per_second, 10)
        msg_id = await bob.send(f"bob's message {round_}")
        while (received := await alice.next_message()).sender == "alice":
            pass  # her own copies
        assert (received.id, received.text) == (msg_id, f"bob's message {round_}")
        await bob.expect("ack")
        answer = await alice.send(f"alice's answer {round_}")
        while (got := await bob.next_message()).sender == "bob":
            pass  # his own copies
        assert got.id == answer
        if figures(bob_pid).get("answered", 0) > 0:
            break  # some of his POSTs had reached alice's worker (figures lag a heartbeat, 2 s)
    for _ in range(60):
        if figures(bob_pid).get("answered", 0) > 0:
            break
        await asyncio.sleep(0.1)
    assert figures(bob_pid)["answered"] > 0 and figures(alice_pid)["forwarded"] > 0
    bob.close()  # its close POST completes before the test's loop ends
    for _ in range(100):
        if bob.ws._stopped:
            break
        await asyncio.sleep(0.02)


async def test_attachments_work_across_workers(tmp_path, redis_server, server, opened):
    """Whichever worker each request of an upload or a download reaches (the kernel picks)."""
    served = server("--workers", "2", **PLACING, SECURECHAT_CLUSTER_REDIS_URL=redis_server.url)
    alice, bob = await on_distinct_workers(served.ws, redis_server.url, ["alice", "bob"], opened)
    assert alice.attachments is not None and bob.attachments is not None
    sent = {}
    for index in range(4):
        data = os.urandom(1_200_000 + index)  # two parts each
        msg_id, ref = await alice.send_file(data, f"file{index}.bin")
        sent[msg_id] = data
    for _ in range(4):
        while (received := await bob.next_message()).sender != "alice":
            pass
        assert await bob.fetch_file(received.files[0]) == sent[received.id]
        assert await alice.fetch_file(received.files[0]) == sent[received.id]
    blobs = [p for p in (served.data / "blobs").iterdir() if p.is_file() and not p.name.endswith(".json")]
    assert len(blobs) == 4
