"""The HTTP transport (docs/PROTOCOL.md §1.2) for the Python reference client.

HttpStreamConnection has the shape of Tornado's WebSocketClientConnection as the client uses it
(`write_message`, `read_message`, `close`, `close_code`, `close_reason`), so ChatClient speaks
the same protocol over either transport. Underneath: one GET /stream read as Server-Sent
Events, and one POST at a time for everything the client sends, each carrying the session's
token, a sequence number (so a retry is never handled twice) and an acknowledgement of the
frames received. A stream that drops is resumed from the last frame seen.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from urllib.parse import quote, urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .relay import sse

TOKEN_HEADER = "Securechat-Token"
SEQ_HEADER = "Securechat-Seq"
ACK_HEADER = "Securechat-Ack"
RESUME_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)
# What a broken connection looks like through Tornado's client (it reports some as HTTP 599).
NETWORK_ERRORS = (OSError, asyncio.TimeoutError)
STREAM_SECONDS = 365 * 86400.0  # a stream lasts as long as its session


class StreamRefused(Exception):
    """The server answered a stream request with an HTTP error (§1.2's JSON body)."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {body.get('error')}: {body.get('message')}")
        self.status = status
        self.body = body


def base_url(url: str) -> str:
    """`ws://host:port/ws` or `http://host:port/...` -> `http://host:port` (wss/https alike)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class HttpStreamConnection:
    # Where POSTs go when not to the stream's own server: a test's way to make them land on
    # another process of a cluster (a load balancer does it in real life). None: self.base.
    posts_to: str | None = None

    def __init__(self, url: str, *, origin: str | None = None, ssl_options=None, room: str | None = None):
        self.base = base_url(url)
        self.room = room  # named by the request that opens the session (§1); None: the default room
        self.origin = origin or self.base
        self.ssl_options = ssl_options
        self.http = AsyncHTTPClient(force_instance=True)
        self.frames: asyncio.Queue[str | None] = asyncio.Queue()
        self.session: dict | None = None
        self.last = 0  # id of the last frame received
        self.unacked_bytes = 0
        self.sent = 0  # Securechat-Seq of the last frame the server accepted
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.resumes = 0  # streams resumed after a drop, for tests and curiosity
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task | None = None
        self._opened: asyncio.Future | None = None
        self._closed = False
        self._stopped = False

    async def open(self, timeout: float = 10) -> "HttpStreamConnection":
        self._opened = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read_streams())
        await asyncio.wait_for(asyncio.shield(self._opened), timeout)
        return self

    # -- receiving -------------------------------------------------------------------------

    async def _read_streams(self) -> None:
        try:
            try:
                await self._stream(None)
            except NETWORK_ERRORS:
                if self.session is None:
                    raise
            while not self._closed:
                # Dropped without a `close` event: pick the session up where the stream left it.
                await self._resume()
        except Exception as exc:  # refused, or the session could not be resumed
            if self._opened is not None and not self._opened.done():
                self._opened.set_exception(exc)
            self._finish(self.close_code or 1006, self.close_reason or str(exc))

    async def _resume(self) -> None:
        """One stream after a drop: retried on network errors for as long as the server would
        keep the session (ping + timeout); a refusal (404, 4xx) ends it at once."""
        window = (self.session["ping_ms"] + self.session["timeout_ms"]) / 1000
        started = time.monotonic()
        for attempt in itertools.count():
            if self._closed:
                return
            if time.monotonic() - started > window:
                raise ConnectionError("the stream dropped and could not be resumed")
            await asyncio.sleep(RESUME_DELAYS[min(attempt, len(RESUME_DELAYS) - 1)])
            self.resumes += 1
            try:
                await self._stream(self.session["session"])
                return
            except NETWORK_ERRORS:
                continue

    async def _stream(self, resume: str | None) -> None:
        url = f"{self.base}/stream"
        if resume is not None:
            url += f"?session={quote(resume)}&last={self.last}"
        elif self.room is not None:
            url += f"?room={quote(self.room)}"
        parser = sse.Parser()

        def on_chunk(chunk: bytes) -> None:
            if self._stopped:
                # Tornado's client has no way to abort a fetch; raising here closes its socket.
                raise ConnectionAbortedError("closed by the client")
            for event in parser.feed(chunk):
                self._event(event)

        request = HTTPRequest(url, headers={"Accept": "text/event-stream"}, request_timeout=STREAM_SECONDS,
                              connect_timeout=10, streaming_callback=on_chunk,
                              ssl_options=self.ssl_options)
        try:
            await self.http.fetch(request)
        except HTTPClientError as exc:
            if exc.code == 599 or exc.response is None:
                raise ConnectionError(f"the stream broke: {exc}") from None
            raise StreamRefused(exc.code, _json(exc.response.body)) from None

    def _event(self, event: sse.Event) -> None:
        if event.name == "message":
            seq = int(event.id)
            if seq <= self.last:
                return  # never happens with a correct server; a replay must not repeat a frame
            self.last = seq
            self.unacked_bytes += len(event.data)
            self.frames.put_nowait(event.data)
            if self.session and self.unacked_bytes >= self.session["ack_bytes"]:
                self._spawn(self.ack())
        elif event.name == "session":
            self.session = json.loads(event.data)
            if self._opened is not None and not self._opened.done():
                self._opened.set_result(None)
        elif event.name == "ping":
            self._spawn(self.ack())
        elif event.name == "close":
            ended = json.loads(event.data)
            self._finish(ended["code"], ended["reason"])

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def read_message(self) -> str | None:
        """The next frame's text; None once the session has ended."""
        if self.frames.empty() and self._closed:
            return None
        text = await self.frames.get()
        if text is None:
            self.frames.put_nowait(None)  # every later read sees the end too
        return text

    def _finish(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_code, self.close_reason = code, reason
        self.frames.put_nowait(None)

    # -- sending ---------------------------------------------------------------------------

    async def _post(self, path: str, body: str, seq: int | None = None) -> None:
        base = self.posts_to or self.base
        headers = {"Content-Type": "application/json", "Origin": self.posts_to or self.origin,
                   TOKEN_HEADER: self.session["token"], ACK_HEADER: str(self.last)}
        if seq is not None:
            headers[SEQ_HEADER] = str(seq)
        self.unacked_bytes = 0
        request = HTTPRequest(f"{base}/stream/{path}", method="POST", headers=headers,
                              body=body, ssl_options=self.ssl_options, request_timeout=30)
        try:
            await self.http.fetch(request)
        except HTTPClientError as exc:
            if exc.code == 599 or exc.response is None:
                raise
            refusal = _json(exc.response.body)
            if exc.code in (404, 410):
                self._finish(refusal.get("code", 1006), refusal.get("reason") or refusal.get("message", ""))
            raise StreamRefused(exc.code, refusal) from None

    async def write_message(self, text: str) -> None:
        """Send one frame; a POST that fails in the network is retried with the same number."""
        if self._closed:
            raise StreamRefused(410, {"error": "session_closed", "message": self.close_reason or ""})
        async with self._lock:
            seq = self.sent + 1
            for delay in (*RESUME_DELAYS, None):
                try:
                    await self._post("send", text, seq)
                    break
                except (OSError, HTTPClientError):
                    if delay is None or self._closed:
                        raise
                    await asyncio.sleep(delay)
            self.sent = seq

    async def ack(self) -> None:
        if self._closed or self.session is None:
            return
        async with self._lock:
            await self._post("ack", "{}")

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """End the session (POST /stream/close) and stop reading; like a WebSocket close."""
        if self._closed or self.session is None:
            self._stop()
            return

        async def close_then_stop():
            try:
                async with self._lock:
                    await self._post("close", "{}")
            except Exception:  # the server may already have ended the session
                pass
            self._stop()

        self._spawn(close_then_stop())

    def _stop(self) -> None:
        self._stopped = True
        self._finish(self.close_code or 1000, self.close_reason or "")
        if self._reader is not None:
            self._reader.cancel()
        self.http.close()


def _json(body: bytes | None) -> dict:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
