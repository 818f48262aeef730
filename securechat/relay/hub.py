"""The running server's shared state and the steps of each client action.

The Hub ties the pure parts (protocol, rooms) to the I/O parts (the ciphertext log and each
member's connection). Handlers stay a few lines: they parse a frame and call one Hub method.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from ..config import Config
from ..storage.ciphertext_log import CiphertextLog
from . import protocol
from .limits import SlidingWindow
from .protocol import Join, Msg, ProtocolError
from .room import Participant, Rooms

log = logging.getLogger("securechat")


class Connection(Protocol):
    remote: str

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def log_membership(event: str, participant: Participant) -> None:
    """One line per join and leave at -v (debug), so an admin can watch who comes and goes.
    Metadata only, what the roster shows anyway: name, the fingerprint's first groups, address."""
    if log.isEnabledFor(logging.DEBUG):
        prefix = " ".join(participant.fingerprint[i:i + 4] for i in range(0, 16, 4))
        log.debug("%s %s (fingerprint %s …) from %s", participant.username, event, prefix, participant.remote)


class Hub:
    def __init__(self, config: Config, ciphertext_log: CiphertextLog):
        self.config = config
        self.log = ciphertext_log
        self.rooms = Rooms(
            config.room,
            max_participants=config.max_participants,
            max_clock_skew_ms=int(config.max_clock_skew * 1000),
        )
        self.connections: set[Connection] = set()
        self.per_address: dict[str, int] = {}
        self.joins = SlidingWindow(config.joins_per_minute, 60.0)
        self.started = now_ms()

    # -- admission -------------------------------------------------------------------------

    def refusal(self, remote: str) -> tuple[int, str] | None:
        """Why a new WebSocket from `remote` may not open now, as (HTTP status, message)."""
        if len(self.connections) >= self.config.max_connections:
            return 503, "the server has too many connections; try again later"
        if self.per_address.get(remote, 0) >= self.config.max_connections_per_address:
            return 429, "too many connections from your address"
        return None

    def connected(self, connection: Connection) -> None:
        self.connections.add(connection)
        self.per_address[connection.remote] = self.per_address.get(connection.remote, 0) + 1

    def disconnected(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            left = self.per_address.pop(connection.remote, 1) - 1
            if left:
                self.per_address[connection.remote] = left

    def limits(self) -> dict:
        return {
            "max_frame_bytes": self.config.max_frame_bytes,
            "max_recipients": self.config.max_participants,
            "max_clock_skew_ms": int(self.config.max_clock_skew * 1000),
            "rate_per_second": self.config.rate_per_second,
            "rate_burst": self.config.rate_burst,
        }

    def join(self, connection: Connection, join: Join) -> Participant:
        if not self.joins.allow(connection.remote, time.monotonic()):
            raise ProtocolError("rate_limited", "too many joins from your address; wait a minute")
        room = self.rooms.get()
        verified = protocol.verify_join(join, room.name)
        participant = Participant(
            sid=verified.sid, username=join.username, fingerprint=verified.fingerprint,
            identity_key=join.identity_key, session_key=join.session_key,
            session_sig=join.session_sig, wrapped_key_length=verified.wrapped_key_length,
            joined=now_ms(), remote=connection.remote, connection=connection,
        )
        replaced = room.add(participant)
        if replaced is not None:
            replaced.connection.close(4001, "replaced by a newer session")
        # welcome first: the joiner's first frame answers its join, and its roster already
        # lacks the session it replaced, so only the others hear that one left.
        connection.send(protocol.frame(
            "welcome", room=room.name, you=participant.public(), participants=room.roster(),
            server_time=now_ms(), limits=self.limits(),
        ))
        if replaced is not None:
            self._announce_leave(replaced, skip=participant)
        joined = protocol.frame("joined", participant=participant.public())
        for other in room.others(participant):
            other.connection.send(joined)
        self.log.append(room.membership_record("join", participant, now_ms()))
        log_membership("joined", participant)
        return participant

    def hello(self, connection: Connection) -> None:
        """The first frame on every socket: which room this is, before the client signs a join."""
        connection.send(protocol.frame(
            "hello", room=self.rooms.default, server_time=now_ms(), limits=self.limits()
        ))

    def leave(self, participant: Participant) -> None:
        if self.rooms.get().remove(participant):
            self._announce_leave(participant)

    def _announce_leave(self, participant: Participant, skip: Participant | None = None) -> None:
        room = self.rooms.get()
        left = protocol.frame("left", **participant.as_sender())
        for other in room.members.values():
            if other is skip:
                continue
            other.connection.send(left)
        self.log.append(room.membership_record("leave", participant, now_ms()))
        log_membership("left", participant)

    def roster(self, participant: Participant) -> None:
        room = self.rooms.get()
        participant.connection.send(protocol.frame("roster", room=room.name, participants=room.roster()))

    def relay(self, sender: Participant, msg: Msg) -> None:
        room = self.rooms.get()
        received = now_ms()
        relay = room.prepare(sender, msg, received)
        try:
            self.log.append_line(relay.log_line)
        except OSError as exc:
            log.error("could not append to the ciphertext log: %s", exc)
            raise ProtocolError(
                "server_error", "the server could not store the message; nothing was sent", msg_id=msg.id
            ) from None
        room.commit(relay, received)
        for recipient, text in relay.deliveries():
            recipient.connection.send(text)
        sender.connection.send(protocol.frame("ack", id=msg.id, recipients=len(relay.targets)))
