"""One participant's frames through the Hub, whatever transport carries them.

A transport (ws.py's WebSocket, stream.py's HTTP stream) owns the bytes: it accepts a
connection, hands each client frame to `Session.receive`, and tells the session when the peer
stalled or went away. Everything between — the frame budget, strikes for rejected frames,
parsing, dispatch to the Hub — lives here once, so both transports apply the same validation
and the same limits, and the Hub never learns which transport a participant uses.

Bad input never escapes as a traceback: a ProtocolError becomes an `error` frame, repeated abuse
closes the connection with 1008, and only genuine server faults reach the server log.
"""

from __future__ import annotations

import asyncio
import logging
import time

from . import protocol
from .hub import Connection, Hub
from .limits import Strikes, TokenBucket
from .protocol import Join, Leave, Msg, ProtocolError, RecipientsRequest, Rekey, RosterRequest

log = logging.getLogger("securechat")

POLICY_VIOLATION = 1008
TOO_SLOW = 4002
MAX_RATE_LIMITED_IN_A_ROW = 60
# Frames a session may send while its join waits for Redis (a few ms): more is a flood.
MAX_WAITING_FRAMES = 64


class Session:
    """The per-connection pipeline: budget -> parse -> dispatch, and the member it joined as."""

    def __init__(self, hub: Hub, connection: Connection):
        self.hub = hub
        self.connection = connection
        self.participant = None
        self.bucket = TokenBucket(hub.config.rate_per_second, hub.config.rate_burst, time.monotonic())
        self.strikes = Strikes()
        self.rate_limited_in_a_row = 0
        # While a join waits for the cluster to claim its name: the frames that arrive meanwhile,
        # handled in order once it is decided (None: no join is waiting).
        self._waiting: list | None = None
        self._gone = False

    def open(self) -> None:
        """The transport accepted the connection: count it, and speak first (hello)."""
        self.hub.connected(self.connection)
        self.hub.hello(self.connection)

    def receive(self, message: str | bytes) -> None:
        if self.hub.closing:
            return  # the server is shutting down: this session has already left (Hub.shutdown)
        if self._waiting is not None:
            if len(self._waiting) >= MAX_WAITING_FRAMES:
                self.connection.close(POLICY_VIOLATION, "sending too fast")
                return
            self._waiting.append(message)
            return
        try:
            self._handle(message)
        except ProtocolError as error:
            self.reject(error)
        except Exception:
            log.exception("internal error while handling a frame from %s", self.connection.remote)
            self.reject(ProtocolError("server_error", "the server failed to handle this frame"))

    def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            raise ProtocolError("binary_unsupported", "send JSON text frames, not binary frames")
        if not self.bucket.take(time.monotonic()):
            self.rate_limited_in_a_row += 1
            if self.rate_limited_in_a_row >= MAX_RATE_LIMITED_IN_A_ROW:
                self.connection.close(POLICY_VIOLATION, "sending too fast")
                return
            # The id (if any) lets the sender fail that very message with a Retry (§6.2).
            raise ProtocolError("rate_limited", "slow down: this frame was dropped, send it again later",
                                msg_id=protocol.peek_msg_id(message))
        self.rate_limited_in_a_row = 0
        self._dispatch(protocol.parse_frame(message, max_recipients=self.hub.config.max_participants))

    def _dispatch(self, frame) -> None:
        if isinstance(frame, Join):
            if self.participant is not None:
                raise ProtocolError("already_joined", "this connection has already joined")
            cluster = self.hub.cluster
            if cluster is not None and cluster.up:
                self._waiting = []
                asyncio.get_running_loop().create_task(self._join_in_cluster(frame))
                return
            self.participant = self.hub.join(self.connection, frame)
        elif self.participant is None:
            raise ProtocolError("not_joined", "join the room first")
        elif isinstance(frame, Msg):
            self.hub.relay(self.participant, frame)
        elif isinstance(frame, RecipientsRequest):
            self.hub.recipients(self.participant, frame.id)
        elif isinstance(frame, Rekey):
            self.hub.rekey(self.participant, frame)
        elif isinstance(frame, RosterRequest):
            self.hub.roster(self.participant)
        elif isinstance(frame, Leave):
            self.connection.close(1000, "left the room")

    async def _join_in_cluster(self, frame: Join) -> None:
        """Claim the name for the whole cluster first (atomic in Redis), then join as usual."""
        cluster = self.hub.cluster
        room = self.hub.room_of(self.connection)
        claim = None
        try:
            claim = await cluster.claim_name(room, frame.username, frame.identity_key)
            if self._gone or self.hub.closing:
                cluster.release_name(room, frame.username, claim)
                return
            self.participant = self.hub.join(self.connection, frame, claim=claim)
        except ProtocolError as error:
            if claim is not None:
                cluster.release_name(room, frame.username, claim)
            self.reject(error)
        except Exception:
            log.exception("internal error while handling a join from %s", self.connection.remote)
            if claim is not None:
                cluster.release_name(room, frame.username, claim)
            self.reject(ProtocolError("server_error", "the server failed to handle this frame"))
        finally:
            waiting, self._waiting = self._waiting, None
            for message in waiting or ():
                if self._gone:
                    break
                self.receive(message)

    def reject(self, error: ProtocolError) -> None:
        """Answer with an `error` frame; too many rejections in a short time close the connection."""
        self.connection.send(protocol.error_frame(error))
        self.strike()

    def strike(self) -> None:
        if self.strikes.add(time.monotonic()):
            self.connection.close(POLICY_VIOLATION, "too many rejected frames")

    def stalled(self) -> None:
        """The peer stopped reading: it leaves the room now; the transport then closes with 4002."""
        log.warning("closing a connection from %s that stopped reading", self.connection.remote)
        self._leave()

    def closed(self) -> None:
        """The connection is gone for good, whoever closed it."""
        self._gone = True
        self.hub.disconnected(self.connection)
        self._leave()

    def _leave(self) -> None:
        if self.participant is not None:
            self.hub.leave(self.participant)
            self.participant = None
