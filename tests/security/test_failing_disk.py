"""Zombie participants: the ciphertext log cannot be written (a full disk, a file-size limit).

Each path (join, leave, relay) runs against a real `securechat serve` whose writes really
fail, two ways:
* "fsize": the server's RLIMIT_FSIZE is lowered (prlimit) to a few bytes past what its live
  log holds, so the next append gets part of the way and then fails with EFBIG; works for any
  user, so it always runs;
* "tmpfs": the data directory is a 256 KiB tmpfs that the test fills up, so appends fail with
  ENOSPC (the log is first padded to a few bytes short of a page, because a write into a page
  the file already has needs no free space); needs root and a mount, else skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
from pathlib import Path

import pytest
from helpers import Server, close_all

from securechat.admin.client import AdminClient
from securechat.client import ChatClient, ClientError, Message
from securechat.storage.ciphertext_log import LIVE_NAME, LogProblem, LogRecord, read_log

TOKEN = "failing-disk-admin-token-0123456789"
SLACK = 40  # bytes an append may still write before the disk says no


class FsizeDisk:
    """Writes past the live log's size + SLACK fail with EFBIG."""

    name = "fsize"

    def __init__(self, tmp_path: Path):
        self.data = tmp_path / "data"
        self.server: Server | None = None

    def start(self, tmp_path: Path) -> Server:
        self.server = Server(tmp_path, data_dir=self.data, SECURECHAT_TOKEN=TOKEN, SECURECHAT_LOG_FSYNC="never")
        return self.server

    def fill(self) -> None:
        size = (self.data / LIVE_NAME).stat().st_size
        resource.prlimit(self.server.process.pid, resource.RLIMIT_FSIZE, (size + SLACK, resource.RLIM_INFINITY))

    def free(self) -> None:
        resource.prlimit(self.server.process.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def close(self) -> None:
        pass


class TmpfsDisk(FsizeDisk):
    """The data directory on a tiny tmpfs that the test fills up."""

    name = "tmpfs"

    def __init__(self, tmp_path: Path):
        mount = tmp_path / "disk"
        mount.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; the fsize variant covers the same code")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the fsize variant covers the same code")
        self.mount = mount
        self.data = mount / "data"
        self.filler = mount / "filler"
        self.server = None

    def fill(self) -> None:
        live = self.data / LIVE_NAME
        page = os.statvfs(self.mount).f_bsize
        # Pad the log with a record of its own to SLACK bytes short of a page boundary.
        size = live.stat().st_size
        gap = (-size - SLACK) % page
        while gap < 40:
            gap += page
        pad = '{"event":"pad","x":"' + "x" * (gap - len('{"event":"pad","x":""}\n')) + '"}\n'
        with open(live, "a") as f:
            f.write(pad)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)


@pytest.fixture(params=[FsizeDisk, TmpfsDisk], ids=["fsize", "tmpfs"])
def disk(request, tmp_path):
    disk = request.param(tmp_path)
    disk.start(tmp_path)
    try:
        yield disk
    finally:
        try:
            if disk.server.process.poll() is None:
                disk.server.stop()
        finally:
            disk.close()


async def joined(url: str, *names: str) -> list[ChatClient]:
    clients = []
    for name in names:
        client = ChatClient(url, name)
        await client.connect()
        clients.append(client)
    for client in clients:
        while len(client.members) < len(clients):
            await client.recv()
    return clients


async def nothing_more(client: ChatClient, seconds: float = 1.0) -> list[dict]:
    """Frames that arrive within `seconds` (expected: none)."""
    frames = []
    try:
        while True:
            frames.append(await client.recv(timeout=seconds))
    except asyncio.TimeoutError:
        return [f for f in frames if f is not None]


def roster_names(server: Server) -> set[str]:
    return {p["username"] for p in AdminClient(server.url, TOKEN).roster()["participants"]}


def problems(data: Path) -> list:
    return [item for item in read_log(data) if isinstance(item, LogProblem)]


def test_a_join_that_cannot_be_recorded_does_not_happen(disk):
    server = disk.server

    async def scenario():
        (alice,) = await joined(server.ws, "alice")
        disk.fill()
        bob = ChatClient(server.ws, "bob")
        with pytest.raises(ClientError, match="server_error"):
            await bob.connect()
        assert await nothing_more(alice) == []  # nobody was told bob joined
        assert roster_names(server) == {"alice"}
        await close_all([bob])
        disk.free()
        # The name was never taken: bob (or anyone) joins it now, and alice hears it once.
        again = ChatClient(server.ws, "bob")
        await again.connect()
        frame = await alice.expect("joined")
        assert frame["participant"]["username"] == "bob"
        assert roster_names(server) == {"alice", "bob"}
        await close_all([alice, again])

    asyncio.run(scenario())
    _, err = server.stop()
    assert "could not record a join" in err
    joins = [i.record["username"] for i in read_log(disk.data) if isinstance(i, LogRecord) and i.record["event"] == "join"]
    assert joins == ["alice", "bob"] and problems(disk.data) == []


def test_a_leave_that_cannot_be_recorded_still_happens(disk):
    server = disk.server

    async def scenario():
        alice, bob = await joined(server.ws, "alice", "bob")
        disk.fill()
        await bob.send_frame({"v": 2, "type": "leave"})
        left = await alice.expect("left")
        assert left["username"] == "bob"
        assert roster_names(server) == {"alice"}
        disk.free()
        newcomer = ChatClient(server.ws, "bob")  # another identity: the name is free
        await newcomer.connect()
        await close_all([alice, bob, newcomer])

    asyncio.run(scenario())
    _, err = server.stop()  # asserts there was no traceback
    lines = [line for line in err.splitlines() if "could not record bob's leave" in line]
    assert len(lines) == 1 and ("File too large" in lines[0] or "No space left" in lines[0])
    assert problems(disk.data) == []


def test_a_message_that_cannot_be_logged_is_not_relayed_and_can_be_sent_again(disk):
    server = disk.server

    async def scenario():
        alice, bob = await joined(server.ws, "alice", "bob")
        disk.fill()
        frame = alice.seal("written on a full disk")
        await alice.send_frame(frame)
        error = await alice.expect("error")
        assert error["code"] == "server_error" and error["id"] == frame["id"]
        assert await nothing_more(bob) == []
        disk.free()
        # Nothing was used up: the very same frame (id and counter) goes through now.
        await alice.send_frame(json.dumps(frame))
        assert (await alice.expect("ack"))["id"] == frame["id"]
        received = await bob.next_message()
        assert isinstance(received, Message) and received.text == "written on a full disk"
        await close_all([alice, bob])

    asyncio.run(scenario())
    _, err = server.stop()
    # No torn half-record was left behind: every line reads back, the message once.
    assert problems(disk.data) == []
    messages = [i for i in read_log(disk.data) if isinstance(i, LogRecord) and i.record["event"] == "msg"]
    assert len(messages) == 1
    assert "could not append a message" in err
