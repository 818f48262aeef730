"""What the processes of a cluster say to each other through Redis, and the Redis keys they use.

Pure: encoding and decoding only. Every event is one JSON object on one channel, naming the
worker that sent it (`w`) and its kind (`e`):

  joined   {room, m: member}         a member joined that worker
  left     {room, sid}               a member of that worker left
  rekeyed  {room, old, m: member}    a member of that worker rotated its session key
  msgs     {lines: [<log record>]}   messages that worker validated and logged (§8 records), in
                                    order: all it relayed since its last PUBLISH, in one event
  hello    {}                        that worker (re)wrote its members: read them again
  rotate   {keep}                    rotate your ciphertext log now (`securechat logs rotate`)
  bye      {}                        that worker stops: its remaining members are gone

Requests for an HTTP-transport session (docs/PROTOCOL.md §1.2) that another process holds go
on HTTP_CHANNEL (who holds it?) or straight to one worker's inbox(worker), and answers to the
asking worker's inbox; each is a JSON header line, a newline, then the request's body bytes:

  post     {r, k: send|ack|close, t: token, h: headers, b: has a body}   run this POST
  answer   {r, mine, refusal}    `mine` false: not ours; refusal null: done (204)

A member is {"p": Participant.public(), "wkl": wrapped key length, "remote": address, and
"grant": grant_digest(its attachment capability) when attachments are on}: what another process
needs to list it in rosters, to check wrapped keys sent to it, and to honour its capability.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..relay.protocol import encode
from ..relay.room import Participant

PREFIX = "securechat"
CHANNEL = f"{PREFIX}:events"
WORKERS = f"{PREFIX}:workers"  # sorted set: worker id -> last heartbeat (ms)
HTTP_CHANNEL = f"{PREFIX}:http"  # POSTs for a session some other process holds
SECRET = f"{PREFIX}:secret"  # proves a request between two workers (web/blobs.py's proxy)

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


def worker_id(hostname: str, pid: int, nonce: str) -> str:
    """host:pid:nonce, in characters that need no escaping in JSON or in a Redis key."""
    return f"{_UNSAFE.sub('-', hostname)[:64] or 'host'}:{pid}:{nonce}"


def members_key(worker: str) -> str:
    return f"{PREFIX}:members:{worker}"


def info_key(worker: str) -> str:
    return f"{PREFIX}:worker:{worker}"


def names_key(room: str) -> str:
    """Per room: each present name's confusable skeletons (names.name_keys) -> its claim."""
    return f"{PREFIX}:names:{room}"


def name_fields(username: str) -> list[str]:
    from ..names import name_keys

    lowered, typed = name_keys(username)
    return [f"l:{lowered}", f"s:{typed}"]


def claimant(identity_key: str) -> str:
    """Who holds a name, the same in every process: its identity (a name comes back with it)."""
    return hashlib.sha256(identity_key.encode()).hexdigest()


def uploads_key(scope: str) -> str:
    """Per blob directory (BlobStore.scope): "<worker> <upload id>" -> the bytes it reserved."""
    return f"{PREFIX}:uploads:{scope}"


def inbox(worker: str) -> str:
    """What is said to one worker alone: POSTs for its sessions, answers to its questions."""
    return f"{PREFIX}:to:{worker}"


def grant_digest(token: str) -> str:
    """What other processes learn of a capability: enough to recognise it, not to use it."""
    return hashlib.sha256(token.encode()).hexdigest()


def member(participant: Participant) -> dict[str, Any]:
    return {"room": participant.room if hasattr(participant, "room") else "", "p": participant.public(),
            "wkl": participant.wrapped_key_length, "remote": participant.remote}


def participant_from(data: dict[str, Any], connection: Any) -> Participant:
    public = data["p"]
    fields = {key: public[key] for key in ("sid", "username", "fingerprint", "identity_key", "session_key",
                                           "session_sig", "joined", "issued", "challenge", "stream")}
    participant = Participant(**fields, wrapped_key_length=int(data["wkl"]), remote=str(data.get("remote", "")),
                              connection=connection)
    if data.get("room"):
        participant.room = data["room"]  # a field once rooms (issue 16) are in
    return participant


def event(worker: str, kind: str, **fields) -> str:
    return encode({"w": worker, "e": kind, **fields})


def _head(worker: str) -> str:
    return f'{{"w":"{worker}",'


def own_prefix(worker: str) -> bytes:
    """How every event a worker publishes begins (`event` and `msgs_event` both start so): the
    listener drops its own by comparing bytes, before paying for a JSON parse of a whole record."""
    return _head(worker).encode()


def msgs_event(worker: str, log_lines: list[str]) -> str:
    """The messages event carries the log records as they were written, not re-encoded."""
    return f'{_head(worker)}"e":"msgs","lines":[{",".join(log_lines)}]}}'


def decode(data: bytes | str) -> dict[str, Any] | None:
    """An event, or None for anything that is not one (another program on the channel)."""
    try:
        decoded = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("w"), str) or not isinstance(decoded.get("e"), str):
        return None
    return decoded


def with_body(worker: str, kind: str, body: bytes | None = None, **fields) -> bytes:
    """An event followed by raw bytes (an HTTP body), on HTTP_CHANNEL and the inboxes."""
    return encode({"w": worker, "e": kind, "b": body is not None, **fields}).encode() + b"\n" + (body or b"")


def decode_with_body(data: bytes) -> tuple[dict[str, Any], bytes | None] | None:
    head, newline, body = data.partition(b"\n")
    event = decode(head)
    if event is None or not newline:
        return None
    return event, (body if event.get("b") else None)
