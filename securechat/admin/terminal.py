"""Text a server supplies, made safe for a terminal before the admin commands print it.

A remote server (`roster --url`, `logs dump --url`) is not ours: a username, an address or an
error message it sends could carry escape sequences that move the cursor, rewrite earlier
lines, retitle the window or hide text. Every control character (C0, DEL, C1) goes, and so do
the invisible bidirectional overrides that make text read differently from what it is.
Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re

# C0 (with tab and newline: a table cell or a one-line message has no use for them), DEL, C1,
# and the bidi embeddings, overrides and isolates (U+202A-202E, U+2066-2069) and marks.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """text without anything that would steer a terminal instead of being shown."""
    return _UNSAFE.sub("", text)


def safe_json_line(line: str) -> str:
    """A JSON line from a server, unchanged in meaning but with no raw control character.

    JSON allows tab, CR and LF as whitespace between tokens and C1 and bidi characters raw
    inside strings; re-encoding the parsed value escapes all of them (\\u009b, …), so the line
    still parses to exactly what the server sent. Raises ValueError if it is not JSON.
    """
    if not _UNSAFE.search(line):
        return line  # our own server's lines are compact JSON: kept byte for byte
    return json.dumps(json.loads(line), ensure_ascii=True, separators=(",", ":"))


def safe_value(value):
    """A parsed JSON value with strip_controls applied to every string in it, keys included."""
    if isinstance(value, str):
        return strip_controls(value)
    if isinstance(value, list):
        return [safe_value(item) for item in value]
    if isinstance(value, dict):
        return {strip_controls(str(key)): safe_value(item) for key, item in value.items()}
    return value
