"""The HTTP transport: frames down one Server-Sent Events response, up as JSON POSTs.

WebKit (every browser on iOS and iPadOS, Safari on macOS) refuses `wss://` to a certificate the
user accepted by exception, yet serves `fetch` and `EventSource` to the same origin. For those
browsers docs/PROTOCOL.md §1.2 carries the very same frames over plain HTTP(S) requests:

    GET  /stream[?room=<name>]                a new session in that room (default: the default
                                              room): a text/event-stream response
    GET  /stream?session=<id>&last=<n>        that session again, replaying every frame after n
    POST /stream/send    one client frame as the body, exactly what a WebSocket text frame holds
    POST /stream/ack     "I have every frame up to n": the server may forget them
    POST /stream/close   the client is done

A StreamSession is what the Hub sees: a Connection (send, close, remote) like a ChatSocket,
with the same relay/session.py pipeline behind it, so frame validation, the rate budget,
strikes and admission are the WebSocket's own. It outlives the HTTP requests that carry it:
a stream that drops is resumed with nothing lost, because every frame stays in a bounded
buffer until the client acknowledges it; that buffer is also how a reader that stopped is
found and dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections import OrderedDict, deque

import tornado.web
from tornado.ioloop import PeriodicCallback
from tornado.iostream import StreamBufferFullError

from ..web.http_security import SecureHeadersMixin, same_origin
from ..web.limits import allow_body
from . import roomname, sse
from .hub import Hub
from .session import POLICY_VIOLATION, TOO_SLOW, Session

log = logging.getLogger("securechat")

TOKEN_HEADER = "Securechat-Token"
SEQ_HEADER = "Securechat-Seq"
ACK_HEADER = "Securechat-Ack"
CLIENT_CLOSED = 1000
FRAME_TOO_LARGE = 1009
ACK_BYTES_SHARE = 16  # clients ack every max_outbound_bytes / 16 received (256 KiB by default)
TOO_SLOW_REASON = "too slow: stopped reading messages"
TIMED_OUT = 4004  # (4003 is the Hub's: did not join in time)
# ack and close carry no frame: their body is `{}`, and anything much larger is not a client.
SMALL_BODY_BYTES = 1024
# Closed sessions are remembered this long (and at most this many) so that a late request
# learns why its session ended (replaced, too slow, ...) instead of "unknown".
TOMBSTONE_SECONDS = 120.0
MAX_TOMBSTONES = 4096
_SECRET = re.compile(r"[A-Za-z0-9_-]{22}\Z")  # secrets.token_urlsafe(16): 128 random bits
_COUNT = re.compile(r"(0|[1-9][0-9]{0,15})\Z")



class RequestProblem(Exception):
    """A request refused before it reaches the session: an HTTP status and a §1.2 error code."""

    def __init__(self, status: int, error: str, message: str, **extra):
        super().__init__(message)
        self.status, self.error, self.message, self.extra = status, error, message, extra

    def body(self) -> dict:
        return {"error": self.error, "message": self.message, **self.extra}


def close_event(code: int, reason: str) -> bytes:
    return sse.event(json.dumps({"code": code, "reason": reason}), name="close")


def parse_count(text: str | None, what: str) -> int | None:
    """A non-negative decimal from a header or query value; None when absent."""
    if text is None:
        return None
    if not _COUNT.match(text):
        raise RequestProblem(400, "bad_request", f"{what} must be a non-negative integer")
    return int(text)



async def ask_holder(question):
    """Await a question to the process holding a session (cluster): no such session anywhere
    is 404, a holder that cannot be reached is 503, as the client's own answer."""
    try:
        return await question
    except KeyError:
        raise RequestProblem(404, "unknown_session", "no such session: it ended long ago, the server "
                             "restarted, or it never existed") from None
    except (ConnectionError, asyncio.TimeoutError):
        raise RequestProblem(503, "unavailable", "the server process holding this session cannot be "
                             "reached now (Redis is down or it is overloaded)") from None


def refusal_of_holder(refusal: dict | None) -> None:
    """The holding process's refusal, raised here as ours."""
    if refusal is not None:
        status, error, message = refusal.pop("status"), refusal.pop("error"), refusal.pop("message")
        raise RequestProblem(status, error, message, **refusal)


class StreamSession:
    """One participant on the HTTP transport: the Hub's Connection, whichever request is open."""

    def __init__(self, sessions: "StreamSessions", remote: str, room: str = ""):
        self.sessions = sessions
        config = sessions.hub.config
        self.id = secrets.token_urlsafe(16)  # names the session in a resume URL
        self.token = secrets.token_urlsafe(16)  # authorises its POSTs; never in a URL
        self.remote = remote
        self.room = room  # named by the request that opened it; "" is the default room
        self.limit = config.max_outbound_bytes
        self.loop = asyncio.get_running_loop()
        self.pipeline = Session(sessions.hub, self)
        self.seq = 0  # id of the last frame sent
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.unacked_bytes = 0
        self.acked = 0
        self.received = 0  # Securechat-Seq of the last client frame handled
        self.stream: StreamHandler | None = None
        self.pending: list[bytes] = []
        now = time.monotonic()
        self.heard = now
        self.pinged = now
        self.ended: tuple[int, str] | None = None

    # -- the Hub's Connection --------------------------------------------------------------

    def send(self, text: str) -> None:
        if self.ended is not None:
            return
        self.seq += 1
        event = sse.event(text, id=self.seq)
        self.unacked.append((self.seq, event))
        self.unacked_bytes += len(event)
        if self.unacked_bytes > self.limit:
            self.drop_slow_reader()
        elif self.stream is not None:
            self._queue(event)

    def close(self, code: int, reason: str) -> None:
        if self.ended is not None:
            return
        self.ended = (code, reason)
        self.sessions.forget(self)
        stream, self.stream = self.stream, None
        if stream is not None:
            self._flush_to(stream)  # what was sent before the close, e.g. the error behind a 1008
            stream.end(close_event(code, reason))
        self.pending.clear()
        self.unacked.clear()
        self.unacked_bytes = 0
        self.pipeline.closed()

    # -- what the handlers call ------------------------------------------------------------

    def start(self, stream: "StreamHandler") -> None:
        self.attach(stream, None)
        self.pipeline.open()  # admission bookkeeping and hello, frame 1 of the stream

    def attach(self, stream: "StreamHandler", last: int | None) -> None:
        """Carry the session on `stream` from frame `last + 1` on (a new stream: from 1)."""
        if last is not None:
            self.acknowledge(last)
        previous, self.stream = self.stream, stream
        if previous is not None:
            previous.end(b"")  # superseded: the client gave up on it, it may be half dead
        self.pending.clear()
        self.heard = time.monotonic()
        stream.write_raw(sse.event(json.dumps(self.greeting()), name="session"))
        if self.unacked:
            stream.write_raw(b"".join(event for _, event in self.unacked))

    def greeting(self) -> dict:
        config = self.sessions.hub.config
        return {
            "session": self.id, "token": self.token,
            "ping_ms": int(config.ping_interval * 1000), "timeout_ms": int(config.ping_timeout * 1000),
            # Small enough that a busy room keeps little per reader (at most this much waits
            # for an ack in steady state), large enough that acks cost a POST per 256 KiB.
            "ack_bytes": max(1, self.limit // ACK_BYTES_SHARE),
        }

    def detach(self, stream: "StreamHandler") -> None:
        if self.stream is stream:
            self.stream = None
            self.pending.clear()
            # The client gets the whole liveness window from now to resume.
            self.heard = time.monotonic()

    def acknowledge(self, last: int) -> None:
        if last > self.seq:
            raise RequestProblem(400, "bad_request", f"event {last} was never sent (the last is {self.seq})")
        if last < self.acked:
            raise RequestProblem(409, "cannot_resume",
                                 f"events up to {self.acked} were acknowledged and are gone")
        self.acked = last
        while self.unacked and self.unacked[0][0] <= last:
            self.unacked_bytes -= len(self.unacked.popleft()[1])

    def ping(self, now: float) -> None:
        self.pinged = now
        self._queue(sse.PING)

    # -- writing ---------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        # Everything sent during one turn of the event loop leaves in one write: a fan-out of
        # many messages costs this stream one chunk, not one per frame.
        self.pending.append(data)
        if len(self.pending) == 1:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self.stream is not None:
            self._flush_to(self.stream)

    def _flush_to(self, stream: "StreamHandler") -> None:
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        try:
            stream.write_raw(data)
        except StreamBufferFullError:
            self.drop_slow_reader()

    def drop_slow_reader(self) -> None:
        """Unacknowledged frames past max_outbound_bytes: the reader stopped (or lies in its
        acks and stopped reading the socket): free the memory instead of growing it."""
        self.pending.clear()
        self.pipeline.stalled()
        if self.stream is not None:
            self.stream.unlimit()  # room for the close event
        self.close(TOO_SLOW, TOO_SLOW_REASON)


class StreamSessions:
    """Every live HTTP session by id and by token, and the memory of recently closed ones."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.by_id: dict[str, StreamSession] = {}
        self.by_token: dict[str, StreamSession] = {}
        self.tombstones: OrderedDict[str, tuple[float, int, str]] = OrderedDict()
        self.ticker: PeriodicCallback | None = None

    def create(self, remote: str, room: str = "") -> StreamSession:
        session = StreamSession(self, remote, room)
        self.by_id[session.id] = session
        self.by_token[session.token] = session
        if self.ticker is None:
            tick = min(1.0, self.hub.config.ping_interval / 4)
            self.ticker = PeriodicCallback(self.tick, tick * 1000)
            self.ticker.start()
        return session

    def forget(self, session: StreamSession) -> None:
        self.by_id.pop(session.id, None)
        self.by_token.pop(session.token, None)
        code, reason = session.ended
        expires = time.monotonic() + TOMBSTONE_SECONDS
        for key in (session.id, session.token):
            self.tombstones[key] = (expires, code, reason)
        while len(self.tombstones) > 2 * MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)
        if not self.by_id and self.ticker is not None:
            self.ticker.stop()
            self.ticker = None

    def knows(self, key: str) -> bool:
        """A live session of ours, or one that ended here lately (its tombstone answers)."""
        if key in self.by_token or key in self.by_id:
            return True
        ended = self.tombstones.get(key)
        return ended is not None and ended[0] > time.monotonic()

    def find(self, key: str, table: dict[str, StreamSession]) -> StreamSession:
        session = table.get(key)
        if session is not None:
            return session
        ended = self.tombstones.get(key)
        if ended is not None and ended[0] > time.monotonic():
            raise RequestProblem(410, "session_closed", f"this session has ended: {ended[2]}",
                                 code=ended[1], reason=ended[2])
        raise RequestProblem(404, "unknown_session",
                             "no such session: it ended long ago, the server restarted, or it never existed")

    def tick(self) -> None:
        """Pings keep proxies and phones from cutting an idle stream and prompt the client's
        ack; a session the server has not heard from for ping_interval + ping_timeout is dead,
        like a WebSocket that misses its pong."""
        config = self.hub.config
        now = time.monotonic()
        silence = config.ping_interval + config.ping_timeout
        for session in list(self.by_id.values()):
            if now - session.heard > silence:
                session.close(TIMED_OUT, "timed out: no request from the client")
            elif session.stream is not None and now - session.pinged >= config.ping_interval:
                session.ping(now)
        while self.tombstones:
            key, (expires, _, _) = next(iter(self.tombstones.items()))
            if expires > now:
                break
            del self.tombstones[key]


class _Base(SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, sessions: StreamSessions) -> None:
        self.sessions = sessions
        self.hub = sessions.hub

    @property
    def remote(self) -> str:
        return self.request.remote_ip or ""

    def check_request_origin(self, required: bool) -> None:
        origin = self.request.headers.get("Origin")
        allowed = self.hub.config.allowed_origins
        if origin is None:
            if required:
                raise RequestProblem(403, "bad_origin", "requests must carry the page's Origin")
        elif not same_origin(origin, self.request.host, allowed):
            raise RequestProblem(403, "bad_origin", "requests from another origin are refused")
        # A no-cors subresource (an <img> on another site pointing here) sends no Origin, but
        # a current browser says where it comes from: without this, any page could spend its
        # visitor's per-address session budget.
        site = self.request.headers.get("Sec-Fetch-Site")
        if site in ("cross-site", "same-site") and origin not in allowed:
            raise RequestProblem(403, "bad_origin", "requests from another site are refused")

    def refuse(self, problem: RequestProblem) -> None:
        self.set_status(problem.status)
        self.set_header("Cache-Control", "no-store")
        if problem.status in (429, 503):
            self.set_header("Retry-After", "30")
        self.finish(problem.body())


class StreamHandler(_Base):
    """GET /stream: a new session, or an existing one resumed; frames arrive as SSE events."""

    def initialize(self, sessions: StreamSessions) -> None:
        super().initialize(sessions)
        self.session: StreamSession | None = None
        self.ended: asyncio.Future | None = None
        self.relay_number: int | None = None  # a session another process holds: its relay
        self.relay_buffer: list[bytes | None] | None = None

    async def get(self) -> None:
        try:
            self.check_request_origin(required=False)
            resume = self.get_query_argument("session", None)
            last = parse_count(self.get_query_argument("last", None), "last")
            if resume is None:
                if last is not None or "Last-Event-ID" in self.request.headers:
                    raise RequestProblem(400, "bad_request",
                                         "resume with ?session=<id>&last=<n> (PROTOCOL.md §1.2)")
                room = self.get_query_argument("room", None)
                why = roomname.problem(room) if room is not None else None
                if why is not None:
                    raise RequestProblem(400, "bad_room", why)
                refusal = self.hub.refusal(self.remote)
                if refusal is not None:
                    raise RequestProblem(refusal[0], "refused", refusal[1])
                session = None
            else:
                if last is None:
                    raise RequestProblem(400, "bad_request", "a resume needs last=<the last event id seen>")
                if not _SECRET.match(resume):
                    raise RequestProblem(404, "unknown_session", "no such session")
                try:
                    if self.hub.cluster is not None and not self.sessions.knows(resume):
                        # Another process may hold it: it carries on there, its frames relayed here.
                        await self.resume_elsewhere(resume, last)
                        return
                    session = self.sessions.find(resume, self.sessions.by_id)
                except RequestProblem as problem:
                    if problem.status != 410:
                        raise
                    # Closed while the stream was away: say why on the stream itself, where an
                    # EventSource can read it (it never sees an error response's body).
                    self.open_stream()
                    self.write_raw(close_event(problem.extra["code"], problem.extra["reason"]))
                    self.finish()
                    return
        except RequestProblem as problem:
            self.refuse(problem)
            return
        self.open_stream()
        self.ended = asyncio.get_running_loop().create_future()
        if session is None:
            session = self.sessions.create(self.remote, self.get_query_argument("room", None) or "")
            self.session = session
            session.start(self)
        else:
            try:
                session.attach(self, last)
            except RequestProblem as problem:
                # Asked for frames it had acknowledged (and we forgot), or never sent: a client
                # this confused cannot be resumed without a gap. It starts over.
                session.close(POLICY_VIOLATION, problem.message)
                self.write_raw(close_event(POLICY_VIOLATION, problem.message))
                self.finish()
                return
            self.session = session
        await self.ended
        if not self._finished:
            self.finish()

    async def resume_elsewhere(self, resume: str, last: int) -> None:
        """The session is another process's (cluster/streams.py): it replays and carries on
        there, and every byte of its stream comes through Redis to be written here."""
        self.relay_buffer: list[bytes | None] | None = []  # what arrives before the response is open
        refusal_of_holder(await ask_holder(self.hub.cluster.relays.resume(resume, last, self)))
        self.ended = asyncio.get_running_loop().create_future()
        if self.request.connection.stream.closed():  # the client left while we asked
            self.stop_relay()
            return
        self.open_stream()
        buffered, self.relay_buffer = self.relay_buffer, None
        for data in buffered:
            self.relayed(data, data is None)
        if not self.ended.done():
            await self.ended
        if not self._finished:
            self.finish()

    def relayed(self, data: bytes | None, end: bool) -> None:
        """Bytes of this stream from the process holding its session; `end`: the last ones."""
        if self.relay_buffer is not None:
            self.relay_buffer.append(data)
            if end:
                self.relay_buffer.append(None)
            return
        if self.ended is None or self.ended.done():
            return
        if data and not self.request.connection.stream.closed():
            try:
                self.write_raw(data)
            except StreamBufferFullError:
                self.unlimit()  # room for the last bytes of this response
                if end:
                    self.write_raw(data)  # the holder's own last words (its close event)
                else:
                    # Our client stopped reading the socket (acking what it never read, or its
                    # acks still on the way): a slow reader, dropped as one of the holder's own
                    # would be. The holder closes the session; its close event is written here.
                    end = True
                    self.stop_relay(too_slow=True)
                    self.write_raw(close_event(TOO_SLOW, TOO_SLOW_REASON))
        if end:
            self.ended.set_result(None)

    def stop_relay(self, too_slow: bool = False) -> None:
        number, self.relay_number = self.relay_number, None
        if number is not None:
            self.hub.cluster.relays.detach(number, too_slow)

    def open_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass events through unbuffered
        stream = self.request.connection.stream
        stream.set_nodelay(True)
        stream.max_write_buffer_size = self.hub.config.max_outbound_bytes
        self.flush()  # the headers go now: EventSource's `open`

    def write_raw(self, data: bytes) -> None:
        # Past the headers, chunks go straight to the HTTP connection: RequestHandler.write
        # and flush would copy every delivery twice more on its way out.
        self.request.connection.write(data)

    def unlimit(self) -> None:
        self.request.connection.stream.max_write_buffer_size = None

    def end(self, data: bytes) -> None:
        if self.ended is None or self.ended.done():
            return
        if data and not self.request.connection.stream.closed():
            self.write_raw(data)
        self.ended.set_result(None)

    def on_connection_close(self) -> None:
        if self.session is not None:
            self.session.detach(self)
        self.stop_relay()
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    def on_finish(self) -> None:
        if self.session is not None:
            self.session.detach(self)
        self.stop_relay()
        # The connection may serve other requests now (keep-alive): no cap for them.
        stream = self.request.connection.stream
        if stream is not None:
            stream.max_write_buffer_size = None


class Post:
    """What one POST does to its session, apart from the HTTP request that carried it.

    The handlers below run it for their own sessions; under `serve --workers` (or several
    servers sharing Redis) a POST may reach a process that does not hold its session, and the
    cluster runs it in the process that does (cluster/bridge.py), from the headers and body
    the receiving process passed on. So the checks, strikes and answers are the same wherever
    the request landed.
    """

    kind = ""
    # The request headers this needs; what a process passes on for a session it does not hold.
    HEADERS = ("Content-Type", "Content-Length", ACK_HEADER, SEQ_HEADER)

    def __init__(self, sessions: "StreamSessions", headers):
        self.sessions = sessions
        self.headers = headers  # anything with .get(name): HTTPHeaders, or a dict of HEADERS
        self.session: StreamSession | None = None
        self.ack: int | None = None

    def limit(self) -> int:
        return SMALL_BODY_BYTES

    def open(self, token: str) -> StreamSession:
        """The session this token names, once the headers pass (before the body is read)."""
        self.session = self.sessions.find(token, self.sessions.by_token)
        self.session.heard = time.monotonic()
        try:
            self.check_body(self.limit())
        except RequestProblem:
            self.session.pipeline.strike()
            raise
        return self.session

    def check_body(self, limit: int) -> None:
        kind, _, params = (self.headers.get("Content-Type") or "").partition(";")
        charset = params.strip().lower()
        if kind.strip().lower() != "application/json" or charset not in ("", "charset=utf-8"):
            raise RequestProblem(415, "bad_content_type", "the body must be application/json (UTF-8)")
        length = parse_count(self.headers.get("Content-Length"), "Content-Length")
        if length is not None and length > limit:
            self.too_large(limit)
        self.ack = parse_count(self.headers.get(ACK_HEADER), ACK_HEADER)

    def too_large(self, limit: int) -> None:
        raise RequestProblem(413, "too_large", f"the body may have at most {limit} bytes")

    def acknowledge(self) -> None:
        if self.ack is not None:
            self.session.acknowledge(self.ack)

    def run(self, body: bytes) -> None:
        """With the whole body: do what the POST asks (raises RequestProblem for a refusal)."""
        session = self.session
        try:
            if session.ended is not None:  # closed while the body was arriving
                self.sessions.find(session.token, self.sessions.by_token)
            self.handle(session, body)
        except RequestProblem as problem:
            if session.ended is None and problem.status != 410:
                session.pipeline.strike()
            raise

    def handle(self, session: StreamSession, body: bytes) -> None:
        raise NotImplementedError


class SendPost(Post):
    """One client frame, handled exactly like a WebSocket text frame."""

    kind = "send"

    def limit(self) -> int:
        return self.sessions.hub.config.max_frame_bytes

    def too_large(self, limit: int) -> None:
        # The WebSocket closes with 1009 on an oversized frame; so does this session.
        self.session.close(FRAME_TOO_LARGE, "frame too large")
        super().too_large(limit)

    def check_body(self, limit: int) -> None:
        super().check_body(limit)
        self.seq = parse_count(self.headers.get(SEQ_HEADER), SEQ_HEADER)
        if self.seq is None or self.seq == 0:
            raise RequestProblem(400, "bad_request", f"{SEQ_HEADER} must count the frames sent, from 1")

    def handle(self, session: StreamSession, body: bytes) -> None:
        if self.seq <= session.received:
            return  # a retry of a frame already handled (its answer is on the stream)
        if self.seq != session.received + 1:
            raise RequestProblem(409, "out_of_order",
                                 f"expected frame {session.received + 1}, got {self.seq}: send one at a time")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestProblem(400, "bad_encoding", "the body is not UTF-8") from None
        session.received = self.seq
        self.acknowledge()
        session.pipeline.receive(text)


class AckPost(Post):
    """The client has every frame up to Securechat-Ack."""

    kind = "ack"

    def handle(self, session: StreamSession, body: bytes) -> None:
        if self.ack is None:
            raise RequestProblem(400, "bad_request", f"an ack needs the {ACK_HEADER} header")
        self.acknowledge()


class ClosePost(Post):
    """The page is going away; leave now rather than at the timeout."""

    kind = "close"

    def handle(self, session: StreamSession, body: bytes) -> None:
        self.acknowledge()
        session.close(CLIENT_CLOSED, "closed by the client")


POSTS = {post.kind: post for post in (SendPost, AckPost, ClosePost)}


def answer_post(sessions: "StreamSessions", kind: str, token: str, headers: dict, body: bytes | None) -> dict | None:
    """A POST another process received for a session of ours: None when it is done (204),
    else the refusal as {"status", "error", "message", ...}. `body` None: only the headers'
    checks, before that process reads the body (so it reads one only for a real session)."""
    post = POSTS[kind](sessions, headers)
    try:
        post.open(token)
        if body is not None:
            post.run(body)
    except RequestProblem as problem:
        return {"status": problem.status, **problem.body()}
    return None


def answer_resume(sessions: "StreamSessions", session_id: str, last: int, stream, before_attach) -> dict | None:
    """A resume another process received for a session of ours: carry the session on `stream`
    (cluster/streams.py's RelayedStream) from frame `last + 1`, calling `before_attach` first;
    or the refusal, as a local resume would give it (a 410 ends that response with a close)."""
    try:
        session = sessions.find(session_id, sessions.by_id)
        try:
            session.acknowledge(last)
        except RequestProblem as problem:
            # As for a resume of our own: a client this confused starts over.
            session.close(POLICY_VIOLATION, problem.message)
            raise RequestProblem(410, "session_closed", problem.message, code=POLICY_VIOLATION,
                                 reason=problem.message) from None
    except RequestProblem as problem:
        return {"status": problem.status, **problem.body()}
    before_attach()
    stream.session = session
    session.attach(stream, None)
    return None


@tornado.web.stream_request_body
class _SessionPost(_Base):
    """What every POST shares: the Origin, the token, a JSON body within its size limit.

    A token this process does not know may be a session another process of the cluster holds:
    the request is then passed on to it (through Redis) and its answer given as ours.
    """

    post_class: type[Post] = Post

    def initialize(self, sessions: StreamSessions) -> None:
        super().initialize(sessions)
        self.action: Post | None = None
        self.body = bytearray()
        self.token = ""
        self.forwarded = False  # a session another process holds: it answers this request
        self.owner: str | None = None  # that process, once it said so

    async def prepare(self) -> None:
        self.action = self.post_class(self.sessions, self.request.headers)
        limit = self.action.limit()
        try:
            self.check_request_origin(required=True)
            token = self.request.headers.get(TOKEN_HEADER)
            if token is None:
                raise RequestProblem(401, "no_token", f"this request needs the {TOKEN_HEADER} header")
            if not _SECRET.match(token):
                raise RequestProblem(404, "unknown_session", "no such session")
            self.token = token
            if self.hub.cluster is not None and not self.sessions.knows(token):
                self.forwarded = True
                if not self.fits_default_body():
                    # Before this process reads a body larger than the default: the session's
                    # holder checks the token and headers first, as prepare() does for ours.
                    await self.forward(None)
                    allow_body(self, limit)
                return
            self.action.open(token)
        except RequestProblem as problem:
            self.refuse(problem)
            return
        # Only now, for the session's own requests, may the body be as large as a frame.
        allow_body(self, limit)

    def fits_default_body(self) -> bool:
        length = self.request.headers.get("Content-Length")
        return length is not None and _COUNT.match(length) is not None and int(length) <= self.hub.config.max_body_bytes

    async def forward(self, body: bytes | None) -> None:
        """Have the process holding the session answer; raises its refusal as ours."""
        headers = {name: value for name in Post.HEADERS if (value := self.request.headers.get(name)) is not None}
        self.owner, refusal = await ask_holder(self.hub.cluster.forward_post(
            self.action.kind, self.token, headers, body, owner=self.owner))
        refusal_of_holder(refusal)

    def data_received(self, chunk: bytes) -> None:
        if not self._finished:
            self.body += chunk

    async def post(self) -> None:
        try:
            if self.forwarded:
                await self.forward(bytes(self.body))
            else:
                self.action.run(self.body)
        except RequestProblem as problem:
            self.refuse(problem)
            return
        self.set_status(204)
        self.finish()


class SendHandler(_SessionPost):
    """POST /stream/send: one client frame, handled exactly like a WebSocket text frame."""

    post_class = SendPost


class AckHandler(_SessionPost):
    """POST /stream/ack: the client has every frame up to Securechat-Ack."""

    post_class = AckPost


class CloseHandler(_SessionPost):
    """POST /stream/close: the page is going away; leave now rather than at the timeout."""

    post_class = ClosePost


def routes(sessions: StreamSessions) -> list:
    kwargs = {"sessions": sessions}
    return [
        (r"/stream", StreamHandler, kwargs),
        (r"/stream/send", SendHandler, kwargs),
        (r"/stream/ack", AckHandler, kwargs),
        (r"/stream/close", CloseHandler, kwargs),
    ]
