"""ChatSocket: the WebSocket transport. One socket per participant, its frames go to a Session.

Only what is WebSocket-specific lives here: the origin check at the handshake, admission
before the upgrade, socket options, and how a send to a stalled or vanished peer fails. The
pipeline every transport shares (budget, parse, dispatch) is relay/session.py.
"""

from __future__ import annotations

from tornado.iostream import StreamBufferFullError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..web.http_security import SecureHeadersMixin, same_origin
from . import roomname
from .hub import Hub
from .session import TOO_SLOW, Session


class ChatSocket(SecureHeadersMixin, WebSocketHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.session: Session | None = None
        self.room = ""  # the default room, unless ?room=<name> names another

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

    def on_message(self, message: str | bytes) -> None:
        self.session.receive(message)

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
