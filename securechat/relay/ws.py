"""ChatSocket: the WebSocket transport. One socket per participant, its frames go to a Session.

Only what is WebSocket-specific lives here: the origin check at the handshake, admission
before the upgrade, socket options, and how a send to a stalled or vanished peer fails. The
pipeline every transport shares (budget, parse, dispatch) is relay/session.py.
"""

from __future__ import annotations

import asyncio
import struct
import time

from tornado.iostream import StreamBufferFullError, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol13

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
# Frames sent to one socket during one turn of the event loop go out in one write (see send);
# past this many queued bytes they go at once instead (a welcome listing a full room is ~230 KB).
FLUSH_BYTES = 64 * 1024
_FIN_TEXT = 0x81


def text_frame_header(length: int) -> bytes:
    """RFC 6455 §5.2 header of an unmasked, unfragmented text frame (a server's) of `length` bytes."""
    if length < 126:
        return bytes((_FIN_TEXT, length))
    if length <= 0xFFFF:
        return struct.pack("!BBH", _FIN_TEXT, 126, length)
    return struct.pack("!BBQ", _FIN_TEXT, 127, length)


class _InOrder(WebSocketProtocol13):
    """Tornado's protocol, except that a control frame (a pong, a ping, the close) first
    flushes the text frames ChatSocket.send queued before it: a pong then still says that
    every answer to what came before the ping has been written, as it did when each frame was
    written at once (tests/security/test_fuzz.py reads up to its pong)."""

    def _write_frame(self, fin: bool, opcode: int, data: bytes, flags: int = 0):
        if opcode & 0x8:
            self.handler._flush()
        return super()._write_frame(fin, opcode, data, flags)


class ChatSocket(SecureHeadersMixin, WebSocketHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.session: Session | None = None
        self.room = ""  # the default room, unless ?room=<name> names another
        self._turn_started = self._last_frame = 0.0
        self._out: list[bytes] = []  # frames (header, payload, ...) waiting for this turn's end
        self._out_bytes = 0
        self._coalesce = False  # set in open() when no extension changes the frames

    @property
    def remote(self) -> str:
        return self.request.remote_ip or ""

    def check_origin(self, origin: str) -> bool:
        return same_origin(origin, self.request.host, self.hub.config.allowed_origins)

    def get(self, *args, **kwargs):
        # Not a coroutine of its own: Tornado awaits what get() returns, and the upgrade's
        # coroutine stays suspended for as long as the socket is open, so a wrapper's frame
        # would be kept per connection (~350 bytes of an idle one).
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
        return super().get(*args, **kwargs)

    def open(self) -> None:
        # Chat frames are small and latency-bound: without TCP_NODELAY, Nagle + delayed ACKs
        # held deliveries back by 40-400 ms under load (bench: p99 at N=100).
        self.set_nodelay(True)
        # Past this many unsent bytes Tornado raises instead of buffering: see send().
        self.ws_connection.stream.max_write_buffer_size = self.hub.config.max_outbound_bytes
        # Without permessage-deflate a server frame is a header and the payload, which send()
        # can build itself (get_compression_options is None unless a subclass enables it).
        self._coalesce = isinstance(self.ws_connection, _InOrder) and self.get_compression_options() is None
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
        """Queue one frame for this socket; every frame queued during this turn of the event
        loop goes out at its end in one write. Writing each frame on its own cost a socket
        write (a system call), a Future and a Tornado task per frame, and under load a member
        gets several frames per turn: this was the largest part of the relay's CPU per message.
        Order is kept: every text frame to this socket goes through the queue, and a control
        frame (_InOrder) or a full queue (FLUSH_BYTES) flushes it first."""
        if not self._coalesce:
            return self._write_now(text)
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return  # on_close removes this member; the others must not notice
        payload = text.encode("utf-8")
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out += (text_frame_header(len(payload)), payload)
        self._out_bytes += len(payload)
        if self._out_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out, self._out_bytes = [], 0
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return
        try:
            # Tornado's write() future is dropped, as write_message's was (it retrieves its own
            # exception); a vanished peer raises here at once or ends in on_close.
            connection.stream.write(data)
        except StreamClosedError:
            pass
        except StreamBufferFullError:
            self._drop_slow_reader()

    def get_websocket_protocol(self):
        protocol = super().get_websocket_protocol()
        if type(protocol) is WebSocketProtocol13:
            protocol.__class__ = _InOrder  # the same object, control frames after queued text
        return protocol

    def _write_now(self, text: str) -> None:
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
        self._out, self._out_bytes = [], 0  # a stalled reader gets nothing more but the close
        self.session.stalled()
        self.ws_connection.stream.max_write_buffer_size = None  # room for the close frame
        self.close(TOO_SLOW, "too slow: stopped reading messages")

    def on_close(self) -> None:
        if self.session is not None:
            self.session.closed()
