"""The running server's shared state and the steps of each client action.

The Hub ties the pure parts (protocol, rooms) to the I/O parts (the ciphertext log and each
member's connection). Handlers stay a few lines: they parse a frame and call one Hub method.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from ..config import Config
from ..storage.blobs import BlobStore
from ..storage.ciphertext_log import CiphertextLog
from ..refusals import Throttled
from . import protocol
from .admission import Pool, address_keys
from .announce import JoinAnnouncer
from .heap import HeapTrimmer
from .limits import SlidingWindow, TokenBucket
from .protocol import Join, Msg, ProtocolError, Rekey
from .room import Participant, Room, Rooms

log = logging.getLogger("securechat")


class Connection(Protocol):
    remote: str
    # The room its opening request named (the transport checked the name); "" or absent means
    # the default room. Fixed for the life of the connection: one connection, one room.
    room: str

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


# Close code for a session that opened but never joined within limits.join_timeout.
JOIN_TIMEOUT = 4003
# Roster answers per member: a burst of ROSTER_BURST, then one every ROSTER_EVERY seconds. A
# 23-byte request is answered with ~700 bytes per member (~180 kB at 256): at the frame rate
# limit (10/s) one connection could make the server send 1.8 MB/s. A request over the budget is
# not refused (a client asks after stale_recipients and needs the answer): it is answered once
# the budget allows, and requests meanwhile share that one answer.
ROSTER_BURST, ROSTER_EVERY = 3, 2.0
# How often the join and leave paths walk the join window to drop idle addresses (Hub.tidy).
TIDY_EVERY = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def log_membership(event: str, participant: Participant) -> None:
    """One line per join and leave at -v (debug), so an admin can watch who comes and goes.
    Metadata only, what the roster shows anyway: name, the fingerprint's first groups, address."""
    if log.isEnabledFor(logging.DEBUG):
        prefix = " ".join(participant.fingerprint[i:i + 4] for i in range(0, 16, 4))
        log.debug("%s %s (fingerprint %s …) from %s", participant.username, event, prefix, participant.remote)


@dataclass(frozen=True)
class Grant:
    """What a session's attachment capability (§10.2) allows: its own room's blobs, while joined.

    Checks go by `room`, so named rooms need nothing more here.
    """

    token: str
    participant: Participant
    room: str


@dataclass
class _RosterBudget:
    bucket: TokenBucket
    pending: asyncio.TimerHandle | None = None


class Hub:
    def __init__(self, config: Config, ciphertext_log: CiphertextLog, blobs: BlobStore | None = None):
        self.config = config
        self.log = ciphertext_log
        self.blobs = blobs
        self.grants: dict[str, Grant] = {}
        self._tokens: dict[Participant, str] = {}
        self.rooms = Rooms(
            config.room,
            max_participants=config.max_participants,
            max_clock_skew_ms=int(config.max_clock_skew * 1000),
            max_rooms=config.max_rooms,
            max_rooms_per_address=config.max_rooms_per_address,
        )
        # Every open session with the keys it is counted under (relay/admission.py).
        self.connections: dict[Connection, tuple] = {}
        self.sessions = Pool("sessions", config.max_connections, config.max_connections_per_address)
        # Sessions that have not joined yet: a smaller pool, each with a join deadline.
        self.unjoined = Pool("unjoined", config.max_unjoined, config.max_unjoined_per_address)
        self._deadlines: dict[Connection, asyncio.TimerHandle] = {}
        # The challenge each connection must sign into its next session statement (§4).
        self.challenges: dict[Connection, str] = {}
        self.joins = SlidingWindow(config.joins_per_minute, 60.0)
        self._roster_frames: dict[str, tuple[Room, int, str]] = {}  # room name -> (room, revision, encoded frame)
        self._roster_budgets: dict[Participant, _RosterBudget] = {}
        self._fan_out_depth = 0
        self._deferred_leaves: list[Participant] = []
        # A full disk fails every append: one line a minute per kind, not one per frame.
        self._log_failed = Throttled(log)
        self._tidied = time.monotonic()
        self.closing = False  # set by shutdown(): frames that still arrive are dropped
        # `joined` frames, coalesced; flushed before any other frame reaches a room (announce.py).
        self.announcer = JoinAnnouncer(guard=self._fanning_out)
        # What a burst of joins allocated goes back to the OS once it is over (heap.py).
        self.heap = HeapTrimmer()
        self.started = now_ms()
        # The link to the cluster's other processes (securechat.cluster.bridge.Cluster sets it
        # when [cluster] redis_url is configured); None is a single process.
        self.cluster = None

    # -- admission -------------------------------------------------------------------------
    # Every transport calls refusal() before it accepts a session, connected() once it is open,
    # join() for its join frames and disconnected() exactly once at the end.

    def refusal(self, remote: str) -> tuple[int, str] | None:
        """Why a new session from `remote` may not open now, as (HTTP status, message)."""
        keys = address_keys(remote)
        why = self.sessions.full_for(keys)
        if why == "total":
            return 503, "the server has too many connections; try again later"
        if why == "address":
            return 429, "too many connections from your address"
        why = self.unjoined.full_for(keys)
        if why == "total":
            return 503, "too many connections are waiting to join; try again in a few seconds"
        if why == "address":
            return 429, "too many connections from your address are waiting to join"
        return None

    def connected(self, connection: Connection) -> None:
        """A session opened: it waits in the pre-join pool until it joins or its deadline passes."""
        keys = address_keys(connection.remote)
        self.connections[connection] = keys
        self.sessions.take(keys)
        self.unjoined.take(keys)
        self._deadlines[connection] = asyncio.get_running_loop().call_later(
            self.config.join_timeout, self._join_deadline, connection)

    def _join_deadline(self, connection: Connection) -> None:
        if self._deadlines.pop(connection, None) is not None:
            self.unjoined.give_back(self.connections[connection])
            connection.close(JOIN_TIMEOUT, "did not join in time")

    def _left_pre_join_pool(self, connection: Connection) -> None:
        deadline = self._deadlines.pop(connection, None)
        if deadline is not None:
            deadline.cancel()
            self.unjoined.give_back(self.connections[connection])

    def disconnected(self, connection: Connection) -> None:
        self.challenges.pop(connection, None)
        keys = self.connections.get(connection)
        if keys is None:
            return
        self._left_pre_join_pool(connection)
        del self.connections[connection]
        self.sessions.give_back(keys)

    def limits(self) -> dict:
        return {
            "max_frame_bytes": self.config.max_frame_bytes,
            "max_recipients": min(self.config.max_participants, protocol.crypto.MAX_RECIPIENTS),
            "max_clock_skew_ms": int(self.config.max_clock_skew * 1000),
            "rate_per_second": self.config.rate_per_second,
            "rate_burst": self.config.rate_burst,
        }

    def _challenge(self, connection: Connection) -> str:
        """A fresh challenge for this connection's next session statement."""
        challenge = self.challenges[connection] = os.urandom(16).hex()
        return challenge

    def _verify_session(self, connection: Connection, room, **statement):
        return protocol.verify_session(
            room=room.name, **statement, expected_challenge=self.challenges.get(connection),
            now_ms=now_ms(), max_skew_ms=int(self.config.max_clock_skew * 1000),
        )

    def tidy(self, now: float | None = None) -> None:
        """Forget what no rule needs any more: addresses that have not joined for a minute
        (the join window's keys; a walk over all of them, so at most every TIDY_EVERY) and
        replay ids whose timestamp could no longer pass (cheap: only what expired is touched).
        Before, both were kept for good: every identity that had sent a message stayed in
        memory after it left, ~150 bytes per message it sent."""
        at = now_ms()
        for room in self.rooms:
            room.forget_old(at)
        walk = now is not None  # a given time (a test's) walks the join window now
        now = time.monotonic() if now is None else now
        if walk or now - self._tidied >= TIDY_EVERY:
            self._tidied = now
            self.joins.forget_idle(now)

    def join(self, connection: Connection, join: Join, claim: str | None = None) -> Participant:
        """`claim`: the name's claim in the cluster (Cluster.claim_name), released when it leaves."""
        self.tidy()
        if not self.joins.allow(connection.remote, time.monotonic()):
            raise ProtocolError("rate_limited", "too many joins from your address; wait a minute")
        name = self.room_of(connection)
        verified = self._verify_session(
            connection, self.rooms.get(name), username=join.username, identity_key=join.identity_key,
            session_key=join.session_key, issued=join.issued, challenge=join.challenge,
            stream=join.stream, session_sig=join.session_sig,
        )
        participant = Participant(
            sid=verified.sid, username=join.username, fingerprint=verified.fingerprint,
            identity_key=join.identity_key, session_key=join.session_key,
            session_sig=join.session_sig, wrapped_key_length=verified.wrapped_key_length,
            joined=now_ms(), issued=join.issued, challenge=join.challenge, stream=join.stream,
            remote=connection.remote, connection=connection, room=name,
        )
        if claim is not None:
            participant.claim = claim
        # Everything that can fail comes before anything changes: the room's checks (and the
        # room caps), then the log (a full disk, a file-size limit). A join that cannot be
        # recorded does not happen: before, the member was added and announced and then the
        # write failed, so the socket never learnt it had joined and the name stayed taken by a
        # member nobody could remove.
        room, replaced = self.rooms.admits(participant, now_ms())
        at = now_ms()
        records = [room.membership_record("join", participant, at)]
        if replaced is not None:
            records.insert(0, room.membership_record("leave", replaced, at))
        try:
            self.log.append_lines([protocol.encode(record) for record in records])
        except OSError as exc:
            self._log_failed.note("join", logging.ERROR, "could not record a join in the ciphertext log, "
                                  "so it was refused: %s", exc)
            raise ProtocolError("server_error", "the server could not record your join; try again later") from None
        with self._fanning_out():
            self.rooms.add(room, participant)  # a first join makes the room
            if replaced is not None:
                self.revoke(replaced)
                replaced.connection.close(4001, "replaced by a newer session")
            extra = {}
            if self.blobs is not None:
                extra["attachments"] = {"token": self._issue(participant, room.name),
                                        "max_bytes": self.config.attachments_max_bytes}
            self._left_pre_join_pool(connection)
            # welcome first: the joiner's first frame answers its join, and its roster already
            # lacks the session it replaced, so only the others hear that one left.
            welcome = protocol.frame(
                "welcome", room=room.name, you=participant.public(),
                server_time=now_ms(), limits=self.limits(), challenge=self._challenge(connection), **extra,
            )
            connection.send(f'{welcome[:-1]},"participants":{room.roster_json()}}}')
            self.announcer.welcomed(participant)
            if replaced is not None:
                self.announcer.flush()
                self.announcer.forget(replaced)
                self._tell_left(room, replaced, skip=participant)
            self.announcer.joined(room, participant)  # to the others, with this moment's other joins
            log_membership("joined", participant)
            self.heap.joined()
            if self.cluster is not None:
                self.cluster.joined(participant, replaced)
        return participant

    def rekey(self, participant: Participant, rekey: Rekey) -> None:
        """Rotate a member's session key (§4): everyone swaps it in place, nobody sees a leave."""
        room = self.rooms.get(participant.room)
        connection = participant.connection
        # Same identity, name and stream: only the session key and its statement change.
        verified = self._verify_session(
            connection, room, username=participant.username, identity_key=participant.identity_key,
            session_key=rekey.session_key, issued=rekey.issued, challenge=rekey.challenge,
            stream=participant.stream, session_sig=rekey.session_sig,
        )
        self.announcer.flush()
        old = room.rekey(participant, sid=verified.sid, session_key=rekey.session_key,
                         session_sig=rekey.session_sig, wrapped_key_length=verified.wrapped_key_length,
                         issued=rekey.issued, challenge=rekey.challenge)
        with self._fanning_out():
            connection.send(protocol.frame("rekeyed", old=old, participant=participant.public(),
                                           challenge=self._challenge(connection)))
            announce = protocol.frame("rekeyed", old=old, participant=participant.public())
            for other in room.others(participant):  # a list: a snapshot of the members
                other.connection.send(announce)
            if self.cluster is not None:
                self.cluster.rekeyed(old, participant)

    def room_of(self, connection: Connection) -> str:
        """The room a connection belongs to: the one its opening request named, else the default."""
        return getattr(connection, "room", None) or self.rooms.default

    def hello(self, connection: Connection) -> None:
        """The first frame on every socket: which room this is, before the client signs a join."""
        connection.send(protocol.frame(
            "hello", room=self.room_of(connection), server_time=now_ms(), limits=self.limits(),
            challenge=self._challenge(connection),
        ))

    def recipients(self, participant: Participant, msg_id: str) -> None:
        """A recent message's full recipient list, which the client checks against its `to`."""
        listed = self.rooms.get(participant.room).recipient_list(msg_id)
        if listed is None:
            raise ProtocolError("unknown_message", "the server no longer has this message's recipient list",
                                msg_id=msg_id)
        with self._fanning_out():
            participant.connection.send(
                f'{{"v":{protocol.VERSION},"type":"recipients","id":"{msg_id}","sids":{listed}}}')

    def leave(self, participant: Participant) -> None:
        """The member is gone (left, closed, dropped): it leaves its room whatever else fails;
        the room goes with its last member.

        Called from inside a fan-out (a send found a stalled reader), the leave waits until
        that fan-out is done, so no loop over the members sees them change under it.
        """
        if self._fan_out_depth:
            if participant not in self._deferred_leaves:
                self._deferred_leaves.append(participant)
            return
        self.tidy()
        with self._fanning_out():
            self.revoke(participant)
            self.announcer.flush()  # the others hear of its join before they hear it left
            self.announcer.forget(participant)
            room = self.rooms.remove(participant)
            if self.cluster is not None:
                self.cluster.left(participant, room is not None)
            if room is None:
                return  # already gone, or replaced (its leave was recorded with the join)
            if self.rooms.find(room.name) is not room:
                self._roster_frames.pop(room.name, None)  # the room went with its last member
            self._tell_left(room, participant)
            try:
                self.log.append(room.membership_record("leave", participant, now_ms()))
            except OSError as exc:
                # The member has left all the same: a leave is a fact, not a request.
                self._log_failed.note("leave", logging.ERROR, "could not record %s's leave in the ciphertext "
                                      "log (they have left all the same): %s", participant.username, exc)

    def shutdown(self, code: int, reason: str) -> None:
        """The server is stopping: every member leaves now, while the log is still open, and
        every connection is closed. A transport's close that arrives later (a peer that never
        answers the close frame) then finds nothing left to do; before, its leave ran against
        the closed log and ended in "Uncaught exception GET /ws ... the ciphertext log is closed".
        """
        self.closing = True
        self.heap.stop()
        for participant in self.rooms.participants():
            if self.cluster is None or self.cluster.holds(participant):  # not those of other processes
                self.leave(participant)
        for connection in list(self.connections):
            self.disconnected(connection)
            connection.close(code, reason)

    @contextlib.contextmanager
    def _fanning_out(self):
        """Marks a stretch that sends to members; leaves asked for meanwhile run at its end."""
        self._fan_out_depth += 1
        try:
            yield
        finally:
            self._fan_out_depth -= 1
            if not self._fan_out_depth:
                while self._deferred_leaves:
                    self.leave(self._deferred_leaves.pop(0))

    # -- attachment capabilities (§10.2) ---------------------------------------------------

    def _issue(self, participant: Participant, room: str) -> str:
        token = secrets.token_urlsafe(32)
        self.grants[token] = Grant(token, participant, room)
        self._tokens[participant] = token
        return token

    def grant(self, token: str) -> Grant | None:
        """The live grant of an attachment capability; None once its session has ended."""
        return self.grants.get(token) if token else None

    def revoke(self, participant: Participant) -> None:
        token = self._tokens.pop(participant, None)
        if token is not None:
            del self.grants[token]
            if self.blobs is not None:
                self.blobs.abort_owner(token)

    def _attachment_refs(self, room_name: str, msg: Msg) -> list[dict] | None:
        """The log's references for a message's blobs; bad_attachment unless all are here."""
        if not msg.attachments:
            return None
        refs = []
        for blob_id in msg.attachments:
            info = self.blobs.readable(blob_id, room_name) if self.blobs is not None else None
            if info is None:
                raise ProtocolError("bad_attachment", f"attachment {blob_id[:12]}… is not on this server "
                                    "(never uploaded, or already deleted); upload it again", msg_id=msg.id)
            refs.append({"id": blob_id, "size": info.size})
        return refs

    def _tell_left(self, room: Room, participant: Participant, skip: Participant | None = None) -> None:
        """Tell the others in its room a member left (its record is the caller's business)."""
        self._forget_roster_budget(participant)
        log_membership("left", participant)
        if self.closing:
            return  # everyone is leaving at once and will hear the close (1001) instead
        left = protocol.frame("left", **participant.as_sender())
        # A snapshot: a send can find a stalled reader, whose leave must not change this loop.
        for other in list(room.members.values()):
            if other is not skip:
                other.connection.send(left)

    def roster(self, participant: Participant) -> None:
        """Answer a roster request now, or once the member's roster budget allows (see ROSTER_EVERY)."""
        now = time.monotonic()
        budget = self._roster_budgets.get(participant)
        if budget is None:
            budget = self._roster_budgets[participant] = _RosterBudget(TokenBucket(1 / ROSTER_EVERY, ROSTER_BURST, now))
        if budget.pending is not None:
            return  # an answer is already scheduled; it will carry the roster of its moment
        if budget.bucket.take(now):
            self.announcer.flush()
            with self._fanning_out():
                participant.connection.send(self.roster_frame(self.rooms.get(participant.room)))
            return
        budget.pending = asyncio.get_running_loop().call_later(
            budget.bucket.wait(now), self._deferred_roster, participant)

    def _deferred_roster(self, participant: Participant) -> None:
        budget = self._roster_budgets.get(participant)
        if budget is None:
            return  # left meanwhile
        budget.pending = None
        budget.bucket.take(time.monotonic())
        self.announcer.flush()
        with self._fanning_out():
            participant.connection.send(self.roster_frame(self.rooms.get(participant.room)))

    def roster_frame(self, room: Room | None = None) -> str:
        """A room's roster frame (None: the default room's), encoded once per change of membership.

        Cached per Room object: a room that emptied and was made again is a new object, whose
        revisions start again (its entry is dropped with it, see leave)."""
        room = room if room is not None else self.rooms.get()
        cached = self._roster_frames.get(room.name)
        if cached is None or cached[0] is not room or cached[1] != room.revision:
            cached = (room, room.revision, protocol.frame("roster", room=room.name, participants=room.roster()))
            self._roster_frames[room.name] = cached
        return cached[2]

    def _forget_roster_budget(self, participant: Participant) -> None:
        budget = self._roster_budgets.pop(participant, None)
        if budget is not None and budget.pending is not None:
            budget.pending.cancel()

    def relay(self, sender: Participant, msg: Msg) -> None:
        room = self.rooms.get(sender.room)
        received = now_ms()
        attachments = self._attachment_refs(room.name, msg)
        relay = room.prepare(sender, msg, received, attachments)
        if self.cluster is not None:
            self.cluster.check_relay(relay)
        try:
            self.log.append_line(relay.log_line)
        except OSError as exc:
            self._log_failed.note("relay", logging.ERROR, "could not append a message to the ciphertext log, "
                                  "so it was not relayed: %s", exc)
            raise ProtocolError(
                "server_error", "the server could not store the message; nothing was sent", msg_id=msg.id
            ) from None
        room.commit(relay, received)
        if attachments:
            self.blobs.mark_referenced(msg.attachments)
        self.announcer.flush()  # nobody reads a message from a member it has not heard join
        with self._fanning_out():
            if self.cluster is not None:
                self.cluster.relay(relay)  # our members now; the others' once Redis has it, then the ack
                return
            for recipient, text in relay.deliveries():
                recipient.connection.send(text)
            sender.connection.send(protocol.frame("ack", id=msg.id, recipients=len(relay.targets)))
