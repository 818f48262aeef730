"""The one rule for room names (docs/PROTOCOL.md §1): 1 to 32 of `a-z`, `0-9` and `-`.

It is the alphabet the signed text lines already allow (§2): a room name is signed into every
session statement and message header, so nothing that could carry a newline, a look-alike
letter or a case difference may be one. Pure: the page route, the transports, the config and
the admin API all ask this module.
"""

from __future__ import annotations

import re

ROOM_NAME = re.compile(r"[a-z0-9-]{1,32}\Z")
MAX_LENGTH = 32
RULE = "1 to 32 characters: lowercase letters a-z, digits 0-9 and -"


def problem(name: object) -> str | None:
    """Why `name` is not a room name, for people; None when it is one."""
    if not isinstance(name, str):
        return "a room name must be text"
    if not name:
        return f"the room name is empty; a room name is {RULE}"
    if len(name) > MAX_LENGTH:
        return f"the room name is {len(name)} characters long; a room name is {RULE}"
    if not ROOM_NAME.match(name):
        bad = next(ch for ch in name if not ROOM_NAME.match(ch))
        shown = "a space" if bad == " " else f'"{bad}"' if bad.isprintable() and not bad.isspace() \
            else f"U+{ord(bad):04X}"
        return f"the room name has {shown}, which a room name cannot have; a room name is {RULE}"
    return None


def check(name: object) -> str:
    """`name` itself when it is a room name, else ValueError saying why."""
    why = problem(name)
    if why is not None:
        raise ValueError(why)
    return name  # type: ignore[return-value]


def suggestion(text: str) -> str | None:
    """The room name someone probably meant ("Design Team/" -> "design-team"), or None.

    Only for ASCII text: "dеsign" with a Cyrillic е must not be offered as some other room.
    """
    if not text.isascii():
        return None
    lowered = text.lower()
    collapsed = re.sub(r"[^a-z0-9-]+", "-", lowered).strip("-")[:MAX_LENGTH].strip("-")
    if not collapsed or collapsed == text or not ROOM_NAME.match(collapsed):
        return None
    return collapsed
