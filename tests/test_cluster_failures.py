"""What crosses processes through Redis, when it fails midway: a relayed HTTP-transport stream
whose client stops reading, whose holding process dies, or whose Redis goes away; a relayed
download cut off; the upload quota while Redis is down.

Real redis-server (redis_server.py), real servers (in this test's loop where a test looks
inside them, `securechat serve` processes where one is killed with -9), real HTTP clients on
raw sockets (security/rawstream.py) that stop reading when told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import settle
from redis_server import redis_server  # noqa: F401  (fixture)
from security.rawstream import RawStream, Refused, post
from test_cluster import cluster, in_thread, joined, opened, until, workers_of_one_machine, ws  # noqa: F401

from helpers import ROOT, clean_env, free_port, wait_for_http
from securechat import crypto
from securechat.client import AttachmentError, ChatClient, Message
from securechat.config import Config
from securechat.relay.session import TOO_SLOW
from securechat.server import start

pytestmark = pytest.mark.gen_test(timeout=120)

HOST = "127.0.0.1"
BIG = "x" * 15_000  # one large message, as the local slow-reader tests send
# As tests/security/test_stream_hostile.py's: small write caps, and a budget alice can flood with.
SLOW_READER = dict(max_outbound_bytes=65536, max_frame_bytes=40_000, rate_per_second=200.0, rate_burst=200,
                   attachments_max_bytes=0)


def join_frame(name: str, challenge: str) -> str:
    client = ChatClient("unused", name, challenge=challenge)
    client.session = crypto.SessionKey.generate()
    return json.dumps(client.join_frame("lobby"))


async def relayed_stream(holder_port: int, asker_port: int, name: str, **options) -> RawStream:
    """A raw HTTP participant whose session `holder_port` holds (opened and joined there), its
    stream resumed on `asker_port`, which relays it: the stream the test then reads (or not)."""
    first = await in_thread(RawStream, HOST, holder_port)
    try:
        hello = await in_thread(first.next_frame)
        assert hello["type"] == "hello"
        status, _ = await in_thread(post, HOST, holder_port, "/stream/send", join_frame(name, hello["challenge"]),
                                    token=first.session["token"], seq=1)
        assert status == 204
        assert (await in_thread(first.next_frame))["type"] == "welcome"
        relayed = await in_thread(RawStream, HOST, asker_port,
                                  query=f"?session={first.session['session']}&last={first.last}", **options)
        assert relayed.session["session"] == first.session["session"]
        assert await in_thread(first.next_event) is None  # superseded by the relayed one
    finally:
        first.close()
    return relayed


def rest_of(stream: RawStream) -> list:
    """Every event left on a stream, up to the end of its response (None)."""
    events = []
    while True:
        event = stream.next_event()
        events.append(event)
        if event is None:
            return events


def tracebacks(caplog) -> list[str]:
    """Errors logged (tornado.access logs every 5xx answer as an error: those are answers)."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.exc_info or (r.levelno >= logging.ERROR and r.name != "tornado.access")]


async def channels(url: str) -> list[bytes]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        return sorted(await client.pubsub_channels("securechat:*"))
    finally:
        await client.aclose()


def relays_of(server) -> dict:
    relays = server.hub.cluster.relays
    return {"outgoing": len(relays.outgoing), "incoming": len(relays.incoming), "holders": len(relays.holders),
            "calls": len(server.hub.cluster._calls)}


NO_RELAYS = {"outgoing": 0, "incoming": 0, "holders": 0, "calls": 0}


@contextlib.asynccontextmanager
async def own_data_dirs(tmp_path, redis_url: str, count: int, **options):
    servers = []
    try:
        for index in range(count):
            servers.append(await start(Config(data_dir=tmp_path / f"machine{index}", port=0, log_fsync="never",
                                              cluster_redis_url=redis_url, **options)))
        for server in servers:
            await until(lambda s=server: s.hub.cluster.up, what="connected to Redis")
        yield servers
    finally:
        for server in servers:
            await server.shutdown()



# -- 1. a relayed stream whose client stops reading ------------------------------------------


async def test_a_relayed_stream_that_never_reads_is_dropped_like_any_slow_reader(
        tmp_path, redis_server, opened, caplog):
    """The session's unacknowledged frames pile up where it lives: dropped there as too slow,
    the close event relayed, the asking process's response ended, nothing left on either."""
    async with own_data_dirs(tmp_path, redis_server.url, 2, **SLOW_READER) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        stalled = await relayed_stream(one.port, two.port, "stalled", rcvbuf=4096)  # reads nothing now
        try:
            await settle(alice, bob, members=3)
            (held,) = one.app.settings["stream_sessions"].by_id.values()
            assert relays_of(one)["outgoing"] == 1 and relays_of(two)["incoming"] == 1
            for i in range(400):
                if held.ended is not None:
                    break
                await alice.deliver(f"{BIG} {i}")
            assert held.ended is not None, "the stalled reader was never dropped"
            assert held.ended[0] == TOO_SLOW
            events = await in_thread(rest_of, stalled)
            assert events[-1] is None and events[-2].name == "close"
            assert json.loads(events[-2].data)["code"] == TOO_SLOW
            await until(lambda: relays_of(one) == relays_of(two) == NO_RELAYS, "both processes let the relay go")
            await settle(alice, bob, members=2)
            msg_id = await alice.deliver("after the stalled reader left")
            assert (await bob.next_message()).id == msg_id
        finally:
            stalled.close()
    assert tracebacks(caplog) == []


async def test_a_relayed_stream_that_acks_what_it_never_read_is_dropped_by_the_asking_process(
        tmp_path, redis_server, opened, caplog):
    """A liar acknowledges every frame but never reads: nothing piles up where the session
    lives, everything in the asking process's write buffer. Its cap drops the session there as
    too slow, as a stream of its own would be, and the holder stops relaying."""
    async with own_data_dirs(tmp_path, redis_server.url, 2, **SLOW_READER) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        liar = await relayed_stream(one.port, two.port, "liar", rcvbuf=4096)
        try:
            await settle(alice, bob, members=3)
            (held,) = one.app.settings["stream_sessions"].by_id.values()
            token = liar.session["token"]
            for i in range(1500):
                if held.ended is not None or held.stream is None:
                    break
                await in_thread(post, HOST, two.port, "/stream/ack", "{}", token=token, ack=held.seq)
                await alice.deliver(f"{BIG} {i}")
            assert held.ended is not None, (f"the liar was not dropped (its stream {held.stream}, "
                                            f"{held.unacked_bytes} bytes unacknowledged)")
            assert held.ended[0] == TOO_SLOW
            events = await in_thread(rest_of, liar)
            assert events[-1] is None and events[-2].name == "close"
            assert json.loads(events[-2].data)["code"] == TOO_SLOW
            await until(lambda: relays_of(one) == relays_of(two) == NO_RELAYS, "both processes let the relay go")
            await settle(alice, bob, members=2)
            status, body = await in_thread(post, HOST, two.port, "/stream/ack", "{}", token=token, ack=0)
            assert (status, body["error"], body["code"]) == (410, "session_closed", TOO_SLOW)
        finally:
            liar.close()
    assert tracebacks(caplog) == []


# -- 2. a relayed stream whose holder dies, or whose Redis goes away --------------------------


@contextlib.contextmanager
def serve_process(tmp_path: Path, name: str, redis_url: str):
    """A real `securechat serve` process of its own (data dir, runtime dir), sharing Redis."""
    port = free_port()
    run = tmp_path / name / "run"
    run.mkdir(parents=True, mode=0o700)
    errors = open(tmp_path / name / "stderr", "w+")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(port), "--data-dir", str(tmp_path / name / "data")],
        cwd=ROOT, env=clean_env(XDG_RUNTIME_DIR=str(run), XDG_DATA_HOME=str(tmp_path / name / "home"),
                                SECURECHAT_CLUSTER_REDIS_URL=redis_url),
        stdout=subprocess.DEVNULL, stderr=errors)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
        process.port = port
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        errors.close()


async def test_a_relayed_stream_whose_holding_process_is_killed_ends_and_its_resume_is_refused(
        tmp_path, redis_server, opened, caplog):
    async with cluster(tmp_path, redis_server.url, 1) as (survivor,):
        with serve_process(tmp_path, "victim", redis_server.url) as victim:
            await until(lambda: len(survivor.hub.cluster.peers) == 1, "the survivor sees the victim")
            alice = await joined(ws(survivor), "alice", opened)
            bob = await relayed_stream(victim.port, survivor.port, "bob")
            try:
                await settle(alice, members=2)
                msg_id = await alice.deliver("to bob, held by the victim")
                frame = await in_thread(bob.next_frame)
                while frame["type"] != "msg":
                    frame = await in_thread(bob.next_frame)
                assert frame["id"] == msg_id and relays_of(survivor)["holders"] == 1
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                bob.sock.settimeout(30)  # not a hang: the survivor ends the response once it knows
                events = await in_thread(rest_of, bob)
                assert events[-1] is None
                assert relays_of(survivor) == NO_RELAYS
                await settle(alice, members=1)
                # The session died with its process: a resume anywhere is refused, clearly.
                with pytest.raises(Refused) as refused:
                    await in_thread(RawStream, HOST, survivor.port,
                                    query=f"?session={bob.session['session']}&last={bob.last}")
                assert refused.value.status == 404 and refused.value.json()["error"] == "unknown_session"
                assert relays_of(survivor) == NO_RELAYS
            finally:
                bob.close()
    assert tracebacks(caplog) == []
    assert await channels(redis_server.url) == []


async def test_relayed_streams_of_a_killed_process_end_whichever_process_reaps_it(tmp_path, redis_server, caplog):
    """Of the processes left, one removes the dead one from Redis (and logs its members'
    leaves); every other one must still end the streams it relayed from it, members or not
    (a session that has not joined yet has no member record to notice the death by)."""
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        with serve_process(tmp_path, "victim", redis_server.url) as victim:
            await until(lambda: all(len(s.hub.cluster.peers) == 2 for s in (one, two)), "all three see each other")
            streams = []
            try:
                for asker in (one, two):
                    first = await in_thread(RawStream, HOST, victim.port)  # hello only, not joined
                    first.close()
                    streams.append(await in_thread(RawStream, HOST, asker.port,
                                                   query=f"?session={first.session['session']}&last={first.last}",
                                                   timeout=30))
                assert relays_of(one)["holders"] == relays_of(two)["holders"] == 1
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                ended = await asyncio.gather(*(in_thread(rest_of, stream) for stream in streams),
                                             return_exceptions=True)
                assert [e if isinstance(e, Exception) else e[-1] for e in ended] == [None, None], \
                    "a relayed stream of the dead process never ended"
                assert relays_of(one) == relays_of(two) == NO_RELAYS
            finally:
                for stream in streams:
                    stream.close()
    assert tracebacks(caplog) == []


async def test_a_relayed_stream_ends_when_redis_goes_away_and_resumes_when_it_is_back(
        tmp_path, redis_server, opened, caplog):
    async with cluster(tmp_path, redis_server.url, 2) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await relayed_stream(one.port, two.port, "bob")
        try:
            await settle(alice, members=2)
            (held,) = one.app.settings["stream_sessions"].by_id.values()
            first = await alice.deliver("before the outage")
            frame = await in_thread(bob.next_frame)
            while frame["type"] != "msg":
                frame = await in_thread(bob.next_frame)
            assert frame["id"] == first
            redis_server.stop()
            bob.sock.settimeout(30)
            events = await in_thread(rest_of, bob)
            # Ended without a close event: the session lives on, the page resumes.
            assert events[-1] is None and "close" not in [e.name for e in events[:-1]]
            assert relays_of(one) == relays_of(two) == NO_RELAYS
            assert held.ended is None and held.stream is None
            during = await alice.deliver("during the outage")  # waits in bob's session on one
            # While Redis is down, two cannot reach the session: a clear refusal, to retry.
            with pytest.raises(Refused) as refused:
                await in_thread(RawStream, HOST, two.port, query=f"?session={held.id}&last={bob.last}")
            assert refused.value.status == 503 and refused.value.json()["error"] == "unavailable"
            redis_server.start()
            await until(lambda: one.hub.cluster.up and two.hub.cluster.up, "both reconnected", 20)
            again = await in_thread(RawStream, HOST, two.port, query=f"?session={held.id}&last={bob.last}")
            try:
                frame = await in_thread(again.next_frame)
                while frame["type"] != "msg":
                    frame = await in_thread(again.next_frame)
                assert frame["id"] == during  # what it missed, replayed through the relay
                assert relays_of(one)["outgoing"] == 1 and relays_of(two)["incoming"] == 1
            finally:
                again.close()
            await until(lambda: relays_of(one) == relays_of(two) == NO_RELAYS, "the relay let go")
        finally:
            bob.close()
    assert tracebacks(caplog) == []


# -- 3. a relayed download cut off midway -----------------------------------------------------


class RawDownload:
    """GET /api/blobs/<id> on a raw socket that reads only when told to."""

    def __init__(self, port: int, blob_id: str, token: str, rcvbuf: int = 4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect((HOST, port))
        self.sock.sendall(f"GET /api/blobs/{blob_id} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                          f"Authorization: Bearer {token}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(4096)
            assert piece, "closed before the headers"
            data += piece
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.length = int(self.headers["content-length"])
        self.eof = False

    def read(self, at_least: int) -> None:
        while len(self.body) < at_least and not self.eof:
            piece = self.sock.recv(65536)
            self.eof = not piece
            self.body += piece

    def read_to_end(self) -> None:
        self.read(self.length + 1)

    def close(self) -> None:
        self.sock.close()


async def shared_file(uploader: ChatClient, reader: ChatClient, size: int):
    data = os.urandom(size)
    msg_id, ref = await uploader.send_file(data, "big.bin")
    received = await reader.next_message()
    assert isinstance(received, Message) and received.id == msg_id
    return received.files[0]


async def test_a_relayed_download_whose_storing_process_is_killed_is_cut_off_not_truncated(
        tmp_path, redis_server, opened, caplog):
    """The blob is on the victim's disk only; the survivor streams it to bob part by part. The
    victim killed midway: bob's response must not end as if complete (a short body ending
    cleanly under a full Content-Length): the connection closes short, which a reader notices."""
    async with own_data_dirs(tmp_path, redis_server.url, 1) as (survivor,):
        with serve_process(tmp_path, "victim", redis_server.url) as victim:
            await until(lambda: len(survivor.hub.cluster.peers) == 1, "the survivor sees the victim")
            alice = await joined(f"ws://127.0.0.1:{victim.port}/ws", "alice", opened)
            bob = await joined(ws(survivor), "bob", opened)
            await settle(alice, bob, members=2)
            ref = await shared_file(alice, bob, 16 * 1024 * 1024)
            download = await in_thread(RawDownload, survivor.port, ref.id, bob.attachments["token"])
            try:
                assert download.status == 200
                await in_thread(download.read, 1)
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                await in_thread(download.read_to_end)
                assert download.eof and len(download.body) < download.length
                await until(lambda: relays_of(survivor) == NO_RELAYS, "the survivor stopped asking")
            finally:
                download.close()
            assert any("broke off" in r.getMessage() for r in caplog.records)
            # Asked again: no live process stores it any more, which is all the cluster can know.
            with pytest.raises(AttachmentError) as missing:
                await bob.fetch_blob(ref.id)
            assert (missing.value.code, missing.value.status) == ("not_found", 404)
    assert tracebacks(caplog) == []


async def test_a_relayed_download_whose_reader_goes_away_stops_reading_on_the_storing_side(
        tmp_path, redis_server, opened, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.access")  # 200s are DEBUG (web/app.py)
    async with own_data_dirs(tmp_path, redis_server.url, 2) as (storing, asking):
        alice = await joined(ws(storing), "alice", opened)
        bob = await joined(ws(asking), "bob", opened)
        await settle(alice, bob, members=2)
        ref = await shared_file(alice, bob, 16 * 1024 * 1024)
        download = await in_thread(RawDownload, asking.port, ref.id, bob.attachments["token"])
        parts = -(-download.length // (512 * 1024))
        await in_thread(download.read, 1)
        download.close()
        await until(lambda: any(f"/api/blobs/{ref.id}" in r.getMessage() for r in caplog.records
                                if r.name == "tornado.access"), "the download's request ended")
        await until(lambda: relays_of(asking) == NO_RELAYS, "the asking process stopped asking")
        served = storing.hub.cluster.transfers.served
        assert served == asking.hub.cluster.transfers.fetched and served < parts // 2, (served, parts)
        # The next download still works, in full.
        assert len(await bob.fetch_blob(ref.id)) == download.length
        assert storing.hub.cluster.transfers.served == served + parts
    assert tracebacks(caplog) == []


async def test_a_relayed_download_is_cut_off_when_redis_goes_away_and_refused_while_it_is_down(
        tmp_path, redis_server, opened, caplog):
    async with own_data_dirs(tmp_path, redis_server.url, 2) as (storing, asking):
        alice = await joined(ws(storing), "alice", opened)
        bob = await joined(ws(asking), "bob", opened)
        await settle(alice, bob, members=2)
        ref = await shared_file(alice, bob, 16 * 1024 * 1024)
        download = await in_thread(RawDownload, asking.port, ref.id, bob.attachments["token"])
        try:
            assert download.status == 200
            await in_thread(download.read, 1)
            redis_server.stop()
            await in_thread(download.read_to_end)
            assert download.eof and len(download.body) < download.length
            await until(lambda: relays_of(asking) == NO_RELAYS, "the asking process stopped asking")
        finally:
            download.close()
        with pytest.raises(AttachmentError) as refused:
            await bob.fetch_blob(ref.id)
        assert (refused.value.code, refused.value.status) == ("unavailable", 503)
    assert tracebacks(caplog) == []


# -- 4. the upload quota with Redis down -----------------------------------------------------


async def test_the_upload_quota_counts_this_worker_only_while_redis_is_down_and_all_again_after(
        tmp_path, redis_server, opened, caplog):
    import redis.asyncio as aioredis

    size, quota = 2_000_000, 3_000_000  # one fits, two do not

    async def begin(client):
        try:
            answer = await client._call("POST", "/api/blobs", {"Upload-Length": str(size)})
        except AttachmentError as refused:
            return refused
        return json.loads(answer.body)["upload"]

    async with workers_of_one_machine(tmp_path, redis_server.url, 2, attachments_quota_bytes=quota) as (one, two):
        alice = await joined(ws(one), "alice", opened)
        bob = await joined(ws(two), "bob", opened)
        await settle(alice, bob, members=2)
        key = f"securechat:uploads:{one.hub.blobs.scope}"
        redis_server.stop()
        await until(lambda: not one.hub.cluster.up and not two.hub.cluster.up, "both see Redis down")
        # Each worker counts its own: one upload each fits, a second on the same worker does not.
        first = await begin(alice)
        assert isinstance(first, str), first
        refused = await begin(alice)
        assert isinstance(refused, AttachmentError)
        assert (refused.code, refused.status) == ("quota_exceeded", 507)
        assert f"{quota - size} of {quota} bytes left" in str(refused)
        second = await begin(bob)
        assert isinstance(second, str), "two's start counted one's upload without Redis"
        # An upload finishes without Redis: its blob counts, on disk, from now on.
        small = await alice.upload_file(os.urandom(300_000), "small.bin")
        assert (tmp_path / "data" / "blobs" / small.id).is_file()

        redis_server.start()
        await until(lambda: one.hub.cluster.up and two.hub.cluster.up, "both reconnected", 20)
        redis = aioredis.from_url(redis_server.url)
        try:
            # Each worker's uploads in progress are reserved again, and only those.
            fields = sorted(f.decode().split(" ")[1] for f in await redis.hkeys(key))
            assert fields == sorted([first, second])
            refused = await begin(bob)
            assert isinstance(refused, AttachmentError) and refused.code == "quota_exceeded"
            await alice._call("DELETE", f"/api/blobs/uploads/{first}")
            await bob._call("DELETE", f"/api/blobs/uploads/{second}")
            await until(lambda: not one.hub.blobs.pending() and not two.hub.blobs.pending(), "both cancelled")
            for _ in range(500):
                if await redis.hlen(key) == 0:
                    break
                await asyncio.sleep(0.01)
            assert await redis.hlen(key) == 0
            assert isinstance(await begin(bob), str)
        finally:
            await redis.aclose()
    assert tracebacks(caplog) == []
