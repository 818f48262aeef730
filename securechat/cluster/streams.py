"""An HTTP-transport stream resumed on a process that does not hold its session.

A fallback session (docs/PROTOCOL.md §1.2) lives in the process that opened it; a dropped
stream comes back as `GET /stream?session=<id>&last=<n>`, which a load balancer (or the shared
accept queue of `serve --workers`) may hand to any process. That process (the asker) asks the
others on HTTP_CHANNEL who holds the session, as for a POST; the holder attaches a
RelayedStream to the session in place of a StreamHandler, so the session replays every frame
after n and carries on exactly as with a stream of its own, while each write goes to the
asker's inbox through Redis and the asker writes it to its HTTP response, byte for byte (event
ids included). The session never moves: its Hub member, pipeline, rate budget and unacked
buffer stay where they were; only its stream's bytes travel.

The relay ends like a stream: the holder ends it (superseded by a newer resume, the session
closed), or the asker's client goes away (the asker says `detach`), or either process goes
(the other drops its relays; the client resumes again). The holder learns that an asker went
silently from PUBLISH reaching nobody, and detaches then.

Events (each a header line and raw bytes, events.with_body):
  resume   {r, i: session id, last}      on HTTP_CHANNEL: whoever holds session i, attach
                                         relay r of the asker; answered like a post (`answer`)
  frames   {r} + bytes                   holder -> asker: write these to relay r's response
  end      {r} + bytes                   holder -> asker: write these, then end the response
  detach   {r, slow}                     asker -> holder: relay r's client went away, or (slow)
                                         filled the asker's write buffer: drop it as too slow
"""

from __future__ import annotations

import asyncio
import logging

from . import events

log = logging.getLogger("securechat")

EVENTS = ("resume", "frames", "end", "detach")


class RelayedStream:
    """Holder side: what a StreamSession writes to, in place of a StreamHandler."""

    def __init__(self, relays: "StreamRelays", asker: str, number: int):
        self.relays = relays
        self.asker = asker
        self.number = number
        self.session = None  # the StreamSession it carries, once attached
        self.ended = False

    @property
    def key(self) -> tuple[str, int]:
        return self.asker, self.number

    def write_raw(self, data: bytes) -> None:
        if not self.ended:
            self.relays.send_to_asker(self, "frames", data)

    def end(self, data: bytes) -> None:
        if self.ended:
            return
        self.ended = True
        self.relays.outgoing.pop(self.key, None)
        self.relays.send_to_asker(self, "end", data)

    def unlimit(self) -> None:
        """The asker's HTTP connection has its own write limit; nothing to lift here."""

    def lost(self) -> None:
        """The asker cannot hear us any more: the session waits for the client's next resume."""
        if self.ended:
            return
        self.ended = True
        self.relays.outgoing.pop(self.key, None)
        if self.session is not None:
            self.session.detach(self)


class StreamRelays:
    """One process's relayed streams: those it writes for others, and those it writes out."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.outgoing: dict[tuple[str, int], RelayedStream] = {}  # holder: (asker, r) -> relay
        self.incoming: dict[int, object] = {}  # asker: r -> the StreamHandler writing it out
        self.holders: dict[int, str] = {}  # asker: r -> the worker holding its session

    # -- asker ---------------------------------------------------------------------------------

    async def resume(self, session_id: str, last: int, handler) -> dict | None:
        """Have the process holding `session_id` carry it on through `handler` (which gets
        relayed(data, end) calls). Returns None once attached, or the holder's refusal;
        KeyError: no process holds it; ConnectionError/TimeoutError: it cannot be asked now."""
        cluster = self.cluster
        number = cluster.next_call()
        self.incoming[number] = handler
        handler.relay_number = number
        try:
            holder, refusal, _, _ = await cluster.ask("resume", number, i=session_id, last=last)
        except BaseException:
            self.incoming.pop(number, None)
            raise
        if refusal is not None:
            self.incoming.pop(number, None)
            return refusal
        if number in self.incoming:  # (not ended already by the frames that followed the answer)
            self.holders[number] = holder
        return None

    def detach(self, number: int, too_slow: bool = False) -> None:
        """Our client of relay `number` went away: tell its holder (the session stays there),
        or it stopped reading (`too_slow`: the holder drops the session as a slow reader)."""
        self.incoming.pop(number, None)
        holder = self.holders.pop(number, None)
        if holder is not None:
            data = events.with_body(self.cluster.id, "detach", r=number, slow=too_slow)
            self.cluster._send(("PUBLISH", events.inbox(holder), data))

    def _relayed(self, event: dict, body: bytes | None, end: bool) -> None:
        number = event["r"]
        handler = self.incoming.get(number)
        if handler is None or self.holders.get(number, event["w"]) != event["w"]:
            if not end:  # its client is gone (or it never was ours): the holder stops sending
                data = events.with_body(self.cluster.id, "detach", r=number)
                self.cluster._send(("PUBLISH", events.inbox(event["w"]), data))
            return
        if end:
            self.incoming.pop(number, None)
            self.holders.pop(number, None)
        handler.relayed(body or b"", end)

    # -- holder --------------------------------------------------------------------------------

    def _resume(self, event: dict) -> None:
        from ..relay import stream

        cluster, asker, number = self.cluster, event["w"], event["r"]
        sessions = cluster.streams
        session_id, last = event["i"], event["last"]
        if sessions is None or not isinstance(session_id, str) or not sessions.knows(session_id):
            cluster.answer(asker, number, False)
            return
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            cluster.answer(asker, number, True, {"status": 400, "error": "bad_request",
                                                 "message": "last must be a non-negative integer"})
            return
        cluster.answered += 1
        relay = RelayedStream(self, asker, number)
        # The answer goes first: the asker opens its response on it, then the frames follow on
        # the same channel, in order.
        refusal = stream.answer_resume(sessions, session_id, last, relay,
                                       before_attach=lambda: cluster.answer(asker, number, True))
        if refusal is not None:
            cluster.answer(asker, number, True, refusal)
        elif relay.session is not None and not relay.ended:
            self.outgoing[relay.key] = relay

    def send_to_asker(self, relay: RelayedStream, kind: str, data: bytes) -> None:
        cluster = self.cluster
        message = events.with_body(cluster.id, kind, data, r=relay.number)
        future = asyncio.get_running_loop().create_future()
        cluster._send(("PUBLISH", events.inbox(relay.asker), message), future)

        def delivered(done: asyncio.Future) -> None:
            # Redis down, or nobody subscribed to the asker's inbox any more (it is gone).
            if done.cancelled() or done.exception() is not None or not done.result():
                relay.lost()

        future.add_done_callback(delivered)

    def _detach(self, event: dict) -> None:
        relay = self.outgoing.get((event["w"], event["r"]))
        if relay is None:
            return
        session = relay.session
        relay.lost()
        if event.get("slow") is True and session is not None and session.stream is None:
            # Its client stopped reading the asker's response, whose write buffer is capped at
            # max_outbound_bytes like our own streams': the same end as a slow reader of ours.
            session.drop_slow_reader()

    # -- both ----------------------------------------------------------------------------------

    def on_event(self, event: dict, body: bytes | None) -> None:
        kind = event["e"]
        if kind == "resume":
            self._resume(event)
        elif kind == "frames":
            self._relayed(event, body, end=False)
        elif kind == "end":
            self._relayed(event, body, end=True)
        elif kind == "detach":
            self._detach(event)

    def worker_gone(self, worker: str) -> None:
        """`worker` stopped or died: end what it relayed for us, drop what we relayed for it."""
        for number in [n for n, holder in self.holders.items() if holder == worker]:
            self._end_incoming(number)
        for key in [key for key in self.outgoing if key[0] == worker]:
            self.outgoing[key].lost()

    def known(self) -> tuple[set, set]:
        """The relays of the moment, for keep_only: (asker's (r, holder) pairs, holder's keys)."""
        return set(self.holders.items()), set(self.outgoing)

    def keep_only(self, live, known: tuple[set, set]) -> None:
        """After a heartbeat: of the relays `known` before it, end those whose other process is
        not among the `live` ones any more. Whichever process reaped a dead one (or it said bye
        and we missed it), ours end too, even for a session that had not joined: with no member
        record, nothing else here would notice its holder is gone."""
        incoming, outgoing = known
        for number, holder in incoming:
            if holder not in live and self.holders.get(number) == holder:
                self._end_incoming(number)
        for key in outgoing:
            if key[0] not in live and key in self.outgoing:
                self.outgoing[key].lost()

    def all_gone(self) -> None:
        """Redis went away: no relay can carry on; the clients resume when it is back."""
        for number in list(self.incoming):
            self._end_incoming(number)
        for relay in list(self.outgoing.values()):
            relay.lost()

    def _end_incoming(self, number: int) -> None:
        handler = self.incoming.pop(number, None)
        self.holders.pop(number, None)
        if handler is not None:
            handler.relayed(b"", True)
