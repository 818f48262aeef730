"""A deliberately crude blocking WebSocket client for attack tests.

Tornado's client always reads and always sends well-formed frames; attacks need a peer that
stops reading, sends invalid UTF-8 or truncated frames, or opens thousands of sockets from
another loopback address. This one speaks just enough RFC 6455 to do that.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeRefused(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class RawWebSocket:
    def __init__(self, host: str, port: int, *, path: str = "/ws", source: str | None = None,
                 origin: str | None = None, rcvbuf: int | None = None, timeout: float = 10):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Set before connect so the advertised TCP window really is small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self._buffer = b""
        try:
            self.sock.connect((host, port))
            self._handshake(host, port, path, origin)
            self.hello = self.recv_json()  # the server speaks first (PROTOCOL.md §6.2)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, host, port, path, origin) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if origin:
            lines.append(f"Origin: {origin}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = self._read_exactly(length) if length else b""
            self.sock.close()
            raise HandshakeRefused(status, body)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during handshake")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    # -- sending ---------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        mask = os.urandom(4)
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(TEXT, text if isinstance(text, bytes) else text.encode())

    def send_json(self, frame: dict) -> None:
        self.send_text(json.dumps(frame))

    # -- receiving -------------------------------------------------------------------------

    def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; (CLOSE, b"") when the TCP stream ends."""
        try:
            first, second = self._read_exactly(2)
        except ConnectionError:
            return CLOSE, b""
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exactly(8))[0]
        return first & 0x0F, self._read_exactly(n)

    def recv_json(self) -> dict | None:
        """The next text frame as JSON, answering pings; None once the server closed."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == PING:
                self.send_frame(PONG, payload)
            elif opcode == CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return None
            elif opcode == TEXT:
                return json.loads(payload)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
