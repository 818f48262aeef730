"""The ciphertext log in pages, for GET /api/admin/logs: positions that survive a rotation.

File reading only; no Tornado. A page ends at a Position, handed to the client as an opaque
cursor, and the next page starts there. The hard case is the live file: between two pages it
may be rotated (renamed to ciphertext-<stamp>.jsonl, later gzipped) and replaced by an empty
one, so "offset 1234 of ciphertext.jsonl" would point into the wrong file. A live position
therefore also records

* `after`: the newest rotated stamp when it was taken. Rotation names the old live file with a
  stamp later than every existing one, so once rotated it is the *oldest* stamp after `after`;
* `first`: a digest of the file's first line, so a resumed read can tell that it is looking at
  the same file (retention may have deleted it meanwhile, and then the next file is read from
  its start: those records are gone, nothing else is skipped).

Byte offsets hold in the gzipped copy too: gzip keeps the exact bytes, and a GzipFile can
seek forward in its decompressed stream. Nothing is held in memory beyond one line.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ..admin.dump import in_room, in_window
from .ciphertext_log import LIVE_NAME, LogProblem, LogRecord, parse_line, rotated_stamps

Item = LogRecord | LogProblem

_STAMP = re.compile(r"^\d{8}T\d{12}Z$")
_DIGEST = re.compile(r"^[0-9a-f]{32}$")
_VERSION = 1
_FIRST_LINE_LIMIT = 16 * 1024 * 1024  # far above any record; bounds the digest read
_MAX_CURSOR = 1024
_MAX_OFFSET = 2**53


@dataclass(frozen=True)
class Position:
    """Where the next line starts: in a rotated file (stamp) or in the live file (stamp None)."""

    stamp: str | None
    offset: int
    line: int  # lines before offset, so problems keep their line numbers across pages
    after: str | None = None  # live only: newest rotated stamp when taken
    first: str | None = None  # live only: digest of the file's first line


@dataclass(frozen=True)
class Page:
    records: int  # records in the page
    problems: int  # unreadable lines skipped within it
    next: Position | None  # where the next page starts; None: the page reached the end
    resume: Position  # where to look for records written later (the end, or next)


def encode(position: Position) -> str:
    fields = [_VERSION, position.stamp, position.offset, position.line, position.after, position.first]
    text = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def decode(cursor: str) -> Position:
    """The Position in a cursor; ValueError for anything this module did not make."""
    if len(cursor) > _MAX_CURSOR:
        raise ValueError("not a cursor")  # ours are ~150 characters; JSON nested 10,000 deep is not
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, stamp, offset, line, after, first = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise ValueError("not a cursor") from None
    valid = (
        version == _VERSION
        # A seek past 2^63 raised OverflowError (a 500); no log file is that large anyway.
        and all(type(n) is int and 0 <= n <= _MAX_OFFSET for n in (offset, line))
        # Stamps become file names: anything but the exact pattern could walk the filesystem.
        and all(s is None or (isinstance(s, str) and _STAMP.match(s)) for s in (stamp, after))
        and (first is None or (isinstance(first, str) and _DIGEST.match(first)))
        and (stamp is None or (after is None and first is None))
    )
    if not valid:
        raise ValueError("not a cursor")
    return Position(stamp, offset, line, after, first)


def collect(directory: Path, start: Position | None, sink: BinaryIO, *, since: float | None,
            until: float | None, limit: int, max_bytes: int | None = None, room: str | None = None) -> Page:
    """Write a page of at most `limit` records from `start` into sink (each stored line and a
    newline) and say where it ends, in one walk. A page is also full once it holds `max_bytes`
    (it always holds at least one record), so a page of big records stays bounded on disk.
    `room`: only that room's records.

    The cursor goes in a response header, before the records: the page is gathered first
    (GET /api/admin/logs spools it, to a temporary file past a few MiB). Counting in one walk
    and streaming in a second one served records twice: when retention deleted a file between
    the two walks, the second one went past the end the first had found, and the next page,
    starting at that end, served those records again.
    """
    count = problems = size = 0
    resume = start or Position(None, 0, 0)
    for item, position in walk(directory, start):
        resume = position
        if isinstance(item, LogProblem):
            problems += 1
        elif in_window(item.record, since, until) and in_room(item.record, room):
            size += sink.write(item.raw.encode("utf-8") + b"\n")
            count += 1
            if count == limit or (max_bytes is not None and size >= max_bytes):
                return Page(count, problems, position, position)
    return Page(count, problems, None, resume)


def walk(directory: Path, start: Position | None = None) -> Iterator[tuple[Item, Position]]:
    """Every item from start (None: the very beginning), each with the position after it."""
    directory = Path(directory)
    # The beginning is a live position before any rotated file: it resolves to the oldest one.
    position = start or Position(None, 0, 0)
    while True:
        if position.stamp is not None:
            yield from _read_rotated(directory, position)
            position = Position(None, 0, 0, after=position.stamp)
            continue
        candidate = _oldest_after(directory, position.after)
        if candidate is not None:
            # The live file this position was in has been rotated: that file is `candidate`.
            same = position.offset == 0 or _first_digest_of(directory, candidate) == position.first
            position = Position(candidate, position.offset, position.line) if same else Position(candidate, 0, 0)
            continue
        try:
            f = open(directory / LIVE_NAME, "rb")
        except FileNotFoundError:
            if _oldest_after(directory, position.after) is not None:
                continue
            return
        with f:
            if _oldest_after(directory, position.after) is not None:
                continue  # rotated between the check and the open: resolve it again
            yield from _read_live(directory, f, position)
        return


def _read_rotated(directory: Path, position: Position) -> Iterator[tuple[Item, Position]]:
    opened = _open_rotated(directory, position.stamp)
    if opened is None:
        return  # retention removed it; the walk goes on with the next file
    path, f = opened
    offset, line = position.offset, position.line
    with f:
        try:
            f.seek(offset)
            for raw in f:
                offset, line = offset + len(raw), line + 1
                here = Position(position.stamp, offset, line)
                if not raw.endswith(b"\n"):
                    yield LogProblem(path, line, "torn last line (no newline)"), here
                    return
                yield parse_line(path, line, raw[:-1]), here
        except (OSError, EOFError, zlib.error) as exc:
            yield LogProblem(path, line + 1, f"unreadable file: {exc or type(exc).__name__}"), \
                Position(position.stamp, offset, line)


def _read_live(directory: Path, f: BinaryIO, position: Position) -> Iterator[tuple[Item, Position]]:
    path = directory / LIVE_NAME
    first = _first_digest(f)
    offset, line = position.offset, position.line
    if offset and first != position.first:
        offset = line = 0  # not the file the position was taken in, nor any rotated one: start over
    f.seek(offset)
    for raw in f:
        if not raw.endswith(b"\n"):
            return  # being written: the next page will have it whole
        if first is None and offset == 0:
            # The file was empty when its digest was taken and the server appended since:
            # this is its first line. Left None, every position in this file would name no
            # file, and the next page would start it over (['r1', 'r2', 'r2', 'r3']).
            first = hashlib.sha256(raw).hexdigest()[:32]
        offset, line = offset + len(raw), line + 1
        yield parse_line(path, line, raw[:-1]), Position(None, offset, line, position.after, first)


def _open_rotated(directory: Path, stamp: str) -> tuple[Path, BinaryIO] | None:
    # Prefer the plain file; once the gzip thread has removed it, the .gz is complete.
    plain = directory / f"ciphertext-{stamp}.jsonl"
    try:
        return plain, open(plain, "rb")
    except FileNotFoundError:
        pass
    gz = plain.with_name(plain.name + ".gz")
    try:
        return gz, gzip.open(gz, "rb")
    except FileNotFoundError:
        return None


def _oldest_after(directory: Path, stamp: str | None) -> str | None:
    later = [s for s in rotated_stamps(directory) if stamp is None or s > stamp]
    return later[0] if later else None


def _first_digest(f: BinaryIO) -> str | None:
    """Digest of the first complete line; None while there is none. Leaves f at its start."""
    f.seek(0)
    try:
        first = f.readline(_FIRST_LINE_LIMIT)
    except (OSError, EOFError, zlib.error):
        first = b""
    f.seek(0)
    if not first.endswith(b"\n"):
        return None
    return hashlib.sha256(first).hexdigest()[:32]


def _first_digest_of(directory: Path, stamp: str) -> str | None:
    opened = _open_rotated(directory, stamp)
    if opened is None:
        return None
    with opened[1] as f:
        return _first_digest(f)
