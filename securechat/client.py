"""The Python reference client of protocol v2: join, send, receive, verify and decrypt.

It proves the protocol is implementable outside the browser, and the tests and the benchmark
drive the server through it. Receiving applies every check of docs/PROTOCOL.md §7.4; a frame
that fails one comes back as a Rejected event, never as a message.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from . import crypto
from . import filecrypto as fc
from .client_transport import HttpStreamConnection

PART_BYTES = 1024 * 1024  # what the browser sends per PATCH, too


@dataclass
class Member:
    sid: str
    username: str
    fingerprint: str
    identity_key: object
    session_key: object
    verified: bool  # the session statement checked out and is fresh
    stream: str = ""


@dataclass
class Message:
    id: str
    sender: str
    fingerprint: str
    text: str
    ts: int
    files: list[fc.FileRef] = field(default_factory=list)
    seq: int = 0
    missed: int = 0  # messages from this sender that should have arrived before this one
    late: bool = False  # it filled an earlier gap


@dataclass
class Rejected:
    """A relayed message this client refused to show, and why."""

    id: str | None
    sender: str | None
    reason: str


@dataclass
class ServerError:
    code: str
    message: str
    frame: dict


class ClientError(Exception):
    pass


class AttachmentError(ClientError):
    """An upload or download the server refused, or a file that failed verification."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status


@dataclass
class ChatClient:
    url: str
    username: str
    identity: crypto.Identity = field(default_factory=crypto.Identity.generate)
    skew_ms: int = crypto.MAX_CLOCK_SKEW_MS
    # "websocket" (ws[s]://host/ws) or "http" (PROTOCOL.md §1.2: the same frames over an SSE
    # stream and POSTs; `url` may then be the ws URL or the server's http(s) address).
    transport: str = "websocket"
    # The connection, either way: WebSocketClientConnection or HttpStreamConnection, which
    # share read_message / write_message / close / close_code.
    ws: WebSocketClientConnection | HttpStreamConnection | None = None
    session: crypto.SessionKey | None = None
    room: str = ""
    challenge: str = ""
    stream: str = field(default_factory=lambda: os.urandom(16).hex())
    members: dict[str, Member] = field(default_factory=dict)
    acks: dict[str, int] = field(default_factory=dict)
    events: list = field(default_factory=list)
    attachments: dict | None = None  # the welcome's capability and limit (§10.2)
    ssl_options: object = None
    _send_seq: dict[str, int] = field(default_factory=dict)  # recipient stream -> last seq sent
    _recv: dict[str, dict] = field(default_factory=dict)  # sender stream -> {"last", "missing"}
    # Where each join's fresh session key comes from; None generates one (RSA-2048, 30-300 ms).
    # The memory soak test hands out a few keys again, to join thousands of times in seconds.
    session_keys: Callable[[], crypto.SessionKey] | None = None
    _seen: dict[str, set] = field(default_factory=dict)

    # -- connecting ------------------------------------------------------------------------

    async def connect(self, *, origin: str | None = None, ssl_options=None, timeout: float = 10) -> dict:
        """Open the connection, read the server's hello, join, and return the welcome frame."""
        self.ssl_options = ssl_options
        # The room the url names (?room=, §1); the hello must confirm it before we sign it.
        asked = parse_qs(urlsplit(self.url).query).get("room", [None])[-1]
        if self.transport == "http":
            self.ws = await HttpStreamConnection(self.url, origin=origin, ssl_options=ssl_options,
                                                 room=asked).open(timeout)
        elif self.transport == "websocket":
            headers = {"Origin": origin} if origin else {}
            request = HTTPRequest(self.url, headers=headers, ssl_options=ssl_options)
            self.ws = await asyncio.wait_for(websocket_connect(request), timeout)
        else:
            raise ValueError(f"transport must be 'websocket' or 'http', not {self.transport!r}")
        hello = await self.expect("hello", timeout=timeout)
        self.room, self.challenge = hello["room"], hello["challenge"]
        if asked is not None and self.room != asked:
            self.close()
            raise ClientError(f"the server answered for room {self.room!r}, not {asked!r}")
        return await self.join(timeout=timeout)

    async def join(self, *, timeout: float = 10) -> dict:
        """Join the room the hello named, with a fresh session key."""
        self.session = (self.session_keys or crypto.SessionKey.generate)()
        await self.send_frame(self.join_frame(self.room))
        welcome = await self.expect("welcome", timeout=timeout)
        self.attachments = welcome.get("attachments")
        self.challenge = welcome["challenge"]
        self.members = {}
        for entry in welcome["participants"]:
            self._add_member(entry)
        return welcome

    def statement(self, room: str, session: crypto.SessionKey, issued: int | None = None) -> dict:
        issued = int(time.time() * 1000) if issued is None else issued
        return {
            "session_key": session.spki_b64, "issued": issued, "challenge": self.challenge,
            "session_sig": crypto.sign_session(self.identity, room, self.username, session.spki_b64,
                                               issued, self.challenge, self.stream),
        }

    def join_frame(self, room: str) -> dict:
        statement = self.statement(room, self.session)
        return {"v": 2, "type": "join", "username": self.username, "identity_key": self.identity.spki_b64,
                "session_key": statement["session_key"], "issued": statement["issued"],
                "challenge": statement["challenge"], "stream": self.stream,
                "session_sig": statement["session_sig"]}

    async def rotate(self, timeout: float = 10) -> dict:
        """Replace the session key in place (§4 rotation) and return the `rekeyed` frame."""
        fresh = crypto.SessionKey.generate()
        await self.send_frame({"v": 2, "type": "rekey", **self.statement(self.room, fresh)})
        rekeyed = await self.expect("rekeyed", timeout)
        self.session = fresh
        self.challenge = rekeyed.get("challenge", self.challenge)
        return rekeyed

    @property
    def sid(self) -> str:
        return self.session.sid

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    # -- sending ---------------------------------------------------------------------------

    async def send_frame(self, frame: dict | str) -> None:
        await self.ws.write_message(frame if isinstance(frame, str) else json.dumps(frame))

    def seal(self, text: str, recipients: list[Member] | None = None, *,
             files: list[fc.FileRef] = ()) -> dict:
        """Build the next msg frame to every verified member (or the given ones)."""
        targets = [m for m in (recipients or self.members.values()) if m.verified]
        seqs = {m.sid: self._send_seq.get(m.stream, 0) + 1 for m in targets}
        for m in targets:
            self._send_seq[m.stream] = seqs[m.sid]
        return crypto.seal_message(
            identity=self.identity, sender_sid=self.sid, room=self.room, text=text,
            recipients=[crypto.Recipient(m.sid, m.session_key, seqs[m.sid]) for m in targets],
            extra={"files": [ref.to_json() for ref in files]} if files else None,
            attachments=[ref.id for ref in files] or None,
        )

    async def send(self, text: str, *, files: list[fc.FileRef] = ()) -> str:
        frame = self.seal(text, files=files)
        await self.send_frame(frame)
        return frame["id"]

    async def deliver(self, text: str, timeout: float = 10, *, files: list[fc.FileRef] = ()) -> str:
        """Send and wait for the ack; after `stale_recipients`, refresh the roster and re-send once."""
        for attempt in range(2):
            frame = self.seal(text, files=files)
            await self.send_frame(frame)
            outcome = await self._outcome(frame["id"], timeout)
            if outcome["type"] == "ack":
                return frame["id"]
            if outcome["code"] != "stale_recipients" or attempt:
                raise ClientError(f"{outcome['code']}: {outcome['message']}")
            await self.send_frame({"v": 2, "type": "roster"})
            await self.expect("roster", timeout)
        raise AssertionError("unreachable")

    async def _outcome(self, msg_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame is None:
                raise ClientError("connection closed while waiting for an ack")
            if frame.get("type") in ("ack", "error") and frame.get("id") == msg_id:
                return frame
            self.events.append(frame)

    # -- receiving -------------------------------------------------------------------------

    async def recv(self, timeout: float = 10) -> dict | None:
        """The next raw frame as a dict, after updating the roster; None when closed."""
        text = await asyncio.wait_for(self.ws.read_message(), timeout)
        if text is None:
            return None
        frame = json.loads(text)
        kind = frame.get("type")
        if kind == "joined":
            self._add_member(frame["participant"])
        elif kind == "joins":  # several joins of one moment (§6.2), in join order
            for entry in frame["participants"]:
                self._add_member(entry)
        elif kind == "rekeyed":
            self.members.pop(frame["old"], None)
            self._add_member(frame["participant"])
        elif kind == "left":
            self.members.pop(frame["sid"], None)
        elif kind == "roster":
            self.members = {}
            for entry in frame["participants"]:
                self._add_member(entry)
        elif kind == "ack":
            self.acks[frame["id"]] = frame["recipients"]
        return frame

    async def expect(self, kind: str, timeout: float = 10) -> dict:
        """The next frame of `kind`, kept earlier or read now; other frames go to `events`."""
        for index, frame in enumerate(self.events):
            if frame.get("type") == kind:
                return self.events.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame is None:
                raise ClientError(f"connection closed while waiting for {kind}")
            if frame.get("type") == kind:
                return frame
            if kind == "welcome" and frame.get("type") == "error":  # the join was refused
                raise ClientError(f"{frame['code']}: {frame['message']}")
            self.events.append(frame)

    async def next_message(self, timeout: float = 10) -> Message | Rejected:
        """The next relayed message, opened and checked (§7.4)."""
        frame = await self.expect("msg", timeout)
        return self.open(frame)

    def open(self, frame: dict) -> Message | Rejected:
        """§7.4: sender known and fresh, key/path/signature, then sequence and clock."""
        member = self.members.get(frame.get("from"))
        reject = lambda reason: Rejected(frame.get("id"), member.username if member else None, reason)  # noqa: E731
        if member is None or not member.verified:
            return reject("the sender is not a verified member of the room")
        try:
            opened = crypto.open_message(frame, self.room, member.fingerprint, member.identity_key, self.session)
        except (crypto.CryptoError, KeyError, TypeError) as exc:
            return reject(str(exc))
        if abs(frame["ts"] - time.time() * 1000) > self.skew_ms:
            return reject("the message time is outside the clock-skew window")
        seen = self._seen.setdefault(member.fingerprint, set())
        state = self._recv.setdefault(member.stream, {"last": 0, "missing": set()})
        late = opened.seq in state["missing"]
        if frame["id"] in seen or (opened.seq <= state["last"] and not late):
            return reject("replayed message")
        try:
            files = fc.parse_files(opened.body)
        except (crypto.CryptoError, KeyError, TypeError) as exc:
            return reject(str(exc))
        missed = 0
        if late:
            state["missing"].discard(opened.seq)
        else:
            missed = opened.seq - state["last"] - 1
            state["missing"].update(range(state["last"] + 1, opened.seq))
            state["last"] = opened.seq
        seen.add(frame["id"])
        return Message(frame["id"], member.username, member.fingerprint, opened.text, frame["ts"], files,
                       seq=opened.seq, missed=missed, late=late)

    async def unknown_recipients(self, msg_id: str, to: str, timeout: float = 10) -> list[str]:
        """Ask for a message's full recipient list, check it against its signed `to`, and return
        the sids this client does not know (ghosts)."""
        await self.send_frame({"v": 2, "type": "recipients", "id": msg_id})
        frame = await self.expect("recipients", timeout)
        if crypto.recipients_commitment(frame["sids"]) != to:
            raise ClientError("the server's recipient list does not match the message's commitment")
        return [sid for sid in frame["sids"] if sid not in self.members]

    # -- attachments (§10) -------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        """The server's base URL for HTTP, from the WebSocket URL: ws://h:p/ws -> http://h:p."""
        parts = urlsplit(self.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return urlunsplit((scheme, parts.netloc, "", "", ""))

    def _capability(self) -> dict[str, str]:
        if not self.attachments:
            raise AttachmentError("attachments_off", "this server issued no attachment capability")
        return {"Authorization": f"Bearer {self.attachments['token']}"}

    async def _call(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
                    timeout: float = 60, **options):
        request = HTTPRequest(self.http_url + path, method=method, headers={**self._capability(), **(headers or {})},
                              body=body, request_timeout=timeout, ssl_options=self.ssl_options,
                              allow_nonstandard_methods=True, **options)
        try:
            return await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            answer = {}
            if exc.response is not None and exc.response.body:
                try:
                    answer = json.loads(exc.response.body)
                except ValueError:
                    answer = {}
            raise AttachmentError(answer.get("error", "http_error"), answer.get("message", str(exc)),
                                  exc.code) from None

    async def upload_blob(self, blob_pieces, size: int, part_bytes: int = PART_BYTES) -> str:
        """Upload a blob of `size` bytes given as an iterable of pieces; returns its id (§10.5).

        The id the server answers must be the blob hash computed here, or the upload is refused.
        """
        start = await self._call("POST", "/api/blobs", {"Upload-Length": str(size)})
        upload = json.loads(start.body)["upload"]
        hasher, offset, part = fc.BlobHasher(), 0, bytearray()
        answer = None
        try:
            for piece in blob_pieces:
                hasher.update(piece)
                part += piece
                while len(part) >= part_bytes or (part and offset + len(part) == size):
                    chunk = bytes(part[:part_bytes])
                    del part[:part_bytes]  # O(1) at the front of a bytearray: a large piece is not re-copied per part
                    answer = await self._call("PATCH", f"/api/blobs/uploads/{upload}",
                                              {"Upload-Offset": str(offset)}, chunk)
                    offset += len(chunk)
        except BaseException:
            try:
                await self._call("DELETE", f"/api/blobs/uploads/{upload}")
            except (AttachmentError, OSError):
                pass
            raise
        if answer is None or answer.code != 201 or offset != size:
            raise AttachmentError("bad_size", f"the blob had {offset} bytes, not the {size} announced")
        blob_id = json.loads(answer.body)["id"]
        if blob_id != hasher.hexdigest():
            raise AttachmentError("bad_hash", "the server named the blob by a different hash")
        return blob_id

    async def upload_file(self, source: bytes | str | Path, name: str, type: str = "application/octet-stream", *,
                          width: int | None = None, height: int | None = None) -> fc.FileRef:
        """Encrypt a file (bytes or a path, read a piece at a time) under a fresh key and upload it."""
        if isinstance(source, (str, Path)):
            size = os.path.getsize(source)

            def pieces():
                with open(source, "rb") as fh:
                    while piece := fh.read(PART_BYTES):
                        yield piece
        else:
            size = len(source)

            def pieces():
                yield source
        limit = (self.attachments or {}).get("max_bytes", 0)
        if size > limit:
            raise AttachmentError("too_large", f"the file has {size} bytes; this server takes at most {limit}")
        key = fc.new_file_key()
        blob_id = await self.upload_blob(fc.encrypt_stream(key, pieces()), fc.blob_size(size))
        return fc.FileRef(blob_id, key, name, type, size, width, height)

    async def send_file(self, source: bytes | str | Path, name: str, type: str = "application/octet-stream", *,
                        text: str = "", width: int | None = None, height: int | None = None) -> tuple[str, fc.FileRef]:
        """Upload a file and send the message that carries its key; returns (message id, reference)."""
        ref = await self.upload_file(source, name, type, width=width, height=height)
        return await self.deliver(text, files=[ref]), ref

    async def fetch_blob(self, blob_id: str, on_chunk=None) -> bytes | None:
        """The raw blob; with on_chunk, each received piece goes there instead of into memory."""
        if on_chunk is None:
            return (await self._call("GET", f"/api/blobs/{blob_id}")).body
        await self._call("GET", f"/api/blobs/{blob_id}", streaming_callback=on_chunk)
        return None

    async def fetch_file(self, ref: fc.FileRef) -> bytes:
        """Download, verify (blob hash, size, every chunk) and decrypt a referenced file."""
        decryptor, hasher, plain = fc.Decryptor(ref.key), fc.BlobHasher(), []
        failure: list[Exception] = []

        def on_chunk(data: bytes) -> None:
            if failure:
                return
            hasher.update(data)
            try:
                plain.append(decryptor.push(data))
            except fc.FileCryptoError as exc:
                failure.append(exc)

        await self.fetch_blob(ref.id, on_chunk)
        if not failure:
            try:
                plain.append(decryptor.finish())
            except fc.FileCryptoError as exc:
                failure.append(exc)
        if failure:
            raise AttachmentError(failure[0].code, str(failure[0]))
        if hasher.hexdigest() != ref.id or hasher.size != ref.blob_size:
            raise AttachmentError("bad_hash", "the server sent a different blob than the message names")
        data = b"".join(plain)
        if len(data) != ref.size:
            raise AttachmentError("bad_size", "the file is not the size the message says")
        return data

    def _add_member(self, entry: dict) -> None:
        identity_key = crypto.load_identity_public_key(entry["identity_key"])
        session_key = crypto.load_session_public_key(entry["session_key"])
        text = crypto.session_text(self.room, entry["username"], entry["session_key"], entry["issued"],
                                   entry["challenge"], entry["stream"])
        verified = (
            crypto.verify(identity_key, text, entry["session_sig"])
            and crypto.fingerprint_of(crypto.spki_der(identity_key)) == entry["fingerprint"]
            and crypto.session_id_of(crypto.spki_der(session_key)) == entry["sid"]
            and crypto.session_age_problem(entry["issued"], int(time.time() * 1000)) is None
        )
        self.members[entry["sid"]] = Member(
            entry["sid"], entry["username"], entry["fingerprint"], identity_key, session_key, verified,
            entry["stream"],
        )
