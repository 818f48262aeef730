"""A deliberately small client of the HTTP transport (PROTOCOL.md §1.2) for the load generator.

Like wsclient.py it parses straight out of asyncio's buffers and never decodes what it does not
need, so each delivered frame costs the generator far less than the server. It behaves like the
browser's transport where that shapes the server's work: one stream, one keep-alive connection
for POSTs sent one at a time and in order, every POST acknowledging what arrived, an ack of its
own every `ack_bytes` received and on every ping. It does not resume dropped streams (nothing
drops on loopback during a measurement).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from typing import Callable

_EVENT_END = b"\n\n"
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, client: "HttpClient"):
        self.client = client
        self.buf = bytearray()
        self.events = bytearray()
        self.head = True
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        c = self.client
        transport.write(f"GET /stream HTTP/1.1\r\nHost: {c.host}:{c.port}\r\nAccept: text/event-stream\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buf = self.buf
        buf += data
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 200 " not in status:
                self.client._failed(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            del buf[: end + 4]
            self.head = False
        self.client.bytes_received += len(data)
        # Chunked transfer encoding: "<hex size>\r\n<data>\r\n", repeated.
        pos, size = 0, len(buf)
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buf[pos:eol], 16)
            if length == 0:  # the end of the response: the session closed
                self.transport.close()
                pos = size
                break
            if size - eol - 2 < length + 2:
                break
            chunk = buf[eol + 2 : eol + 2 + length]
            pos = eol + 4 + length
            if self.events or not chunk.endswith(_EVENT_END):
                # The server writes whole events per chunk; this path is only for safety.
                self.events += chunk
                chunk = self.events
                self.events = bytearray()
            rest = self._events(chunk, now)
            if rest:
                self.events += rest
        if pos:
            del buf[:pos]

    def _events(self, events, now: int):
        """Handle the complete events in `events`; returns what is left of an unfinished one."""
        start = 0
        client = self.client
        while True:
            end = events.find(_EVENT_END, start)
            if end < 0:
                break
            event = bytes(events[start:end])
            start = end + 2
            if event.startswith(b"id: "):
                line = event.find(b"\n")
                client._frame(int(event[4:line]), event[line + 7 :], now)  # after "\ndata: "
            elif event.startswith(b"event: session"):
                client._session(json.loads(event[event.find(b"data: ") + 6 :]))
            elif event.startswith(b"event: ping"):
                client.ack()
            elif event.startswith(b"event: close"):
                client.close_info = json.loads(event[event.find(b"data: ") + 6 :])
        return events[start:]

    def connection_lost(self, exc) -> None:
        self.client._stream_lost(exc)


class _PostProtocol(asyncio.Protocol):
    """One keep-alive connection; one request at a time, the next when the answer is in."""

    def __init__(self, client: "HttpClient"):
        self.client = client
        self.buf = bytearray()
        self.transport = None
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.client._pump()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            found = _LENGTH.search(head)
            length = int(found.group(1)) if found else 0
            if len(buf) < end + 4 + length:
                return
            status = int(head[9:12])
            del buf[: end + 4 + length]
            self.busy = False
            self.client._answered(status)

    def connection_lost(self, exc) -> None:
        # The server closes keep-alive connections idle past limits.header_timeout; a browser
        # just opens another one, and so do we (re-sending an unanswered POST: it is numbered).
        self.client._posts_lost(self)


class HttpClient:
    """`on_text(client, payload_bytes, now_ns)` sees every frame, like WSClient's."""

    def __init__(self, host: str, port: int, on_text: Callable | None = None):
        self.host, self.port = host, port
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.bytes_received = 0  # stream bytes after the response head
        self.frames_received = 0
        self.session: dict | None = None
        self.last = 0
        self.unacked = 0
        self.sent = 0
        self.queue: deque[tuple[bytes, bytes, int | None]] = deque()  # (path, body, seq)
        self.inflight: tuple[bytes, bytes, int | None] | None = None
        self.stream: _StreamProtocol | None = None
        self.posts: _PostProtocol | None = None
        self.reconnects = 0  # POST connections opened again after the server closed one
        self._connecting = False
        self._closing = False
        self.close_info: dict | None = None
        self.errors: dict[int, int] = {}
        self._head = b""
        self.close_code: int | None = None
        self.paused = False  # stop_reading() called: the open loop's drain does not wait for it

    async def open(self, timeout: float = 10) -> "HttpClient":
        loop = asyncio.get_running_loop()
        _, self.stream = await loop.create_connection(lambda: _StreamProtocol(self), self.host, self.port)
        await asyncio.wait_for(asyncio.shield(self.opened), timeout)
        _, self.posts = await loop.create_connection(lambda: _PostProtocol(self), self.host, self.port)
        self.reconnects = 0
        return self

    # -- the stream ------------------------------------------------------------------------

    def _session(self, info: dict) -> None:
        self.session = info
        origin = f"http://{self.host}:{self.port}"
        self._head = (f"Host: {self.host}:{self.port}\r\nOrigin: {origin}\r\nContent-Type: application/json\r\n"
                      f"Securechat-Token: {info['token']}\r\n").encode()
        if not self.opened.done():
            self.opened.set_result(self)

    def _frame(self, seq: int, payload: bytes, now: int) -> None:
        self.last = seq
        self.frames_received += 1
        self.unacked += len(payload)
        if self.on_text is not None:
            self.on_text(self, payload, now)
        if self.unacked >= self.session["ack_bytes"]:
            self.ack()

    def _failed(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)

    def _stream_lost(self, exc) -> None:
        self._failed(exc or ConnectionError("closed during the handshake"))
        if self.close_info is not None:
            self.close_code = self.close_info.get("code")
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # -- POSTs -----------------------------------------------------------------------------

    def send_raw(self, payload: bytes) -> None:
        """One frame's JSON, as the body of POST /stream/send."""
        self.sent += 1
        self.queue.append((b"/stream/send", payload, self.sent))
        self._pump()

    def send_text(self, text: str | bytes) -> None:
        self.send_raw(text.encode() if isinstance(text, str) else text)

    def ack(self) -> None:
        if not self.queue:  # a POST already waiting carries the newest ack anyway
            self.queue.append((b"/stream/ack", b"{}", None))
            self._pump()

    def _pump(self) -> None:
        posts = self.posts
        if posts is None or posts.transport is None or posts.transport.is_closing():
            self._reconnect_posts()
            return
        if posts.busy or not self.queue:
            return
        path, body, seq = self.inflight = self.queue.popleft()
        extra = b"" if seq is None else b"Securechat-Seq: %d\r\n" % seq
        self.unacked = 0
        posts.busy = True
        posts.transport.write(b"POST %s HTTP/1.1\r\n%s%sSecurechat-Ack: %d\r\nContent-Length: %d\r\n\r\n%s"
                              % (path, self._head, extra, self.last, len(body), body))

    def _answered(self, status: int) -> None:
        self.inflight = None
        if status != 204:
            self.errors[status] = self.errors.get(status, 0) + 1
        self._pump()

    def _posts_lost(self, protocol: "_PostProtocol") -> None:
        if protocol is not self.posts:
            return
        self.posts = None
        if self.inflight is not None:
            self.queue.appendleft(self.inflight)
            self.inflight = None
        if self.queue:
            self._reconnect_posts()

    def _reconnect_posts(self) -> None:
        if self._connecting or self._closing or self.session is None:
            return
        self._connecting = True

        async def reconnect():
            try:
                loop = asyncio.get_running_loop()
                _, self.posts = await loop.create_connection(lambda: _PostProtocol(self), self.host, self.port)
                self.reconnects += 1
            finally:
                self._connecting = False
            self._pump()

        asyncio.ensure_future(reconnect())

    def stop_reading(self) -> None:
        self.paused = True
        self.stream.transport.pause_reading()

    def close(self) -> None:
        self._closing = True
        for protocol in (self.stream, self.posts):
            if protocol is not None and protocol.transport is not None and not protocol.transport.is_closing():
                protocol.transport.close()


async def connect(host: str, port: int, on_text=None, timeout: float = 10) -> HttpClient:
    return await HttpClient(host, port, on_text).open(timeout)
