"""`securechat logs dump`: time windows, one display row per record, and following the live log.

Pure logic plus file reading; printing is the CLI's job. The follower reads rotated files and
the live file itself (tracking the live file by inode) so that a rotation while following
neither drops nor repeats a record.
"""

from __future__ import annotations

import heapq
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..crypto import group_fingerprint
from ..storage.ciphertext_log import (
    LIVE_NAME,
    LogProblem,
    LogRecord,
    parse_line,
    read_rotated,
    rotated_stamps,
)

Item = LogRecord | LogProblem

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
COLUMNS = ("time", "event", "sender", "fingerprint", "to", "bytes", "message id")


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from ISO 8601 (local time when no offset) or an age like 10m, 2h, 1d."""
    now = time.time() if now is None else now
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-25T14:00, 2026-11-25 14:00+01:00) "
            "or an age (30s, 10m, 2h, 1d, 1w)"
        ) from None
    # A naive time means the clock on the wall; astimezone() interprets it as local.
    return moment.astimezone().timestamp()


def parse_instant(text: str, now: float | None = None) -> float:
    """Like parse_time, and epoch seconds too (what the admin API's since/until take)."""
    try:
        value = float(text)
    except ValueError:
        return parse_time(text, now)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a time")
    return value


def row(record: dict) -> tuple[str, ...]:
    """The table row people see for one record; missing fields show as "-", never raise."""
    sender = record.get("from") if record.get("event") == "msg" else record
    sender = sender if isinstance(sender, dict) else {}
    recipients = record.get("recipients")
    return (
        _time(record.get("t")),
        _text(record.get("event")),
        _text(sender.get("username")),
        _fingerprint_prefix(sender.get("fingerprint")),
        str(len(recipients)) if isinstance(recipients, list) else "-",
        _ciphertext_bytes(record.get("ct")),
        _text(record.get("id")),
    )


def attachment_rows(record: dict) -> list[tuple[str, ...]]:
    """One row under a message per attachment it refers to: the blob's size and full id."""
    refs = record.get("attachments") if record.get("event") == "msg" else None
    rows = []
    for ref in refs if isinstance(refs, list) else ():
        if not isinstance(ref, dict):
            continue
        size = ref.get("size")
        shown = str(size) if isinstance(size, int) and not isinstance(size, bool) else "-"
        rows.append(("", "file", "", "", "", shown, _text(ref.get("id"))))
    return rows


def _time(t) -> str:
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return "-"
    try:
        return datetime.fromtimestamp(t / 1000).isoformat(sep=" ", timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return "-"


def _text(value) -> str:
    return value if isinstance(value, str) and value else "-"


def _fingerprint_prefix(fingerprint) -> str:
    # The first four groups of what the browser shows: enough to tell people apart at a glance.
    if not isinstance(fingerprint, str) or not fingerprint:
        return "-"
    return group_fingerprint(fingerprint)[:19]


def _ciphertext_bytes(ct) -> str:
    # Count from the base64 length: decoding every ciphertext just to measure it is waste.
    if not isinstance(ct, str):
        return "-"
    return str(len(ct) * 3 // 4 - len(ct) + len(ct.rstrip("=")))


def in_window(record: dict, since: float | None, until: float | None) -> bool:
    if since is None and until is None:
        return True
    t = record.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return False
    return (since is None or t / 1000 >= since) and (until is None or t / 1000 < until)


def in_room(record: dict, room: str | None) -> bool:
    """Every record names its room (§8); None keeps the records of every room."""
    return room is None or record.get("room") == room


@dataclass
class Follower:
    """Reads a log directory from the beginning and then keeps up with it, like `tail -F`.

    `known` holds every rotated stamp already read or being read. A rotation renames the live
    file, and our open handle keeps reading it; so when the live path's inode changes we
    drain the handle, skip the one new rotated stamp that is that very file, read any newer
    rotated files (a second rotation between polls) and open the new live file from 0.
    Rotated stamps only grow, so "unseen" always means "newer than everything read".
    """

    directory: Path
    known: set[str] = field(default_factory=set)
    _handle: BinaryIO | None = None
    _inode: int | None = None
    _line_no: int = 0
    _partial: bytes = b""
    _skip_own_rotation: bool = False

    @property
    def live(self) -> Path:
        return Path(self.directory) / LIVE_NAME

    def poll(self) -> Iterator[Item]:
        """Everything new since the last poll, in order; a torn live line waits for its end."""
        if self._handle is None:
            yield from self._open_live()
            if self._handle is None:
                return
        yield from self._read_available()
        if self._live_inode() != self._inode:
            # The writer fsyncs and closes before renaming, so this drain gets every record.
            yield from self._read_available()
            yield from self._finish_torn_line()
            self._close()
            self._skip_own_rotation = True
            yield from self.poll()

    def close(self) -> None:
        self._close()

    def _open_live(self) -> Iterator[Item]:
        while True:
            yield from self._read_unseen_rotated()
            try:
                handle = open(self.live, "rb")
            except FileNotFoundError:
                return
            if set(rotated_stamps(self.directory)) - self.known:
                handle.close()  # rotated between listing and opening: read that file first
                continue
            self._handle, self._inode = handle, os.fstat(handle.fileno()).st_ino
            self._line_no, self._partial = 0, b""
            return

    def _read_unseen_rotated(self) -> Iterator[Item]:
        for stamp in rotated_stamps(self.directory):
            if stamp in self.known:
                continue
            self.known.add(stamp)
            if self._skip_own_rotation:
                self._skip_own_rotation = False  # the oldest unseen one is the file we just drained
                continue
            yield from read_rotated(self.directory, stamp)

    def _read_available(self) -> Iterator[Item]:
        data = self._partial + self._handle.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line_no += 1
            yield parse_line(self.live, self._line_no, raw)

    def _finish_torn_line(self) -> Iterator[Item]:
        if self._partial:
            self._line_no += 1
            yield LogProblem(self.live, self._line_no, "torn last line (no newline)")

    def _live_inode(self) -> int | None:
        try:
            return os.stat(self.live).st_ino
        except FileNotFoundError:
            return None

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None


WORKERS_DIR = "workers"


def log_dirs(data_dir: Path) -> list[Path]:
    """Every ciphertext log under a data dir: its own, and each worker's of `serve --workers N`
    (<data_dir>/workers/<n>/), which each process writes alone."""
    data_dir = Path(data_dir)
    workers = data_dir / WORKERS_DIR
    found = [data_dir]
    if workers.is_dir():
        found += sorted((d for d in workers.iterdir() if d.is_dir() and d.name.isdigit()),
                        key=lambda d: int(d.name))
    return found


def _timed(items: Iterator[Item]) -> Iterator[tuple[float, Item]]:
    """(time, item): a record's t; a problem takes the time of the record before it."""
    last = float("-inf")
    for item in items:
        if isinstance(item, LogRecord) and isinstance(item.record.get("t"), (int, float)):
            last = item.record["t"]
        yield last, item


def merged(streams: list[Iterator[Item]]) -> Iterator[Item]:
    """Several logs' items as one, in time order (each log is in time order already)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    timed = [((t, index, item) for t, item in _timed(stream)) for index, stream in enumerate(streams)]
    for _, _, item in heapq.merge(*timed, key=lambda entry: entry[:2]):
        yield item


def follow(directory: Path | list[Path], *, since: float | None = None, until: float | None = None,
           interval: float = 0.25, keep_going: Callable[[], bool] = lambda: True,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[Item]:
    """The whole log, then new items as they arrive, until keep_going() says stop.

    Several directories (the workers' logs) are followed together, each poll's new items
    merged in time order."""
    directories = directory if isinstance(directory, list) else [directory]
    followers = [Follower(Path(d)) for d in directories]
    try:
        while True:
            for item in merged([iter(list(f.poll())) for f in followers]):
                if isinstance(item, LogProblem) or in_window(item.record, since, until):
                    yield item
            if not keep_going():
                return
            sleep(interval)
    finally:
        for follower in followers:
            follower.close()
