"""One process's link to the rest of the cluster: its Hub's events out to Redis, the others' in.

Every room lives in every process: members held by another process sit in the local Room like
anyone else (so rosters, name checks and wrapped-key checks see the whole room), but with a
RemoteConnection, which sends nothing: frames reach them through the process that holds them,
which hears each event once per room on the shared channel and writes to its own members with
the Hub's ordinary per-recipient routing.

Membership also lives in Redis: each process keeps its members in a hash and its heartbeat in a
sorted set. A process that stops heartbeating for DEAD_AFTER seconds (kill -9, a lost machine)
is dropped by the others, its members announced as left; the one process that wins the ZREM
logs their leave records, so nothing is logged twice. When Redis goes away, processes keep
serving their own members, refuse messages that would have to cross, reconnect with back-off,
and on reconnecting rewrite their members and say hello, so the others resynchronise.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import secrets
import socket
import time
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from ..relay import protocol
from ..relay.protocol import Msg, ProtocolError
from ..relay.room import Participant, Relay, Room
from . import events
from .streams import EVENTS as RELAY_EVENTS, StreamRelays
from .transfers import EVENTS as TRANSFER_EVENTS, Transfers

log = logging.getLogger("securechat")

HEARTBEAT = 2.0  # seconds between heartbeats (and checks for dead processes)
DEAD_AFTER = 10.0  # a process silent this long is gone: with HEARTBEAT, gone everywhere within 12 s
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # reconnect delays, doubling, with jitter
BATCH = 256  # queued Redis commands sent in one write
# Events of ours on CHANNEL that Redis may still be holding for its subscribers, in bytes. Redis
# closes a subscriber whose unread output passes 32 MB (or 8 MB for a minute: the default
# client-output-buffer-limit for pubsub), and what it held is lost for that process's members.
# Every subscriber is sent the same stream as our own, so while our echo is this far behind the
# publisher waits; acks wait with it, which slows senders down instead of dropping messages.
ECHO_LAG_BYTES = 1 << 20
BATCH_BYTES = 256 << 10  # a batch stops growing here: the lag stays under the two added
FORWARD_TIMEOUT = 10.0  # seconds a POST passed on to the process holding its session may take


# A name is claimed in Redis before a join is admitted, atomically for the whole cluster: two
# people joining as "alice" and "аlice" on two processes at the same moment cannot both get in.
# A claim is "<claimant> <worker> <nonce> <username>"; one by a process no longer registered
# (killed, and not yet reaped) does not count. Returns the claim in the way, or nil.
CLAIM_NAME = """
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
    local worker = string.match(v, '^%S+ (%S+) ')
    if worker and redis.call('ZSCORE', KEYS[2], worker) then return v end
  end
end
for i = 3, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[2]) end
return nil
"""
# Drop a claim, unless a newer one (the same identity, joined again) replaced it.
RELEASE_NAME = """
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 0
"""

# An upload's reservation, cluster-wide: add ours, and return what the other live processes'
# uploads in progress reserve in the same blob directory (a dead process's are dropped). The
# caller then reads the disk and checks the quota: a reservation is added before the disk is
# read, and released only after its blob is on disk, so no upload is ever missed by both.
RESERVE_UPLOAD = """
redis.call('HSET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], ARGV[3])
local others = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local worker = string.match(all[i], '^(%S+) ')
  if worker ~= ARGV[1] then
    if worker and redis.call('ZSCORE', KEYS[2], worker) then
      others = others + (tonumber(all[i + 1]) or 0)
    else
      redis.call('HDEL', KEYS[1], all[i])
    end
  end
end
return others
"""

RESET_UPLOADS = """
local mine = ARGV[1] .. ' '
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #mine) == mine then redis.call('HDEL', KEYS[1], field) end
end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], mine .. ARGV[i], ARGV[i + 1]) end
return 0
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RemoteConnection:
    """The connection of a member another process holds.

    It writes nothing, by design: that process hears every event of the room once on the
    channel and delivers to its own members; sending here would publish once per recipient.
    """

    remote = ""

    def __init__(self, worker: str):
        self.worker = worker

    def send(self, text: str) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass


def is_remote(participant: Participant) -> bool:
    return isinstance(participant.connection, RemoteConnection)


class Cluster:
    """Attach with Cluster(hub, config).start(); the Hub calls joined/left/rekeyed/relay."""

    def __init__(self, hub, config, *, port: int = 0, streams=None, inner_port: int | None = None):
        self.hub = hub
        self.streams = streams  # this process's HTTP-transport sessions (relay/stream.py)
        self.config = config
        self.url = config.cluster_redis_url
        self.id = events.worker_id(socket.gethostname(), os.getpid(), os.urandom(3).hex())
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "port": port, "inner": inner_port,
                     "worker": -1 if config.worker is None else config.worker, "started": now_ms()}
        self.local: dict[str, Participant] = {}  # sid -> our members (what our Redis hash holds)
        self.remote: dict[str, dict[str, Participant]] = {}  # worker -> sid -> its members here
        self.state = "connecting"  # "up" once registered, "down" while Redis is unreachable
        self.down_since: int | None = None
        self.problem = ""
        self.connected_at = 0.0
        self.relayed = 0
        self.forwarded = 0  # HTTP-transport POSTs this process passed on to the session's holder
        self.answered = 0  # and those it ran for sessions of its own that reached another process
        self.proxied = 0  # attachment requests passed on to the worker holding the uploader
        self.secret: str | None = None  # shared by the cluster's processes, from Redis
        self.grants: dict[str, Participant] = {}  # grant digest -> the remote member it belongs to
        self._inner: dict[str, int | None] = {}  # worker -> its loopback port, if on this machine
        self.peers: dict[str, float] = {}  # worker -> last heartbeat (ms), as of our last check
        self._queue: asyncio.Queue | None = None
        self._unechoed = 0  # bytes of our CHANNEL events published and not yet heard back
        self._echoed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client = None
        self._calls: dict[int, _Call] = {}  # POSTs passed on to the process holding their session
        self._call_ids = 0
        self.relays = StreamRelays(self)  # HTTP-transport streams resumed on another process
        self.transfers = Transfers(self)  # attachments another machine holds
        hub.cluster = self

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        if self.hub.blobs is not None:
            # Uploads finish in the store's worker threads: the release is queued on our loop.
            self.hub.blobs.released = lambda upload: loop.call_soon_threadsafe(self.release_upload, upload)

    async def stop(self) -> None:
        """Say goodbye (others drop our members at once instead of after DEAD_AFTER), then stop."""
        if self._task is None:
            return
        if self.state == "up" and self._client is not None:
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.publish(events.CHANNEL, events.event(self.id, "bye"))
                    pipe.zrem(events.WORKERS, self.id)
                    pipe.delete(events.members_key(self.id), events.info_key(self.id))
                    await asyncio.wait_for(pipe.execute(), 2.0)
            except (RedisError, OSError, asyncio.TimeoutError):
                pass
        # Cancel until it is done: a cancel can only be lost inside clean-up code, and a process
        # being stopped must stop.
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)
        if not self._task.cancelled() and self._task.exception() is not None:
            log.warning("cluster: the Redis link ended with %r", self._task.exception())
        self._task = None

    @property
    def up(self) -> bool:
        return self.state == "up"

    def status(self) -> dict[str, Any]:
        """For /healthz, the status page and `securechat status`."""
        # Unauthenticated readers see this: the state, never the URL, paths or error text.
        return {"redis": self.state, "workers": 1 + len(self.peers), "down_since": self.down_since}

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
                self._went_down(exc)
            except Exception:
                log.exception("cluster: unexpected failure; reconnecting to Redis")
                self._went_down(RuntimeError("unexpected failure"))
            else:
                delay = BACKOFF_FIRST
            if self.connected_at and time.monotonic() - self.connected_at > DEAD_AFTER:
                delay = BACKOFF_FIRST  # it was up a while: start the back-off again
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, BACKOFF_MAX)

    def _went_down(self, exc: BaseException) -> None:
        self.problem = str(exc) or type(exc).__name__
        if self.state != "down":
            self.down_since = now_ms()
            log.warning("cluster: Redis is unreachable (%s): serving this process's members only; "
                        "reconnecting", self.problem)
        self.state = "down"
        self._fail_queued(exc)
        self.relays.all_gone()

    def _fail_queued(self, exc: BaseException) -> None:
        for call in self._calls.values():
            if not call.future.done():
                call.future.set_exception(ConnectionError(str(exc)))
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if future is not None and not future.done():
                future.set_exception(ConnectionError(str(exc)))

    async def _session(self) -> None:
        """One connection's life: subscribe, register, then listen, publish and heartbeat until
        any of them fails."""
        client = aioredis.from_url(self.url, socket_connect_timeout=3, socket_timeout=5)
        # RESP2 for the subscriber: redis-py's RESP3 parser formats every pushed message into a
        # debug log line, logged or not: str() of a 17 KB record, 125 us a message at N = 50.
        listener = aioredis.from_url(self.url, socket_connect_timeout=3, socket_timeout=None, protocol=2)
        pubsub = listener.pubsub(ignore_subscribe_messages=True)
        publisher = _publisher_connection(self.url)
        tasks: list[asyncio.Task] = []
        try:
            await publisher.connect()
            await pubsub.subscribe(events.CHANNEL, events.HTTP_CHANNEL, events.inbox(self.id))
            # Subscribed first, then registered and read: an event sent meanwhile is not lost
            # (applying one twice is harmless).
            await self._register(client)
            self._client = client
            self.connected_at = time.monotonic()
            if self.state == "down":
                log.warning("cluster: Redis is back; members re-announced")
            self.state, self.down_since, self.problem = "up", None, ""
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(self._listen(pubsub)), loop.create_task(self._publish(publisher)),
                     loop.create_task(self._heartbeat(client))]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            self._client = None
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except BaseException:
                    pass
            for closing in (pubsub.aclose(), listener.aclose(), client.aclose(), publisher.disconnect()):
                try:
                    await asyncio.wait_for(closing, 1.0)
                except BaseException:
                    pass
            # stop()'s cancel may have arrived during the clean-up above and been swallowed
            # there; returning normally would send _run round again and stop() would wait for
            # ever (a worker that ignores SIGTERM). The request is still counted: honour it.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError

    async def _register(self, client) -> None:
        now = now_ms()
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(events.WORKERS, {self.id: now})
            pipe.delete(events.members_key(self.id))
            if self.local:
                pipe.hset(events.members_key(self.id),
                          mapping={sid: json.dumps(self._member(p)) for sid, p in self.local.items()})
            for p in self.local.values():
                claim = getattr(p, "claim", None)
                if claim:  # Redis may have restarted empty: our members hold their names again
                    pipe.hset(events.names_key(p.room), mapping=dict.fromkeys(events.name_fields(p.username), claim))
            if self.hub.blobs is not None:
                # Our reservations are exactly our uploads in progress again: Redis may have
                # restarted empty, or kept one whose release was lost while it was unreachable.
                pending = [str(x) for upload in self.hub.blobs.pending() for x in (upload.id, upload.size)]
                pipe.eval(RESET_UPLOADS, 1, events.uploads_key(self.hub.blobs.scope), self.id, *pending)
            pipe.hset(events.info_key(self.id), mapping=self._info())
            pipe.set(events.SECRET, secrets.token_urlsafe(32), nx=True)
            pipe.get(events.SECRET)
            pipe.zrange(events.WORKERS, 0, -1, withscores=True)
            results = await pipe.execute()
        self.secret = results[-2].decode()
        self.peers = {w.decode(): score for w, score in results[-1] if w.decode() != self.id}
        for worker, score in self.peers.items():
            if now - score <= DEAD_AFTER * 1000:
                self._sync_worker(worker, await client.hgetall(events.members_key(worker)))
        await client.publish(events.CHANNEL, events.event(self.id, "hello"))

    def _info(self) -> dict[str, Any]:
        figures = {"connections": len(self.hub.connections), "members": len(self.local), "relayed": self.relayed,
                   "forwarded": self.forwarded, "answered": self.answered,
                   "proxied": self.proxied, "heartbeat": now_ms()}
        return {key: json.dumps(value) for key, value in {**self.info, **figures}.items()}

    # -- out: the Hub's events ------------------------------------------------------------------

    def _send(self, command: tuple, future: asyncio.Future | None = None) -> None:
        """Queue one Redis command, as its arguments ("PUBLISH", channel, data), for the
        publisher, in order."""
        if self.state != "up" or self._queue is None:
            if future is not None:
                future.set_exception(ConnectionError("Redis is unreachable"))
            return  # membership is rewritten whole when we reconnect
        self._queue.put_nowait((command, future))

    def _member(self, participant: Participant) -> dict:
        data = events.member(participant)
        token = self.hub._tokens.get(participant)
        if token is not None:
            data["grant"] = events.grant_digest(token)
        if getattr(participant, "claim", None):
            data["claim"] = participant.claim
        return data

    async def claim_name(self, room: str, username: str, identity_key: str) -> str | None:
        """Claim a name in `room` for this identity before its join is admitted; the claim, or
        None when Redis is unreachable (then only this process's view of the room is checked).
        ProtocolError username_taken if someone else, on any process, holds a look-alike."""
        client = self._client
        if self.state != "up" or client is None:
            return None
        who = events.claimant(identity_key)
        claim = f"{who} {self.id} {secrets.token_hex(8)} {username}"
        try:
            held = await client.eval(CLAIM_NAME, 2, events.names_key(room), events.WORKERS, who, claim,
                                     *events.name_fields(username))
        except (RedisError, OSError, asyncio.TimeoutError):
            return None
        if held is not None:
            other = held.decode().split(" ", 3)[-1]
            if other.casefold() == username.casefold():
                raise ProtocolError("username_taken", f"{username!r} is already in the room")
            raise ProtocolError("username_taken", f"{username!r} looks like {other!r}, who is already in the room")
        return claim

    def release_name(self, room: str, username: str, claim: str | None) -> None:
        if claim:
            key, fields = events.names_key(room), events.name_fields(username)
            self._send(("EVAL", RELEASE_NAME, 1, key, claim, *fields))

    async def reserve_upload(self, upload) -> int | None:
        """Reserve an upload's bytes for the whole cluster: what the other processes' uploads in
        progress in the same blob directory reserve, or None when Redis is unreachable (then
        only this process's are counted)."""
        client, store = self._client, self.hub.blobs
        if self.state != "up" or client is None or store is None:
            return None
        try:
            return int(await client.eval(RESERVE_UPLOAD, 2, events.uploads_key(store.scope), events.WORKERS,
                                         self.id, upload.id, upload.size))
        except (RedisError, OSError, asyncio.TimeoutError):
            return None

    def release_upload(self, upload) -> None:
        """The upload finished (its blob is on disk) or ended: its reservation goes."""
        store = self.hub.blobs
        if store is not None:
            key, field = events.uploads_key(store.scope), f"{self.id} {upload.id}"
            self._send(("HDEL", key, field))

    def remote_grant(self, token: str) -> Participant | None:
        """The member of another process whose attachment capability this is, if any."""
        return self.grants.get(events.grant_digest(token)) if token else None

    async def inner_address(self, worker: str) -> int | None:
        """The loopback port where `worker` takes requests from the others, if it runs on this
        machine (None: on another one, or gone)."""
        if worker not in self._inner:
            client = self._client
            if client is None:
                raise ConnectionError("Redis is unreachable")
            host, inner = await client.hmget(events.info_key(worker), "host", "inner")
            try:
                same = host is not None and json.loads(host) == self.info["host"]
                self._inner[worker] = json.loads(inner) if same and inner is not None else None
            except ValueError:
                return None
        return self._inner[worker]

    def holds(self, participant: Participant) -> bool:
        """A member of this process (not one another process holds)."""
        return not is_remote(participant)

    def joined(self, participant: Participant, replaced: Participant | None) -> None:
        if replaced is not None and self.local.get(replaced.sid) is replaced:
            del self.local[replaced.sid]
            if replaced.sid != participant.sid:
                self._send(("HDEL", events.members_key(self.id), replaced.sid))
        self.local[participant.sid] = participant
        data = self._member(participant)
        self._send(("HSET", events.members_key(self.id), participant.sid, json.dumps(data)))
        self._send(("PUBLISH", events.CHANNEL, events.event(
            self.id, "joined", room=data["room"], m=data)))

    def left(self, participant: Participant, removed: bool) -> None:
        """A member of ours left; `removed` is False when a newer session had replaced it already."""
        if self.local.get(participant.sid) is not participant:
            return
        del self.local[participant.sid]
        self._send(("HDEL", events.members_key(self.id), participant.sid))
        self.release_name(participant.room, participant.username, getattr(participant, "claim", None))
        if removed:
            room = getattr(participant, "room", "")
            self._send(("PUBLISH", events.CHANNEL, events.event(
                self.id, "left", room=room, sid=participant.sid)))

    def rekeyed(self, old: str, participant: Participant) -> None:
        if self.local.get(old) is participant:
            del self.local[old]
        self.local[participant.sid] = participant
        data = self._member(participant)
        self._send(("HDEL", events.members_key(self.id), old))
        self._send(("HSET", events.members_key(self.id), participant.sid, json.dumps(data)))
        self._send(("PUBLISH", events.CHANNEL, events.event(
            self.id, "rekeyed", room=data["room"], old=old, m=data)))

    def check_relay(self, relay: Relay) -> None:
        """Before anything is logged: a message that must cross processes needs Redis."""
        if self.state != "up" and any(is_remote(recipient) for recipient, _ in relay.targets):
            raise ProtocolError(
                "server_error", "the link to the server's other processes (Redis) is down, and some "
                "recipients are on them; nothing was sent — try again in a moment", msg_id=relay.msg.id)

    def relay(self, relay: Relay) -> None:
        """Deliver to our own members, publish once for the room, and ack once Redis has it."""
        self.relayed += 1
        for recipient, text in relay.deliveries([target for target in relay.targets if not is_remote(target[0])]):
            recipient.connection.send(text)
        sender = relay.sender
        ack = protocol.frame("ack", id=relay.msg.id, recipients=len(relay.targets))
        if self.state != "up":
            # check_relay passed: every recipient is ours, so it has been delivered in full.
            sender.connection.send(ack)
            return
        future = asyncio.get_running_loop().create_future()
        self._send((_MSG, relay.log_line), future)

        def acknowledge(done: asyncio.Future) -> None:
            if done.cancelled() or done.exception() is not None:
                sender.connection.send(protocol.error_frame(ProtocolError(
                    "server_error", "the message reached only the recipients on this server process: the "
                    "link to the others (Redis) failed; it was not acknowledged", msg_id=relay.msg.id)))
            else:
                sender.connection.send(ack)

        future.add_done_callback(acknowledge)

    async def rotate_everywhere(self, keep: int | None) -> int:
        """Ask every other process to rotate its log now (`logs rotate`); how many heard it."""
        future = asyncio.get_running_loop().create_future()
        self._send(("PUBLISH", events.CHANNEL, events.event(self.id, "rotate", keep=keep)), future)
        heard = await future
        return max(0, int(heard) - 1)  # PUBLISH counts our own subscription too

    async def _publish(self, connection) -> None:
        """Send the queued commands in batches, in order, and settle each one's future with its
        reply (ResponseError for an error reply; ConnectionError for all when the link fails)."""
        queue = self._queue
        self._unechoed = 0  # a new subscription: nothing of ours is waiting in Redis for it
        while True:
            queued = [await queue.get()]
            size = _echo_bytes(queued[0][0])
            while not queue.empty() and len(queued) < BATCH and size < BATCH_BYTES:
                queued.append(queue.get_nowait())
                size += _echo_bytes(queued[-1][0])
            batch = _pack(self.id, queued)
            size = sum(echo for _, _, echo in batch)
            replies: list[Any] = []
            try:
                while self._unechoed > ECHO_LAG_BYTES:
                    self._echoed.clear()
                    await self._echoed.wait()
                self._unechoed += size
                await connection.send_packed_command(connection.pack_commands([args for args, _, _ in batch]),
                                                     check_health=False)
                for _ in batch:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as refused:  # read whole: the next reply is still in step
                        replies.append(refused)
            except BaseException as exc:
                # The commands whose replies were read keep them; the rest failed with the link.
                replies.extend(ConnectionError(str(exc) or type(exc).__name__) for _ in batch[len(replies):])
                raise
            finally:
                for (_, futures, _), reply in zip(batch, replies):
                    for future in futures:
                        _settle(future, reply)

    # -- in: the others' events -----------------------------------------------------------------

    async def _listen(self, pubsub) -> None:
        channel = events.CHANNEL.encode()
        # Redis sends our own publications back to us; each msgs event holds whole records.
        mine = events.own_prefix(self.id)
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            if message["channel"] != channel:
                self._http(message["data"])
                continue
            if message["data"].startswith(mine):
                self._unechoed -= len(message["data"])
                if self._unechoed <= ECHO_LAG_BYTES:
                    self._echoed.set()
                continue
            event = events.decode(message["data"])
            if event is None or event["w"] == self.id:
                continue
            try:
                self._apply(event)
            except Exception:
                log.exception("cluster: could not apply a %r event from %s", event.get("e"), event["w"])

    def _apply(self, event: dict) -> None:
        worker, kind = event["w"], event["e"]
        if kind == "msgs":
            # All of them in this turn of the loop, so each member's frames go out in one write.
            for line in event["lines"]:
                try:
                    self._remote_msg(line)
                except Exception:
                    log.exception("cluster: could not deliver a message from %s", worker)
        elif kind == "joined":
            self._add_remote(worker, event["m"])
        elif kind == "left":
            self._remove_remote(worker, event["sid"])
        elif kind == "rekeyed":
            self._rekey_remote(worker, event["old"], event["m"])
        elif kind == "hello":
            asyncio.get_running_loop().create_task(self._reload(worker))
        elif kind == "rotate":
            self._rotate(event.get("keep"))
        elif kind == "bye":
            self.peers.pop(worker, None)
            self._inner.pop(worker, None)
            self._drop_worker(worker)

    def _rotate(self, keep) -> None:
        from ..storage.ciphertext_log import LogError

        keep = keep if isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1 else None
        try:
            rotated = self.hub.log.rotate(keep=keep)
        except (LogError, OSError) as exc:
            log.error("cluster: could not rotate the ciphertext log as asked: %s", exc)
            return
        log.info("cluster: rotated the ciphertext log as asked (%s)", rotated.name if rotated else "it was empty")

    async def _reload(self, worker: str) -> None:
        client = self._client
        if client is None:
            return
        try:
            members = await client.hgetall(events.members_key(worker))
        except (RedisError, OSError, asyncio.TimeoutError):
            return  # the session notices too; the next register reads everything again
        self.peers.setdefault(worker, now_ms())
        self._sync_worker(worker, members)

    def _room(self, name: str) -> Room:
        return self.hub.rooms.get(name or None)

    def _admit(self, participant: Participant, name: str) -> tuple[Room, Participant | None]:
        """Into its room, through the room registry when it has one (rooms, issue 16: a room
        exists while anyone, here or in another process, is in it; its caps apply)."""
        rooms = self.hub.rooms
        if hasattr(rooms, "admits"):
            room, _ = rooms.admits(participant, now_ms())
            return room, rooms.add(room, participant)
        room = self._room(name)
        return room, room.add(participant)

    def _take_out(self, participant: Participant) -> Room | None:
        """Out of its room; the room it left, or None if it was no longer there."""
        rooms = self.hub.rooms
        if hasattr(rooms, "admits"):
            room = rooms.remove(participant)
            frames = getattr(self.hub, "_roster_frames", None)
            if room is not None and rooms.find(room.name) is not room and frames is not None:
                frames.pop(room.name, None)  # the room went with its last member (as Hub.leave does)
            return room
        room = self._room(getattr(participant, "room", ""))
        return room if room.remove(participant) else None

    def _locals(self, room: Room, but: Participant | None = None):
        return [p for p in room.members.values() if p is not but and not is_remote(p)]

    def _sync_worker(self, worker: str, members: dict) -> None:
        """Make our view of `worker`'s members what its Redis hash says."""
        wanted = {}
        for raw in members.values():
            try:
                data = json.loads(raw)
                wanted[data["p"]["sid"]] = data
            except (ValueError, KeyError, TypeError):
                continue
        for sid in list(self.remote.get(worker, {})):
            if sid not in wanted:
                self._remove_remote(worker, sid)
        for sid, data in wanted.items():
            if sid not in self.remote.get(worker, {}):
                self._add_remote(worker, data)

    def _add_remote(self, worker: str, data: dict) -> None:
        known = self.remote.setdefault(worker, {})
        sid = data["p"]["sid"]
        if sid in known:
            return
        participant = events.participant_from(data, RemoteConnection(worker))
        try:
            room, holder = self._admit(participant, data.get("room", ""))
        except ProtocolError as exc:
            # Two processes admitted look-alike names at the same moment: keep ours listed.
            log.warning("cluster: %s's member %r is not listed here: %s", worker, participant.username, exc.message)
            return
        if holder is not None:
            self._replaced(room, holder)
        known[sid] = participant
        participant.grant = data.get("grant")
        if participant.grant:
            self.grants[participant.grant] = participant
        # Announced like a local join: with the others of the moment, in one `joins` frame.
        announcer = self.hub.announcer
        announcer.welcomed(participant)
        announcer.joined(room, participant)

    def _replaced(self, room: Room, holder: Participant) -> None:
        """The same identity joined elsewhere: its older session here is gone (the joining
        process logged that leave)."""
        if is_remote(holder):
            self.remote.get(holder.connection.worker, {}).pop(holder.sid, None)
            self._forget_grant(holder)
        else:
            if self.local.get(holder.sid) is holder:
                del self.local[holder.sid]
                self._send(("HDEL", events.members_key(self.id), holder.sid))
            self.hub.revoke(holder)
            holder.connection.close(4001, "replaced by a newer session")
        self.hub.announcer.flush()
        self.hub.announcer.forget(holder)
        left = protocol.frame("left", **holder.as_sender())
        for other in self._locals(room):
            other.connection.send(left)

    def _remove_remote(self, worker: str, sid: str) -> Participant | None:
        participant = self.remote.get(worker, {}).pop(sid, None)
        if participant is None:
            return None
        self._forget_grant(participant)
        self.hub.announcer.flush()  # nobody hears a leave before the join it follows
        self.hub.announcer.forget(participant)
        room = self._take_out(participant)
        if room is not None:
            left = protocol.frame("left", **participant.as_sender())
            for other in self._locals(room):
                other.connection.send(left)
        return participant

    def _forget_grant(self, participant: Participant) -> None:
        grant = getattr(participant, "grant", None)
        if grant and self.grants.get(grant) is participant:
            del self.grants[grant]

    def _drop_worker(self, worker: str) -> list[Participant]:
        self.relays.worker_gone(worker)
        gone = [p for sid in list(self.remote.get(worker, {})) if (p := self._remove_remote(worker, sid))]
        self.remote.pop(worker, None)
        return gone

    def _rekey_remote(self, worker: str, old: str, data: dict) -> None:
        participant = self.remote.get(worker, {}).pop(old, None)
        if participant is None:
            self._add_remote(worker, data)
            return
        public = data["p"]
        room = self._room(data.get("room", ""))
        room.rekey(participant, sid=public["sid"], session_key=public["session_key"],
                   session_sig=public["session_sig"], wrapped_key_length=int(data["wkl"]),
                   issued=public["issued"], challenge=public["challenge"])
        self.remote[worker][participant.sid] = participant
        announce = protocol.frame("rekeyed", old=old, participant=participant.public())
        self.hub.announcer.flush()
        for other in self._locals(room, participant):
            other.connection.send(announce)

    def _remote_msg(self, record: dict) -> None:
        """Another process validated and logged this message: deliver it to our members of the
        room and remember it, so replay checks and `recipients` answers hold here too."""
        room = self._room(record["room"])
        sent_by = record["from"]
        sender = room.members.get(sent_by["sid"]) or Participant(
            sid=sent_by["sid"], username=sent_by["username"], fingerprint=sent_by["fingerprint"],
            identity_key="", session_key="", session_sig="", wrapped_key_length=0, joined=0)
        keys = record["keys"]
        msg = Msg(id=record["id"], ts=record["ts"], iv=record["iv"], ct=record["ct"], to=record["to"],
                  sig=record["sig"], keys=keys)
        members = room.members
        targets = [(members[sid], wrapped) for sid, wrapped in keys.items()
                   if sid in members and not is_remote(members[sid])]
        relay = Relay(sender=sender, msg=msg, log_line="", head=room.delivery_head(sender, msg), targets=targets,
                      recipients_json=protocol.encode(record["recipients"]))
        room.commit(relay, now_ms())
        self.hub.announcer.flush()  # a message never comes before its sender's join
        for recipient, text in relay.deliveries():
            recipient.connection.send(text)

    # -- the HTTP transport's POSTs, wherever they land ---------------------------------------

    async def forward_post(self, kind: str, token: str, headers: dict, body: bytes | None,
                           owner: str | None = None) -> tuple[str, dict | None]:
        """Run a POST for an HTTP session this process does not hold, in the one that does.

        Without `owner` every process hears the question and each answers (a yes with the
        outcome, or a no), so an unknown token is known to be unknown once all have said no,
        with no Redis key per session to keep or clean up after a crash. With `owner` (known
        from an earlier answer for this request) it goes to that process alone. Returns
        (owner, refusal or None); KeyError: no process holds it; ConnectionError: Redis is down.
        """
        self.forwarded += 1
        answer = await self.ask("post", self.next_call(), body, owner=owner, k=kind, t=token, h=headers)
        return answer.worker, answer.refusal

    def next_call(self) -> int:
        self._call_ids += 1
        return self._call_ids

    async def ask(self, kind: str, number: int, body: bytes | None = None, *, owner: str | None = None,
                  **fields) -> "Answer":
        """Ask the process holding something (every process, or `owner` alone) to act on it:
        the first yes (who, its refusal or None, its fields and body); KeyError once every
        process said no."""
        if self.state != "up":
            raise ConnectionError("Redis is unreachable")
        loop = asyncio.get_running_loop()
        call = self._calls[number] = _Call(loop.create_future())
        data = events.with_body(self.id, kind, body, r=number, **fields)
        channel = events.HTTP_CHANNEL if owner is None else events.inbox(owner)
        published = loop.create_future()
        self._send(("PUBLISH", channel, data), published)
        try:
            heard = int(await published)
            # On the shared channel our own subscription is among those that heard it.
            call.expect(heard - 1 if owner is None else heard)
            return await asyncio.wait_for(call.future, FORWARD_TIMEOUT)
        finally:
            self._calls.pop(number, None)

    def answer(self, asker: str, number: int, mine: bool, refusal: dict | None = None, body: bytes | None = None,
               **fields) -> None:
        """The answer to one of ask()'s questions, to the asker's inbox."""
        answer = events.with_body(self.id, "answer", body, r=number, mine=mine, refusal=refusal, **fields)
        self._send(("PUBLISH", events.inbox(asker), answer))

    def _http(self, data: bytes) -> None:
        decoded = events.decode_with_body(data)
        if decoded is None:
            return
        event, body = decoded
        if event["w"] == self.id:
            return
        try:
            if event["e"] == "post":
                self._answer_post(event, body)
            elif event["e"] == "answer":
                call = self._calls.get(event["r"])
                if call is not None:
                    call.answered(event, body)
            elif event["e"] in RELAY_EVENTS:
                self.relays.on_event(event, body)
            elif event["e"] in TRANSFER_EVENTS:
                self.transfers.on_event(event, body)
        except (KeyError, TypeError, ValueError):
            log.warning("cluster: ignored a malformed %r request from %s", event.get("e"), event["w"])

    def _answer_post(self, event: dict, body: bytes | None) -> None:
        from ..relay import stream

        token, kind = event["t"], event["k"]
        mine = (self.streams is not None and isinstance(token, str) and kind in stream.POSTS
                and self.streams.knows(token))
        refusal = None
        if mine:
            self.answered += 1
            refusal = stream.answer_post(self.streams, kind, token, dict(event["h"]), body)
        self.answer(event["w"], event["r"], mine, refusal)

    # -- heartbeats and the dead ----------------------------------------------------------------

    async def _heartbeat(self, client) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            await self._beat(client)

    async def _beat(self, client) -> None:
        now = now_ms()
        relays = self.relays.known()  # before Redis says who is alive: newer relays are not judged
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(events.WORKERS, {self.id: now})
            pipe.hset(events.info_key(self.id), mapping=self._info())
            pipe.zrange(events.WORKERS, 0, -1, withscores=True)
            added, _, workers = await pipe.execute()
        if added:
            # Someone took us for dead (Redis restarted, or we were cut off): register again.
            log.warning("cluster: this process had been dropped from Redis; re-announcing its members")
            await self._register(client)
            return
        self.peers = {w.decode(): score for w, score in workers if w.decode() != self.id}
        limit = now - DEAD_AFTER * 1000
        for worker, score in list(self.peers.items()):
            if score < limit:
                await self._reap(client, worker)
        self.relays.keep_only(self.peers, relays)
        for worker in list(self.remote):
            last = self.peers.get(worker)
            if last is None:
                # Not in Redis at all: it may not have re-registered yet after Redis came back.
                last = now - (time.monotonic() - self.connected_at) * 1000
            if last < limit:
                self._drop_worker(worker)

    async def _reap(self, client, worker: str) -> None:
        """A process stopped heartbeating: whoever removes it from Redis logs its members' leaves."""
        members = await client.hgetall(events.members_key(worker))
        if not await client.zrem(events.WORKERS, worker):
            return  # another process got there first
        await client.delete(events.members_key(worker), events.info_key(worker))
        self.peers.pop(worker, None)
        now = now_ms()
        log.warning("cluster: process %s stopped heartbeating; its %d member(s) left", worker, len(members))
        for raw in members.values():
            try:
                data = json.loads(raw)
                gone = events.participant_from(data, None)
            except (ValueError, KeyError, TypeError):
                continue
            self.hub.log.append(self._room(data.get("room", "")).membership_record("leave", gone, now))
            self.release_name(data.get("room", ""), gone.username, data.get("claim"))
        self._drop_worker(worker)

    async def workers(self) -> list[dict[str, Any]]:
        """Every live process with its figures (for the admin API)."""
        client = self._client
        if client is None:
            raise ConnectionError("Redis is unreachable")
        try:
            # Bounded: `securechat status` waits 3 s for the answer, and Redis going away mid-call
            # must read as "unreachable" there, not as a server that did not answer.
            return await asyncio.wait_for(self._workers(client), 1.0)
        except (RedisError, asyncio.TimeoutError) as exc:
            raise ConnectionError("Redis is unreachable") from exc

    async def _workers(self, client) -> list[dict[str, Any]]:
        found = []
        for worker, score in await client.zrange(events.WORKERS, 0, -1, withscores=True):
            info = await client.hgetall(events.info_key(worker.decode()))
            entry = {"id": worker.decode(), "heartbeat": int(score)}
            for key, value in info.items():
                try:
                    entry[key.decode()] = json.loads(value)
                except ValueError:
                    continue
            if entry["id"] == self.id:  # ours as of now, not as of the last heartbeat
                entry.update(self.this_process())
            found.append(entry)
        return found

    def this_process(self) -> dict[str, Any]:
        """This process's entry of workers(), its figures as of now (known without Redis too)."""
        return {"id": self.id, **{key: json.loads(value) for key, value in self._info().items()}}


def _publisher_connection(url: str):
    """The connection _publish sends on, used directly rather than through a pipeline.

    A pipeline per batch took a pooled connection, ran the batch under redis-py's retry policy
    and its observability hooks, and wrapped each write in asyncio.wait_for (a task and a timer):
    157-340 us of CPU for one PUBLISH round trip at a light load, where every message is a batch
    of its own, against 159-167 us on the connection itself (docs/PERFORMANCE.md). The retry was
    also wrong here: a batch whose reply was lost would be sent again, and every PUBLISH in it
    delivered twice. No socket timeout either: the heartbeat's
    own connection has one, and its failure ends the session, which fails everything queued.
    """
    pool = aioredis.ConnectionPool.from_url(url, socket_connect_timeout=3, socket_timeout=None, protocol=2,
                                            retry=Retry(NoBackoff(), 0))
    return pool.make_connection()


# A queued message to publish: (_MSG, its log line). Consecutive ones go out as one msgs event.
_MSG = "msg"


def _echo_bytes(args: tuple) -> int:
    """About how many bytes of a queued command come back to our own subscription (to bound a
    batch; _pack counts them exactly)."""
    if args[0] is _MSG:
        return len(args[1])
    return len(args[2]) if args[0] == "PUBLISH" and args[1] == events.CHANNEL else 0


def _pack(worker: str, queued: list[tuple]) -> list[tuple]:
    """The commands to send for a batch taken off the queue, in order: each run of messages one
    PUBLISH of a msgs event, every other command as it is. Each is (args, the futures its reply
    settles, bytes of it that will come back to our own subscription).

    A receiving process writes what it heard in one event to each of its members in one write
    (relay/ws.py coalesces per loop turn). One event per message gave it one or two frames per
    write, where the process holding the sender wrote several: its socket writes per delivered
    frame were 4x the one process's at N = 250 (docs/PERFORMANCE.md)."""
    batch: list[tuple] = []
    for is_msg, run in itertools.groupby(queued, key=lambda entry: entry[0][0] is _MSG):
        if is_msg:
            run = list(run)
            data = events.msgs_event(worker, [args[1] for args, _ in run]).encode()
            batch.append((("PUBLISH", events.CHANNEL, data), [future for _, future in run], len(data)))
            continue
        for args, future in run:
            if args[0] == "PUBLISH" and args[1] == events.CHANNEL:
                data = args[2].encode() if isinstance(args[2], str) else args[2]
                batch.append(((*args[:2], data), [future], len(data)))
            else:
                batch.append((args, [future], 0))
    return batch


def _settle(future: asyncio.Future | None, reply: Any) -> None:
    if future is None or future.done():
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)


class Answer(NamedTuple):
    worker: str  # the process that answered yes
    refusal: dict | None
    fields: dict  # the whole answer event
    body: bytes | None


class _Call:
    """A POST passed on: done at the first yes, or a KeyError once every listener said no."""

    def __init__(self, future: asyncio.Future):
        self.future = future
        self.noes = 0
        self.listeners: int | None = None  # how many heard the question, once PUBLISH says

    def expect(self, listeners: int) -> None:
        self.listeners = listeners
        self._settle()

    def answered(self, event: dict, body: bytes | None) -> None:
        if self.future.done():
            return
        if event["mine"]:
            refusal = event.get("refusal")
            self.future.set_result(Answer(event["w"], dict(refusal) if refusal is not None else None, event, body))
        else:
            self.noes += 1
            self._settle()

    def _settle(self) -> None:
        if not self.future.done() and self.listeners is not None and self.noes >= self.listeners:
            self.future.set_exception(KeyError("no process holds this session"))
