"""ChatSocket: the WebSocket transport. One socket per participant, its frames go to a Session.

Only what is WebSocket-specific lives here: the origin check at the handshake, admission
before the upgrade, socket options, and how a send to a stalled or vanished peer fails. The
pipeline every transport shares (budget, parse, dispatch) is relay/session.py.
"""

from __future__ import annotations

import asyncio
import time

from tornado.iostream import StreamBufferFullError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..web.http_security import SecureHeadersMixin, same_origin
from . import roomname
from .hub import Hub
from .session import TOO_SLOW, Session

# Tornado hands a handler every frame already in its socket's buffer without returning to the
# event loop in between. A member who keeps its socket full (a fast sender, the bench's closed
# loop) then held the loop for as long as it kept sending: 400-500 ms at a time under load, with
# every other member's frames and every timer (pings, join deadlines) waiting behind it. After
# this much time spent on one socket's frames in a row, on_message yields one loop turn.
TURN_BUDGET = 0.002
# A gap this long between two frames means the loop ran something else in between.
_NEW_TURN_GAP = 0.0005


class ChatSocket(SecureHeadersMixin, WebSocketHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.session: Session | None = None
        self.room = ""  # the default room, unless ?room=<name> names another
        self._turn_started = self._last_frame = 0.0

    @property
    def remote(self) -> str:
        return self.request.remote_ip or ""

    def check_origin(self, origin: str) -> bool:
        return same_origin(origin, self.request.host, self.hub.config.allowed_origins)

    async def get(self, *args, **kwargs) -> None:
        room = self.get_query_argument("room", None)
        if room is not None:
            why = roomname.problem(room)
            if why is not None:
                self.set_status(400)
                self.finish({"error": why})
                return
            self.room = room
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
        self.session = Session(self.hub, self)
        self.session.open()

    def on_message(self, message: str | bytes):
        start = time.monotonic()
        if start - self._last_frame > _NEW_TURN_GAP:
            self._turn_started = start
        self.session.receive(message)
        self._last_frame = end = time.monotonic()
        if end - self._turn_started >= TURN_BUDGET:
            return self._yield_turn()  # Tornado awaits it before it reads this socket's next frame
        return None

    async def _yield_turn(self) -> None:
        await asyncio.sleep(0)
        self._turn_started = self._last_frame = time.monotonic()

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
        self.session.stalled()
        self.ws_connection.stream.max_write_buffer_size = None  # room for the close frame
        self.close(TOO_SLOW, "too slow: stopped reading messages")

    def on_close(self) -> None:
        if self.session is not None:
            self.session.closed()
