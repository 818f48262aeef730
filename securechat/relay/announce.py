"""`joined` announcements, coalesced: a burst of joins costs each member one frame, not one per join.

Every join used to send a `joined` frame to every other member at once: a room of browsers
reconnecting after a restart (1,000 joins within a second) made ~500,000 frames, each a write
call and a Tornado task, and took 15 s. Now a join is announced a moment later (COALESCE
seconds), together with every other join of that moment: a member who has to hear of one join
gets the plain `joined` frame as before, a member who has to hear of several gets them in one
`joins` frame (PROTOCOL.md §6.2), in join order.

Order is kept: the Hub calls flush() before it sends anything else to a room's members (a
message, a rekey, a leave, a roster), so nobody ever sees a message from, or the leave of, a
member it has not yet heard join. A member never hears of a join its own welcome already listed
(each member's welcome is stamped with the join sequence number of its moment). No sockets are
touched here except through Participant.connection.send.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_right

from .protocol import VERSION
from .room import Participant, Room

# How long a join waits for company before it is announced. Short enough that nobody notices
# (a person reads "bob joined" seconds later anyway); long enough that a burst shares frames.
COALESCE = 0.02


class JoinAnnouncer:
    """`guard`: a context manager the sends run inside (the Hub's fan-out marker, so a stalled
    reader's leave waits until every announcement went out)."""

    def __init__(self, delay: float = COALESCE, guard=contextlib.nullcontext):
        self.delay = delay
        self._guard = guard
        self._seq = 0
        self._stamp: dict[Participant, int] = {}  # member -> join sequence number of its welcome
        self._pending: dict[str, tuple[Room, list[tuple[int, Participant]]]] = {}  # by room name
        self._timer: asyncio.TimerHandle | None = None

    def welcomed(self, participant: Participant) -> None:
        """The member's welcome just listed the room as it is now: only later joins are news to it."""
        self._seq += 1
        self._stamp[participant] = self._seq

    def joined(self, room: Room, participant: Participant) -> None:
        """Announce this (welcomed) member to the others, soon."""
        self._pending.setdefault(room.name, (room, []))[1].append((self._stamp[participant], participant))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def forget(self, participant: Participant) -> None:
        self._stamp.pop(participant, None)

    def flush(self) -> None:
        """Send every pending announcement now (the Hub calls this before any other room frame)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        with self._guard():
            for room, entries in pending.values():
                self._announce(room, entries)

    def _announce(self, room: Room, entries: list[tuple[int, Participant]]) -> None:
        # A member replaced by a newer session of its own in the same moment is no news any more.
        entries = [(seq, p) for seq, p in entries if room.members.get(p.sid) is p]
        if not entries:
            return
        seqs = [seq for seq, _ in entries]
        texts = [p.public_json() for _, p in entries]
        # All entries joined once; member i's frame is a suffix of it (one copy, not a re-join).
        whole = ",".join(texts)
        starts, at = [], 0
        for text in texts:
            starts.append(at)
            at += len(text) + 1
        single = [f'{{"v":{VERSION},"type":"joined","participant":{text}}}' for text in texts]
        many: dict[int, str] = {}
        for member in list(room.members.values()):
            first = bisect_right(seqs, self._stamp.get(member, 0))
            news = len(entries) - first
            if news <= 0:
                continue
            if news == 1:
                member.connection.send(single[first])
                continue
            text = many.get(first)
            if text is None:
                text = many[first] = f'{{"v":{VERSION},"type":"joins","participants":[{whole[starts[first]:]}]}}'
            member.connection.send(text)
