"""Rooms: who is in them, and which bytes each member receives for a message. No sockets.

A Room holds its participants and decides routing; the WebSocket handler hands it parsed
frames and writes what it returns. Members carry an opaque `connection` the room never calls,
so the same Room works under tests with no server. Rooms is the registry of the rooms that
exist now: a room exists while someone is in it, and a Room knows nothing of the others, so
no frame or roster can cross from one to another.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .. import names
from .admission import address_keys
from .protocol import VERSION, Msg, ProtocolError, encode


@dataclass(eq=False)
class Participant:
    sid: str
    username: str
    fingerprint: str
    identity_key: str
    session_key: str
    session_sig: str
    wrapped_key_length: int  # base64 length of a key wrapped to this session's modulus
    joined: int
    issued: int = 0
    challenge: str = ""
    stream: str = ""
    remote: str = ""
    connection: Any = None
    room: str = ""  # the room it joined; "" is the default room
    # public() as JSON, encoded once: a welcome lists every member, so a burst of M joins would
    # otherwise encode M²/2 entries (~900 bytes each). Room.rekey clears it.
    _public_json: str | None = field(default=None, repr=False)

    def public_json(self) -> str:
        if self._public_json is None:
            self._public_json = encode(self.public())
        return self._public_json

    def public(self) -> dict:
        return {
            "sid": self.sid,
            "username": self.username,
            "fingerprint": self.fingerprint,
            "identity_key": self.identity_key,
            "session_key": self.session_key,
            "issued": self.issued,
            "challenge": self.challenge,
            "stream": self.stream,
            "session_sig": self.session_sig,
            "joined": self.joined,
        }

    def as_sender(self) -> dict:
        return {"sid": self.sid, "username": self.username, "fingerprint": self.fingerprint}


@dataclass
class Relay:
    """A message accepted for relay: one log line and one frame per recipient."""

    sender: Participant
    msg: Msg
    log_line: str  # the ciphertext log record (§8), serialised
    head: str  # every recipient's frame up to its wrapped key, serialised once
    targets: list[tuple[Participant, str]]  # (recipient, its wrapped key)
    recipients_json: str  # the sorted sids as a JSON array: what a `recipients` request gets

    def deliveries(self, targets: list[tuple[Participant, str]] | None = None):
        """(recipient, frame) pairs, each frame built just before it is needed, for every
        target or for those of `targets` (a cluster builds none for members it does not hold).

        Building all N frames first would put N copies of the shared part in memory at once
        (2 MB at N = 250), evicting each from the CPU cache before the socket write reads it.
        """
        head = self.head
        for recipient, wrapped in self.targets if targets is None else targets:
            # protocol.parse_frame admitted each wrapped key only as canonical base64, whose
            # alphabet needs no JSON escaping: quoting it is exactly what json.dumps would do.
            yield recipient, head + wrapped + '"}'


def _string_array(texts: list[str]) -> str:
    """JSON for a list of strings that need no escaping (hex session ids)."""
    return '["' + '","'.join(texts) + '"]' if texts else "[]"


def _string_object(mapping: dict[str, str]) -> str:
    """JSON for a str -> str map whose keys and values need no escaping (sid -> wrapped key)."""
    return '{"' + '","'.join(map('":"'.join, mapping.items())) + '"}' if mapping else "{}"


class ReplayGuard:
    """Message ids seen per identity, remembered only as long as their timestamp could pass.

    A message whose `ts` is more than `window_ms` from the server's clock is refused as
    clock_skew anyway, so an id need not be remembered past ts + window. Ids are forgotten in
    the order they were remembered, and an identity with none left is dropped: before, each
    identity's ids were pruned only when their count reached a multiple of 256, so everyone who
    had ever sent a message stayed here for good (~150 bytes per message, for the server's
    lifetime).
    """

    def __init__(self, window_ms: int):
        self.window_ms = window_ms
        self._seen: dict[str, dict[str, int]] = {}
        # (forget after, fingerprint, id) in the order remembered. An entry is forgotten at
        # max(ts, now) + window: never before ts + window, and entries behind one with a
        # future ts wait for it at most one window longer.
        self._expiry: deque[tuple[int, str, str]] = deque()

    def seen(self, fingerprint: str, msg_id: str) -> bool:
        return msg_id in self._seen.get(fingerprint, ())

    def remember(self, fingerprint: str, msg_id: str, ts: int, now_ms: int) -> None:
        self.prune(now_ms)
        self._seen.setdefault(fingerprint, {})[msg_id] = ts
        self._expiry.append((max(ts, now_ms) + self.window_ms, fingerprint, msg_id))

    def prune(self, now_ms: int) -> None:
        """Forget every id whose timestamp can no longer pass the clock check."""
        expiry, seen = self._expiry, self._seen
        while expiry and expiry[0][0] < now_ms:
            _, fingerprint, msg_id = expiry.popleft()
            ids = seen.get(fingerprint)
            if ids is not None:
                ids.pop(msg_id, None)
                if not ids:
                    del seen[fingerprint]

    def __len__(self) -> int:
        """Ids remembered, over all identities."""
        return len(self._expiry)

    def identities(self) -> int:
        return len(self._seen)


@dataclass
class Room:
    name: str
    max_participants: int = 256
    max_clock_skew_ms: int = 300_000
    created: int = 0  # ms, when its first member joined
    members: dict[str, Participant] = field(default_factory=dict)
    # [by lowercased skeleton, by skeleton as typed] (names.name_keys) -> member
    _by_name: tuple[dict, dict] = field(default_factory=lambda: ({}, {}))
    _keys: dict[Participant, tuple[str, str]] = field(default_factory=dict)
    _by_fingerprint: dict[str, Participant] = field(default_factory=dict)
    _replays: ReplayGuard = field(init=False)
    # Bumped whenever the roster changes, so an encoding of it can be cached (hub.roster_frame).
    revision: int = 0
    _lengths: tuple[int, set] = field(default=(-1, set()), repr=False)  # (revision, _key_lengths())

    # Recent messages' recipient lists, for `recipients` requests (§6.1): id -> JSON array.
    _recipient_lists: OrderedDict = field(default_factory=OrderedDict)
    recipient_lists_kept: int = 512

    def __post_init__(self):
        self._replays = ReplayGuard(self.max_clock_skew_ms)

    # -- membership ------------------------------------------------------------------------

    def add(self, participant: Participant) -> Participant | None:
        """Admit a participant; returns the older session of the same identity it replaces."""
        holder = self.admits(participant)
        if holder is not None:
            self.remove(holder)
        self.members[participant.sid] = participant
        keys = names.name_keys(participant.username)
        self._keys[participant] = keys
        for index, key in enumerate(keys):
            self._by_name[index][key] = participant
        self._by_fingerprint[participant.fingerprint] = participant
        self.revision += 1
        return holder

    def admits(self, participant: Participant) -> Participant | None:
        """Whether `participant` may join now (ProtocolError if not), changing nothing; the
        older session of the same identity it would replace. The Hub asks first and writes the
        log before anything changes, so a failed write leaves no member behind.

        Names are compared on their confusable skeletons (§5): "аlice" or "a1ice" is refused
        while alice is here, unless it is alice's own identity coming back. One identity holds
        one name: the same key under a second name would let that name borrow its ✓ Verified.
        """
        keys = names.name_keys(participant.username)
        holder = None
        for other in self._holders(keys):
            if other.fingerprint == participant.fingerprint:
                holder = other
                continue
            if other.username.casefold() == participant.username.casefold():
                raise ProtocolError("username_taken", f"{participant.username!r} is already in the room")
            raise ProtocolError(
                "username_taken", f"{participant.username!r} looks like {other.username!r}, who is already in the room"
            )
        same_identity = self._by_fingerprint.get(participant.fingerprint)
        if same_identity is not None and same_identity is not holder:
            raise ProtocolError(
                "identity_in_use", f"this identity is already in the room as {same_identity.username!r}"
            )
        if participant.sid in self.members and self.members[participant.sid] is not holder:
            raise ProtocolError("bad_key", "this session key is already in use")
        if holder is None and len(self.members) >= self.max_participants:
            raise ProtocolError("room_full", f"the room is full ({self.max_participants} people)")
        return holder

    def _holders(self, keys: tuple[str, str]) -> list[Participant]:
        found = [self._by_name[index].get(key) for index, key in enumerate(keys)]
        return [p for i, p in enumerate(found) if p is not None and p not in found[:i]]

    def remove(self, participant: Participant) -> bool:
        """Remove this exact participant; False if it was already gone or replaced."""
        if self.members.get(participant.sid) is not participant:
            return False
        del self.members[participant.sid]
        for index, key in enumerate(self._keys.pop(participant)):
            if self._by_name[index].get(key) is participant:
                del self._by_name[index][key]
        if self._by_fingerprint.get(participant.fingerprint) is participant:
            del self._by_fingerprint[participant.fingerprint]
        self.revision += 1
        return True

    def rekey(self, participant: Participant, *, sid: str, session_key: str, session_sig: str,
              wrapped_key_length: int, issued: int, challenge: str) -> str:
        """Swap a member's session key in place (§4 rotation); returns the old sid."""
        if sid in self.members:
            raise ProtocolError("bad_key", "this session key is already in use")
        old = participant.sid
        self.members = {(sid if key == old else key): member for key, member in self.members.items()}
        participant.sid, participant.session_key, participant.session_sig = sid, session_key, session_sig
        participant.wrapped_key_length, participant.issued, participant.challenge = wrapped_key_length, issued, challenge
        self.revision += 1  # the roster now carries the new sid and key
        participant._public_json = None
        return old

    def roster(self) -> list[dict]:
        return [p.public() for p in self.members.values()]

    def roster_json(self) -> str:
        """roster() as a JSON array, from each member's cached encoding."""
        return "[" + ",".join(p.public_json() for p in self.members.values()) + "]"

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.members.values() if p is not participant]

    def find(self, username: str) -> Participant | None:
        """The member whose name is, or looks like, `username`."""
        found = self._holders(names.name_keys(username))
        return found[0] if found else None

    # -- routing ---------------------------------------------------------------------------

    def prepare(self, sender: Participant, msg: Msg, now_ms: int,
                attachments: list[dict] | None = None) -> Relay:
        """Check a message against the room (§7.5) and build what goes out; changes nothing.

        `attachments` are the message's blob references as the log keeps them ({"id", "size"},
        §8); the caller checked that they exist for this room.
        """
        members, keys = self.members, msg.keys
        # Both checks first as set operations in C (a message to 250 spent ~60 µs in these two
        # loops); only a message that fails one is looked at entry by entry, to name the culprits.
        if not members.keys() >= keys.keys():
            stale = sorted(sid for sid in keys if sid not in members)
            raise ProtocolError(
                "stale_recipients",
                f"{len(stale)} recipient(s) are no longer in the room; refresh the roster and re-send",
                msg_id=msg.id, stale=stale,
            )
        if set(map(len, keys.values())) != self._key_lengths():
            for sid, wrapped in keys.items():
                if len(wrapped) != members[sid].wrapped_key_length:
                    raise ProtocolError(
                        "bad_recipient_key", f"the wrapped key for {sid} has the wrong length", msg_id=msg.id
                    )
        if self._replays.seen(sender.fingerprint, msg.id):
            raise ProtocolError("replay", "this message was already sent", msg_id=msg.id)
        if abs(msg.ts - now_ms) > self.max_clock_skew_ms:
            raise ProtocolError(
                "clock_skew", "the message time is too far from the server's clock; check the device clock",
                msg_id=msg.id,
            )
        recipients = _string_array(sorted(msg.keys))
        return Relay(
            sender=sender,
            msg=msg,
            log_line=self._log_line(sender, msg, recipients, now_ms, attachments),
            head=self.delivery_head(sender, msg),
            targets=list(zip(map(members.__getitem__, keys), keys.values())),
            recipients_json=recipients,
        )

    def _key_lengths(self) -> set[int]:
        """The members' wrapped-key lengths when they all share one ({L}), else an empty set
        (which no message's set of lengths equals, so prepare checks it entry by entry).
        Recomputed only after the roster changed (revision)."""
        if self._lengths[0] != self.revision:
            lengths = {p.wrapped_key_length for p in self.members.values()}
            self._lengths = (self.revision, lengths if len(lengths) == 1 else set())
        return self._lengths[1]

    @property
    def replays(self) -> ReplayGuard:
        return self._replays

    def forget_old(self, now_ms: int) -> None:
        """Drop replay ids that can no longer matter (ReplayGuard.prune)."""
        self._replays.prune(now_ms)

    def commit(self, relay: Relay, now_ms: int) -> None:
        """The relay was logged: from now on its id counts as used and its list can be asked for."""
        self._replays.remember(relay.sender.fingerprint, relay.msg.id, relay.msg.ts, now_ms)
        lists = self._recipient_lists
        lists[relay.msg.id] = relay.recipients_json
        if len(lists) > self.recipient_lists_kept:
            lists.popitem(last=False)

    def recipient_list(self, msg_id: str) -> str | None:
        """The JSON array of a recent message's recipient sids, or None once forgotten."""
        return self._recipient_lists.get(msg_id)

    def _log_line(self, sender: Participant, msg: Msg, recipients_json: str, now_ms: int,
                  attachments: list[dict] | None = None) -> str:
        """The §8 record, byte for byte what json.dumps would write, in a fifth of the time.

        The two lists that grow with the room are joined by hand: session ids are lowercase hex
        and wrapped keys canonical base64 (protocol.parse_frame admitted nothing else), and
        neither alphabet needs JSON escaping. At N = 250 json.dumps took ~0.36 ms of this.
        """
        before = encode({
            "event": "msg", "t": now_ms, "room": self.name, "id": msg.id,
            "from": sender.as_sender(), "ts": msg.ts,
        })
        files = f',"attachments":{encode(attachments)}' if attachments else ""
        return (f'{before[:-1]},"recipients":{recipients_json},"iv":"{msg.iv}","ct":"{msg.ct}",'
                f'"to":"{msg.to}","sig":"{msg.sig}","keys":{_string_object(msg.keys)}{files}}}')

    @staticmethod
    def delivery_head(sender: Participant, msg: Msg) -> str:
        """Every recipient's frame (§6.2) up to its wrapped key.

        Built by hand: every value is a hex id, canonical base64 or an integer that
        protocol.parse_frame admitted, and none of those alphabets needs JSON escaping
        (tests/test_room.py compares it with json.dumps).
        """
        return (f'{{"v":{VERSION},"type":"msg","from":"{sender.sid}","id":"{msg.id}","ts":{msg.ts},'
                f'"iv":"{msg.iv}","ct":"{msg.ct}","to":"{msg.to}","sig":"{msg.sig}","key":"')

    def membership_record(self, event: str, participant: Participant, now_ms: int) -> dict:
        return {"event": event, "t": now_ms, "room": self.name, **participant.as_sender()}


class Rooms:
    """The rooms of this server by name: each exists while someone is in it.

    The default room (`[server] room`) is always open and not counted against `max_rooms`;
    every other room is made by its first join and dropped with its last member. One address
    (an IPv6 /64: NETWORK_FACTOR times as many) may be in at most `max_rooms_per_address`
    rooms at once, however many people behind it are in each.
    """

    def __init__(self, default: str, *, max_participants: int, max_clock_skew_ms: int,
                 max_rooms: int = 1000, max_rooms_per_address: int = 16):
        self.default = default
        self.max_rooms = max_rooms
        self.max_rooms_per_address = max_rooms_per_address
        self._options = {"max_participants": max_participants, "max_clock_skew_ms": max_clock_skew_ms}
        self._rooms: dict[str, Room] = {}
        # address key -> {room name: members from there}
        self._by_address: dict[str, dict[str, int]] = {}

    def name_of(self, participant: Participant) -> str:
        return participant.room or self.default

    def find(self, name: str | None = None) -> Room | None:
        """The room called `name` (None: the default room) if anyone is in it."""
        return self._rooms.get(name or self.default)

    def get(self, name: str | None = None) -> Room:
        """The room called `name`, or an empty one standing for it when nobody is in it.

        For reading only: an empty stand-in is not registered, so people join through admit().
        """
        name = name or self.default
        return self._rooms.get(name) or Room(name, **self._options)

    def admits(self, participant: Participant, now_ms: int) -> tuple[Room, Participant | None]:
        """Whether a participant may join its room now, changing nothing (the Hub then writes
        the log, then calls add): its room — a new one, not yet registered, for a first join —
        and the older session of the same identity it would replace (see Room.admits).

        Refused with ProtocolError: a new room past max_rooms (`too_many_rooms`), a room past
        max_rooms_per_address for this address (`too_many_rooms_joined`), and whatever
        Room.admits refuses.
        """
        name = self.name_of(participant)
        room = self._rooms.get(name)
        if room is None:
            if name != self.default and self.named() >= self.max_rooms:
                raise ProtocolError("too_many_rooms", f"this server has {self.max_rooms} rooms open, the most it "
                                    "allows; join a room that exists, or try again later")
            room = Room(name, created=now_ms, **self._options)
        for key, factor in address_keys(participant.remote):
            held = self._by_address.get(key, {})
            limit = self.max_rooms_per_address * factor
            if name not in held and len(held) >= limit:
                raise ProtocolError("too_many_rooms_joined", f"your address is in {len(held)} rooms already, the "
                                    "most this server allows; leave one of them first")
        return room, room.admits(participant)

    def add(self, room: Room, participant: Participant) -> Participant | None:
        """Put a participant admits() accepted in `room` (registering a new room); returns the
        session it replaced."""
        name = self.name_of(participant)
        replaced = room.add(participant)
        self._rooms[name] = room
        if replaced is not None:
            self._uncount(replaced, name)
        self._count(participant, name)
        return replaced

    def admit(self, participant: Participant, now_ms: int) -> tuple[Room, Participant | None]:
        """admits() then add(), for callers with nothing to do in between."""
        room, _ = self.admits(participant, now_ms)
        return room, self.add(room, participant)

    def remove(self, participant: Participant) -> Room | None:
        """Take this exact participant out; returns the room it left (dropped from the registry
        when it was the last one), or None when it was already gone or replaced."""
        name = self.name_of(participant)
        room = self._rooms.get(name)
        if room is None or not room.remove(participant):
            return None
        self._uncount(participant, name)
        if not room.members:
            del self._rooms[name]
        return room

    def named(self) -> int:
        """How many rooms other than the default one exist."""
        return len(self._rooms) - (self.default in self._rooms)

    def rooms_of(self, remote: str) -> int:
        """How many rooms someone at `remote` (its own address) is in."""
        return len(self._by_address.get(address_keys(remote)[0][0], ()))

    def _count(self, participant: Participant, name: str) -> None:
        for key, _ in address_keys(participant.remote):
            held = self._by_address.setdefault(key, {})
            held[name] = held.get(name, 0) + 1

    def _uncount(self, participant: Participant, name: str) -> None:
        for key, _ in address_keys(participant.remote):
            held = self._by_address.get(key, {})
            left = held.pop(name, 1) - 1
            if left > 0:
                held[name] = left
            if not held:
                self._by_address.pop(key, None)  # an emptied key is dropped, so the map never grows

    def __iter__(self):
        return iter(list(self._rooms.values()))

    def __len__(self) -> int:
        return len(self._rooms)

    def participants(self) -> list[Participant]:
        return [p for room in self for p in room.members.values()]
