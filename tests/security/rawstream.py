"""A deliberately crude blocking client of the HTTP transport (PROTOCOL.md §1.2) for attacks.

The reference client always reads, acknowledges and sends well-formed requests; attacks need a
peer that stops reading, lies in its acks, sends the wrong content type or no token, or comes
from another loopback address. This one speaks just enough HTTP/1.1 to do that.
"""

from __future__ import annotations

import http.client
import json
import socket

from securechat.relay import sse


class Refused(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body

    def json(self) -> dict:
        return json.loads(self.body)


class RawStream:
    """GET /stream on a raw socket; `session` is the first event's data."""

    def __init__(self, host: str, port: int, *, query: str = "", headers: dict | None = None,
                 source: str | None = None, rcvbuf: int | None = None, timeout: float = 10):
        self.host, self.port = host, port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self._buffer = b""
        self._chunk_left = 0
        self.parser = sse.Parser()
        self.pending: list[sse.Event] = []
        lines = [f"GET /stream{query} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n").decode("latin1")
        status_line, *header_lines = head.split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.status != 200:
            length = int(self.headers.get("content-length", 0))
            body = self._read_exactly(length) if length else b""
            self.sock.close()
            raise Refused(self.status, body)
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        first = self.next_event()
        self.session = json.loads(first.data) if first.name == "session" else None
        self.first = first

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self._buffer += data
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self._buffer += data
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def _read_chunk(self) -> bytes | None:
        """The next piece of the chunked body; None at its end."""
        size = int(self._read_until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            self._read_until(b"\r\n")
            return None
        data = self._read_exactly(size)
        self._read_exactly(2)
        return data

    def next_event(self) -> sse.Event | None:
        """The next event, or None when the server ended the response."""
        while not self.pending:
            chunk = self._read_chunk()
            if chunk is None:
                return None
            self.pending.extend(self.parser.feed(chunk))
        return self.pending.pop(0)

    def next_frame(self) -> dict | None:
        """The next frame (`message` event); `close` events come back as {"type": "close", ...}."""
        while True:
            event = self.next_event()
            if event is None:
                return None
            if event.name == "message":
                return json.loads(event.data)
            if event.name == "close":
                return {"type": "close", **json.loads(event.data)}

    @property
    def last(self) -> int:
        return int(self.parser.last_id or 0)

    def close(self) -> None:
        self.sock.close()


def post(host: str, port: int, path: str, body: bytes | str = b"{}", *, token: str | None = None,
         seq: int | None = None, ack: int | None = None, origin: str | None = "same",
         content_type: str | None = "application/json", headers: dict | None = None,
         source: str | None = None, timeout: float = 10) -> tuple[int, dict]:
    """One POST; (status, JSON body or {})."""
    all_headers = {}
    if origin == "same":
        origin = f"http://{host}:{port}"
    if origin is not None:
        all_headers["Origin"] = origin
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    if token is not None:
        all_headers["Securechat-Token"] = token
    if seq is not None:
        all_headers["Securechat-Seq"] = str(seq)
    if ack is not None:
        all_headers["Securechat-Ack"] = str(ack)
    all_headers.update(headers or {})
    connection = http.client.HTTPConnection(host, port, timeout=timeout,
                                            source_address=(source, 0) if source else None)
    try:
        connection.request("POST", path, body=body.encode() if isinstance(body, str) else body,
                           headers=all_headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = {"raw": data.decode(errors="replace")}
    return response.status, parsed
