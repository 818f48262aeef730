"""ChatSocket: one WebSocket per participant. Parse, check the budget, hand the frame to the Hub.

Bad input never escapes as a traceback: a ProtocolError becomes an `error` frame, repeated abuse
closes the connection with 1008, and only genuine server faults reach the server log.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from tornado.iostream import StreamBufferFullError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..web.http_security import SecureHeadersMixin
from . import protocol
from .hub import Hub
from .limits import Strikes, TokenBucket
from .protocol import Join, Leave, Msg, ProtocolError, RosterRequest

log = logging.getLogger("securechat")

POLICY_VIOLATION = 1008
TOO_SLOW = 4002
MAX_RATE_LIMITED_IN_A_ROW = 60


class ChatSocket(SecureHeadersMixin, WebSocketHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.participant = None

    @property
    def remote(self) -> str:
        return self.request.remote_ip or ""

    def check_origin(self, origin: str) -> bool:
        allowed = self.hub.config.allowed_origins
        if origin in allowed:
            return True
        # Same origin means same scheme-less host:port as the request (what Tornado checks too).
        return urlsplit(origin).netloc.lower() == self.request.host.lower()

    async def get(self, *args, **kwargs) -> None:
        refusal = self.hub.refusal(self.remote)
        if refusal is not None:
            status, message = refusal
            self.set_status(status)
            self.set_header("Retry-After", "30")
            self.finish({"error": message})
            return
        await super().get(*args, **kwargs)

    def open(self) -> None:
        # Chat frames are small and latency-bound: without TCP_NODELAY, Nagle + delayed ACKs
        # held deliveries back by 40-400 ms under load (bench: p99 at N=100).
        self.set_nodelay(True)
        # Past this many unsent bytes Tornado raises instead of buffering: see send().
        self.ws_connection.stream.max_write_buffer_size = self.hub.config.max_outbound_bytes
        self.bucket = TokenBucket(self.hub.config.rate_per_second, self.hub.config.rate_burst, time.monotonic())
        self.strikes = Strikes()
        self.rate_limited_in_a_row = 0
        self.hub.connected(self)
        self.hub.hello(self)

    def on_message(self, message: str | bytes) -> None:
        try:
            self._handle(message)
        except ProtocolError as error:
            self._reject(error)
        except Exception:
            log.exception("internal error while handling a frame from %s", self.remote)
            self._reject(ProtocolError("server_error", "the server failed to handle this frame"))

    def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            raise ProtocolError("binary_unsupported", "send JSON text frames, not binary frames")
        if not self.bucket.take(time.monotonic()):
            self.rate_limited_in_a_row += 1
            if self.rate_limited_in_a_row >= MAX_RATE_LIMITED_IN_A_ROW:
                self.close(POLICY_VIOLATION, "sending too fast")
                return
            raise ProtocolError("rate_limited", "slow down: this frame was dropped, send it again later")
        self.rate_limited_in_a_row = 0
        self._dispatch(protocol.parse_frame(message, max_recipients=self.hub.config.max_participants))

    def _dispatch(self, frame) -> None:
        if isinstance(frame, Join):
            if self.participant is not None:
                raise ProtocolError("already_joined", "this connection has already joined")
            self.participant = self.hub.join(self, frame)
        elif self.participant is None:
            raise ProtocolError("not_joined", "join the room first")
        elif isinstance(frame, Msg):
            self.hub.relay(self.participant, frame)
        elif isinstance(frame, RosterRequest):
            self.hub.roster(self.participant)
        elif isinstance(frame, Leave):
            self.close(1000, "left the room")

    def _reject(self, error: ProtocolError) -> None:
        self.send(protocol.error_frame(error))
        if self.strikes.add(time.monotonic()):
            self.close(POLICY_VIOLATION, "too many rejected frames")

    def send(self, text: str) -> None:
        try:
            # The returned future is dropped on purpose (a done-callback per delivery cost ~13 %
            # of the relay's CPU); server.quiet_closed_writes keeps vanished peers out of the log.
            self.write_message(text)
        except WebSocketClosedError:
            pass  # on_close removes this member; the others must not notice
        except StreamBufferFullError:
            self._drop_slow_reader()

    def _drop_slow_reader(self) -> None:
        """A reader this far behind is stalled: free its buffer instead of growing it."""
        log.warning("closing a connection from %s that stopped reading", self.remote)
        if self.participant is not None:
            self.hub.leave(self.participant)
            self.participant = None
        self.ws_connection.stream.max_write_buffer_size = None  # room for the close frame
        self.close(TOO_SLOW, "too slow: stopped reading messages")

    def on_close(self) -> None:
        self.hub.disconnected(self)
        if self.participant is not None:
            self.hub.leave(self.participant)
            self.participant = None
