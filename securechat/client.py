"""The Python reference client of protocol v1: join, send, receive, verify and decrypt.

It proves the protocol is implementable outside the browser, and the tests and the benchmark
drive the server through it. Receiving applies every check of docs/PROTOCOL.md §7.4; a frame
that fails one comes back as a Rejected event, never as a message.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from . import crypto


@dataclass
class Member:
    sid: str
    username: str
    fingerprint: str
    identity_key: object
    session_key: object
    verified: bool  # the session-key signature checked out


@dataclass
class Message:
    id: str
    sender: str
    fingerprint: str
    text: str
    ts: int


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


@dataclass
class ChatClient:
    url: str
    username: str
    identity: crypto.Identity = field(default_factory=crypto.Identity.generate)
    skew_ms: int = 300_000
    ws: WebSocketClientConnection | None = None
    session: crypto.SessionKey | None = None
    room: str = ""
    members: dict[str, Member] = field(default_factory=dict)
    counter: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    events: list = field(default_factory=list)
    _seen: dict[str, set] = field(default_factory=dict)
    _last_counter: dict[str, int] = field(default_factory=dict)

    # -- connecting ------------------------------------------------------------------------

    async def connect(self, *, origin: str | None = None, ssl_options=None, timeout: float = 10) -> dict:
        """Open the socket, read the server's hello, join, and return the welcome frame."""
        headers = {"Origin": origin} if origin else {}
        request = HTTPRequest(self.url, headers=headers, ssl_options=ssl_options)
        self.ws = await asyncio.wait_for(websocket_connect(request), timeout)
        self.room = (await self.expect("hello", timeout=timeout))["room"]
        return await self.join(timeout=timeout)

    async def join(self, *, timeout: float = 10) -> dict:
        """Join the room the hello named, with a fresh session key."""
        self.session = crypto.SessionKey.generate()
        self.counter = 0
        await self.send_frame(self.join_frame(self.room))
        welcome = await self.expect("welcome", timeout=timeout)
        self.members = {}
        for entry in welcome["participants"]:
            self._add_member(entry)
        return welcome

    def join_frame(self, room: str) -> dict:
        return {
            "v": 1, "type": "join", "username": self.username,
            "identity_key": self.identity.spki_b64, "session_key": self.session.spki_b64,
            "session_sig": crypto.sign_session(self.identity, room, self.username, self.session.spki_b64),
        }

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

    def seal(self, text: str, recipients: list[Member] | None = None) -> dict:
        """Build the next msg frame to every verified member (or the given ones)."""
        targets = [m for m in (recipients or self.members.values()) if m.verified]
        self.counter += 1
        return crypto.seal_message(
            identity=self.identity, sender_sid=self.sid, room=self.room, text=text,
            recipients=[crypto.Recipient(m.sid, m.session_key) for m in targets], counter=self.counter,
        )

    async def send(self, text: str) -> str:
        frame = self.seal(text)
        await self.send_frame(frame)
        return frame["id"]

    async def deliver(self, text: str, timeout: float = 10) -> str:
        """Send and wait for the ack; after `stale_recipients`, refresh the roster and re-send once."""
        for attempt in range(2):
            frame = self.seal(text)
            await self.send_frame(frame)
            outcome = await self._outcome(frame["id"], timeout)
            if outcome["type"] == "ack":
                return frame["id"]
            if outcome["code"] != "stale_recipients" or attempt:
                raise ClientError(f"{outcome['code']}: {outcome['message']}")
            await self.send_frame({"v": 1, "type": "roster"})
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
        sender = frame.get("from", {})
        member = self.members.get(sender.get("sid"))
        reject = lambda reason: Rejected(frame.get("id"), sender.get("username"), reason)  # noqa: E731
        if member is None or not member.verified or member.fingerprint != sender.get("fingerprint"):
            return reject("the sender is not a verified member of the room")
        if abs(frame["ts"] - time.time() * 1000) > self.skew_ms:
            return reject("the message time is outside the clock-skew window")
        seen = self._seen.setdefault(member.fingerprint, set())
        if frame["id"] in seen or frame["counter"] <= self._last_counter.get(member.sid, 0):
            return reject("replayed message")
        try:
            text = crypto.open_message(frame, member.identity_key, self.session)
        except (crypto.CryptoError, KeyError, TypeError) as exc:
            return reject(str(exc))
        seen.add(frame["id"])
        self._last_counter[member.sid] = frame["counter"]
        return Message(frame["id"], member.username, member.fingerprint, text, frame["ts"])

    def _add_member(self, entry: dict) -> None:
        identity_key = crypto.load_identity_public_key(entry["identity_key"])
        session_key = crypto.load_session_public_key(entry["session_key"])
        text = crypto.session_text(self.room, entry["username"], entry["session_key"])
        verified = (
            crypto.verify(identity_key, text, entry["session_sig"])
            and crypto.fingerprint_of(crypto.spki_der(identity_key)) == entry["fingerprint"]
            and crypto.session_id_of(crypto.spki_der(session_key)) == entry["sid"]
        )
        self.members[entry["sid"]] = Member(
            entry["sid"], entry["username"], entry["fingerprint"], identity_key, session_key, verified
        )
