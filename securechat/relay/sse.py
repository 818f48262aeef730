"""Server-Sent Events framing (WHATWG HTML, "text/event-stream"): pure, no sockets.

The HTTP transport (stream.py) writes these bytes; the Python client and the benchmark read
them with Parser, which follows the specification's parsing rules (any of CR, LF or CRLF ends a
line, `:` starts a comment, a blank line dispatches the event) so it reads what a browser's
EventSource reads.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

PING = b"event: ping\ndata: {}\n\n"
_LINE_END = re.compile(r"\r\n|\r|\n")


def event(data: str, *, id: int | None = None, name: str | None = None) -> bytes:
    """One event. `data` is a JSON text: it never holds a line break, but a multi-line text
    would still arrive whole, as one `data:` line per line (EventSource joins them with LF)."""
    if "\n" in data or "\r" in data:
        data = "\ndata: ".join(data.splitlines())
    head = ""
    if name is not None:
        head += f"event: {name}\n"
    if id is not None:
        head += f"id: {id}\n"
    return f"{head}data: {data}\n\n".encode()


def comment(text: str = "") -> bytes:
    return f": {text}\n\n".encode()


@dataclass(frozen=True)
class Event:
    name: str  # "message" when the stream named none
    data: str
    id: str | None  # the last event id in force when this event was dispatched


class Parser:
    """Feed it bytes as they arrive; it returns the events each chunk completed."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""  # an unfinished line
        self._after_cr = False  # the last chunk ended in CR: a LF starting the next one is its CRLF
        self._started = False
        self._name = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")  # one leading BOM is ignored
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        text = self._pending + text
        self._after_cr = text.endswith("\r")
        *lines, self._pending = _LINE_END.split(text)
        events: list[Event] = []
        for line in lines:
            self._line(line, events)
        return events

    def _line(self, line: str, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append(Event(self._name or "message", "\n".join(self._data), self.last_id))
            self._name, self._data = "", []
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        elif field == "id" and "\0" not in value:
            self.last_id = value
        # "retry" and unknown fields are ignored: this parser does not reconnect by itself.
