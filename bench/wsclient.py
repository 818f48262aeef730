"""A deliberately small WebSocket client for the load generator (RFC 6455, text frames only).

Why not tornado's client: on the generator side each delivered frame should cost far less than
it costs the server to write it, or the benchmark measures itself. This client parses frames
straight out of asyncio's data_received buffer, never decodes payloads it does not need, and
sends pre-encoded frames. Client frames are masked as RFC 6455 requires, with an all-zero
masking key (legal: the key is 32 arbitrary bits; a zero key leaves the payload unchanged, so
pre-built frames need no per-byte XOR). That is fine for a loopback benchmark; a real client
must use random keys.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from typing import Callable

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_ZERO_MASK = b"\x00\x00\x00\x00"


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A complete, masked (zero key), final client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + _ZERO_MASK + payload


class WSClient(asyncio.Protocol):
    """One connection. `on_text(client, payload_bytes, now_ns)` sees every text frame."""

    def __init__(self, host: str, port: int, path: str, on_text: Callable | None = None,
                 on_open: Callable | None = None):
        self.host, self.port, self.path = host, port, path
        self.on_text = on_text
        self.on_open = on_open  # called before any frame, so the owner can know the client
        self.transport: asyncio.Transport | None = None
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._handshake = True
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self.bytes_received = 0  # every byte off the socket after the HTTP upgrade
        self.frames_received = 0
        self.paused = False
        self.close_code: int | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buf = self._buf
        buf += data
        if self._handshake:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                if not self.opened.done():  # (done: the caller gave up waiting)
                    self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            del buf[: end + 4]
            self._handshake = False
            if self.on_open is not None:
                self.on_open(self)
            if not self.opened.done():  # the caller may have given up waiting (a timeout)
                self.opened.set_result(self)
        self.bytes_received += len(data)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])  # server frames are unmasked
            pos += head + n
            self._frame(b0, payload, now)
        if pos:
            del buf[:pos]

    def _frame(self, b0: int, payload: bytes, now: int) -> None:
        opcode = b0 & 0x0F
        if opcode == 0:  # continuation
            self._fragments.append(payload)
            if b0 & 0x80:
                payload, self._fragments = b"".join(self._fragments), []
                opcode = OP_TEXT
            else:
                return
        elif not b0 & 0x80:
            self._fragments = [payload]
            return
        if opcode == OP_TEXT:
            self.frames_received += 1
            if self.on_text is not None:
                self.on_text(self, payload, now)
        elif opcode == OP_PING:
            self.send_raw(encode_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                self.close_code = struct.unpack("!H", payload[:2])[0]
            self.send_raw(encode_frame(payload[:2], OP_CLOSE))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # -- use ---------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str | bytes) -> None:
        self.send_raw(encode_frame(text.encode() if isinstance(text, str) else text))

    def stop_reading(self) -> None:
        """Stall: stop reading so the server's writes back up (the slow-consumer test)."""
        self.paused = True
        self.transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_raw(encode_frame(struct.pack("!H", 1000), OP_CLOSE))
            self.transport.close()


async def connect(host: str, port: int, path: str = "/ws", on_text=None, timeout: float = 10,
                  on_open=None) -> WSClient:
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WSClient(host, port, path, on_text, on_open), host, port), timeout
    )
    await asyncio.wait_for(client.opened, timeout)
    return client
