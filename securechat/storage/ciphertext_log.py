"""The on-disk log of relayed ciphertext records.

The server appends every relayed ciphertext record, as one JSON object per
line, to ``<dir>/ciphertext.jsonl``.  When that file reaches ``max_bytes`` it
is renamed to ``<dir>/ciphertext-YYYYMMDDTHHMMSSffffffZ.jsonl`` (UTC, fixed
width, strictly increasing, so name order is chronological order), gzipped to
``...jsonl.gz`` and the oldest rotated files beyond ``keep`` are deleted.

This module holds:

* ``CiphertextLog`` - the single writer (one per data directory, enforced with
  ``flock`` on ``<dir>/ciphertext.lock``);
* ``rotate_offline`` - rotation for the CLI when no server is running;
* ``log_files`` / ``read_log`` - readers that never raise on bad content and
  report torn or corrupt lines as ``LogProblem`` values instead.

Only file I/O lives here: no Tornado, no sockets.  The log only ever sees
ciphertext, but its metadata (who talked when) is still private, hence 0700
for the directory and 0600 for every file regardless of the umask.
"""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import gzip
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from .background import maintenance_executor

__all__ = [
    "CiphertextLog",
    "LogError",
    "LogLocked",
    "LogProblem",
    "LogRecord",
    "exclusive",
    "log_files",
    "parse_line",
    "read_log",
    "read_rotated",
    "rotate_offline",
    "rotated_stamps",
]

log = logging.getLogger(__name__)

LIVE_NAME = "ciphertext.jsonl"
LOCK_NAME = "ciphertext.lock"
_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_ROTATED_RE = re.compile(r"^ciphertext-(\d{8}T\d{12}Z)\.jsonl(\.gz|\.gz\.tmp)?$")
_FSYNC_POLICIES = ("always", "interval", "never")
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class LogError(Exception):
    """Base class for ciphertext log errors."""


class LogLocked(LogError):
    """Another process (or another open writer) holds the log directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        super().__init__(
            f"the ciphertext log in {self.directory} is in use by another securechat process"
        )


@dataclass(frozen=True)
class LogProblem:
    """A line (or a whole compressed file) that could not be read as a record."""

    path: Path
    line_no: int  # 1-based; for a file that cannot be opened at all: 0
    reason: str


@dataclass(frozen=True)
class LogRecord:
    """One record read back from the log."""

    path: Path
    line_no: int
    record: dict
    raw: str  # the line exactly as stored, without "\n"


# --------------------------------------------------------------------------
# Small filesystem helpers
# --------------------------------------------------------------------------


def _ensure_private_dir(directory: Path) -> None:
    directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing
    # directory, so set it explicitly.
    if directory.stat().st_mode & 0o777 != _DIR_MODE:
        os.chmod(directory, _DIR_MODE)


def _open_private(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    try:
        # The create mode is filtered by the umask and ignored for an
        # existing file; fchmod makes 0600 unconditional.
        os.fchmod(fd, _FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(directory: Path) -> None:
    # A rename or unlink is only durable once the directory itself is synced.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _rotated_stamps(directory: Path) -> dict[str, set[str]]:
    """Map each rotated stamp to the suffixes present ("", ".gz", ".gz.tmp")."""
    stamps: dict[str, set[str]] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return stamps
    for entry in entries:
        match = _ROTATED_RE.match(entry.name)
        if match:
            stamps.setdefault(match.group(1), set()).add(match.group(2) or "")
    return stamps


def _plain_path(directory: Path, stamp: str) -> Path:
    return directory / f"ciphertext-{stamp}.jsonl"


def _gz_path(directory: Path, stamp: str) -> Path:
    return directory / f"ciphertext-{stamp}.jsonl.gz"


def _tmp_path(directory: Path, stamp: str) -> Path:
    return directory / f"ciphertext-{stamp}.jsonl.gz.tmp"


def _next_stamp(directory: Path) -> str:
    """A UTC stamp later than every rotated file already in the directory.

    Two rotations in the same microsecond, or a clock that steps backwards,
    must still produce a new name that sorts last, so bump past the newest.
    """
    now = datetime.now(timezone.utc)
    existing = _rotated_stamps(directory)
    if existing:
        newest = datetime.strptime(max(existing), _STAMP_FORMAT).replace(tzinfo=timezone.utc)
        if now <= newest:
            now = newest + timedelta(microseconds=1)
    return now.strftime(_STAMP_FORMAT)


def _huffman_gzip():
    """A gzip-format compressor that only Huffman-codes, without searching for repeats.

    A rotated file is mostly base64 ciphertext whose one redundancy is 6 bits of information
    per 8-bit character, which Huffman coding alone removes: on a log of 250-recipient messages
    this keeps the file at 0.75 of its size against 0.73 for level 6, at a third of the CPU
    (level 6 was a quarter of the server's CPU under load at N = 250, docs/PERFORMANCE.md).
    """
    return zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)


# _huffman_gzip() in a child process, from its stdin to its stdout. In a thread of the server,
# the ~100 ms of CPU per 10 MiB shared the event loop's GIL: each time the thread came back from
# zlib it made the loop hand the GIL over (every 5 ms, sys.getswitchinterval), and at nice 19 on
# a busy machine it could be kept off the CPU while the loop waited for it. The child runs in
# the idle scheduling class where the OS has one (Linux SCHED_IDLE), so that even its
# interpreter start-up (~10 ms of CPU) runs only when the loop does not want the core: at nice 0
# until its first line called os.nice, that start-up took turns with the loop on its core.
_GZIP_CHILD = """\
import os, zlib
try:
    os.nice(19)
except OSError:
    pass
deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
def put(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
while chunk := os.read(0, 1 << 20):
    put(deflate.compress(chunk))
put(deflate.flush())
"""


def _run_idle(argv: list[str], stdin_fd: int, stdout_fd: int) -> tuple[int, bytes]:
    """Run argv with the given stdin/stdout in the idle scheduling class; its exit status and
    the end of its stderr. OSError if it could not be started.

    The class is set from here the moment the child exists (Popen returns once it has exec'd,
    before the interpreter's start-up has done anything much): a scheduling class cannot be
    given to subprocess itself, and preexec_fn is unsafe in a threaded server.
    """
    with subprocess.Popen(argv, stdin=stdin_fd, stdout=stdout_fd, stderr=subprocess.PIPE) as child:
        if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(child.pid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass  # not allowed here: the child's own nice 19 still applies
        stderr = child.stderr.read()
    return child.returncode, stderr[-500:]


def _compress_in_child(source_fd: int, target_fd: int) -> bool:
    """Compress source_fd into target_fd in another process; False if none could be started
    (no interpreter to run: the caller compresses in this process instead)."""
    if not sys.executable:
        return False
    try:
        returncode, stderr = _run_idle([sys.executable, "-I", "-S", "-c", _GZIP_CHILD], source_fd, target_fd)
    except OSError:
        return False
    if returncode != 0:
        raise OSError(f"the gzip process exited with {returncode}: {stderr!r}")
    return True


def _gzip_file(source: Path, target: Path, tmp: Path) -> None:
    """Compress source to target crash-safely, then remove source.

    A crash at any point leaves either the complete source, or a complete
    target (renamed only after fsync), or both; never a half-written target.
    The compression itself runs in a child process (_GZIP_CHILD).
    """
    fd = _open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as raw, open(source, "rb") as src:
        if not _compress_in_child(src.fileno(), raw.fileno()):
            deflate = _huffman_gzip()
            while chunk := src.read(1024 * 1024):
                raw.write(deflate.compress(chunk))
            raw.write(deflate.flush())
        raw.flush()
        os.fsync(raw.fileno())
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    _unlink_quietly(source)
    _fsync_dir(source.parent)


def _apply_retention(directory: Path, keep: int) -> None:
    stamps = sorted(_rotated_stamps(directory))
    for stamp in stamps[: max(0, len(stamps) - keep)]:
        for path in (_gz_path(directory, stamp), _plain_path(directory, stamp),
                     _tmp_path(directory, stamp)):
            _unlink_quietly(path)


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------


def _validate(max_bytes: int, keep: int, fsync: str, fsync_interval: float) -> None:
    if fsync not in _FSYNC_POLICIES:
        raise ValueError(f"fsync must be one of {', '.join(_FSYNC_POLICIES)}, not {fsync!r}")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1024:
        raise ValueError(f"max_bytes must be an integer >= 1024, not {max_bytes!r}")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, not {keep!r}")
    if not isinstance(fsync_interval, (int, float)) or not math.isfinite(fsync_interval) \
            or fsync_interval < 0:
        raise ValueError(f"fsync_interval must be a number >= 0, not {fsync_interval!r}")


def _take_lock(directory: Path) -> int:
    fd = _open_private(directory / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LogLocked(directory) from None
        raise
    return fd


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold a log directory's writer lock without opening the log (LogLocked while a server
    uses it): offline maintenance of what lives beside the log, such as attachments."""
    fd = _take_lock(Path(directory))
    try:
        yield
    finally:
        os.close(fd)


class CiphertextLog:
    """The single, thread-safe, append-only writer of a ciphertext log directory."""

    def __init__(self, directory: Path, *, max_bytes: int = 10 * 1024 * 1024, keep: int = 10,
                 fsync: str = "interval", fsync_interval: float = 1.0,
                 gzip_in_background: bool = True) -> None:
        _validate(max_bytes, keep, fsync, fsync_interval)
        self._dir = Path(directory)
        self._max_bytes = max_bytes
        self._keep = keep
        self._fsync_policy = fsync
        self._fsync_interval = float(fsync_interval)
        self._gzip_in_background = gzip_in_background

        # _lock guards the live fd; _maint_lock serialises gzip and retention
        # so retention never deletes a file that is being compressed.
        self._lock = threading.Lock()
        self._maint_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future] = []
        self._fd: int | None = None
        self._size = 0
        self._needs_newline = False
        self._last_fsync = time.monotonic()
        self._dirty = False
        self._closed = False
        self._syncer: _IntervalSync | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the live file we write
        self._rotate_failing = False

        _ensure_private_dir(self._dir)
        self._lock_fd = _take_lock(self._dir)
        try:
            self._open_live()
        except BaseException:
            os.close(self._lock_fd)
            raise
        # Finish work a crash may have interrupted (un-gzipped rotated files,
        # stale .tmp files) without delaying start-up when running in background.
        self._schedule(lambda: self._logged(self._recover))
        if fsync == "interval" and self._fsync_interval > 0:
            self._syncer = _IntervalSync(self, self._fsync_interval)
            self._syncer.start()

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> CiphertextLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The live file."""
        return self._dir / LIVE_NAME

    # -- appending ---------------------------------------------------------

    def append(self, record: dict) -> None:
        """Append one record as one JSON line."""
        self.append_line(json.dumps(record, separators=(",", ":"), ensure_ascii=False))

    def append_line(self, line: str) -> None:
        """Append one already-serialised JSON object (without trailing newline)."""
        self.append_lines([line])

    def append_lines(self, lines: list[str]) -> None:
        """Append records all together or not at all (a join that replaces an older session
        writes that session's leave and its own join).

        On OSError (a full disk, a file-size limit) nothing of them stays in the file: a write
        that got part of the way is truncated back, so there is no torn line and the caller
        may simply try again later.
        """
        if any("\n" in line for line in lines):
            raise ValueError("a log line must not contain a newline")
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        with self._lock:
            self._check_open()
            self._follow_live()
            before = self._mark()
            self._write(data)
            try:
                self._maybe_fsync()
            except OSError:
                self._undo(before)  # "always" promises the record is on disk before the ack
                raise
            rotated = self._rotate_after_append() if self._size >= self._max_bytes else None
        if rotated is not None:
            # The record is already written: a gzip failure must not look
            # like a failed append, or the caller might append it twice.
            rotated, old_fd = rotated
            self._schedule(lambda: self._logged(lambda: self._compress_and_prune(rotated, old_fd=old_fd)))

    def _rotate_after_append(self) -> tuple[Path, int | None] | None:
        # The records are written; a rotation that fails must not make the append look failed.
        # The file stays live and the next append tries again; one line until it works.
        try:
            rotated = self._rotate_locked()
        except OSError as exc:
            if not self._rotate_failing:
                log.error("could not rotate the ciphertext log %s (appending goes on, rotation is retried "
                          "with every append): %s", self.path, exc)
            self._rotate_failing = True
            return None
        self._rotate_failing = False
        return rotated

    def _follow_live(self) -> None:
        """The live file must still be the one we write: someone may have deleted it or put
        another file in its place. Writing on into a deleted file would lose every record
        from then on, acknowledged or not, and make the next rotation fail."""
        if self._fd is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._ident:
            return
        if st is None:
            log.warning("the live ciphertext log %s was deleted while the server was writing it; "
                        "started a new one (what the deleted file held is gone with it)", self.path)
        else:
            log.warning("the live ciphertext log %s was replaced by another file while the server was "
                        "writing it; appending to that file from now on", self.path)
        os.close(self._fd)
        self._fd = None
        self._open_live()

    def _mark(self) -> tuple[int, bool]:
        return self._size, self._needs_newline

    def _undo(self, mark: tuple[int, bool]) -> None:
        """Cut the live file back to `mark` after a failed write."""
        size, torn = mark
        if self._size == size or self._fd is None:
            return
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            self._needs_newline = True  # could not cut it: at least start the next record afresh
            return
        self._size, self._needs_newline = size, torn

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._open_live()
        mark = self._mark()
        if self._needs_newline:
            # The file ends in a torn line (a crash); terminate it so this record starts
            # on a line of its own and stays readable.
            data = b"\n" + data
        view = memoryview(data)
        written = 0
        try:
            # One os.write on an O_APPEND fd puts the whole line at the end;
            # the loop only matters for rare partial writes.
            while written < len(view):
                written += os.write(self._fd, view[written:])
        except OSError:
            self._size += written
            self._undo(mark)
            raise
        self._size += written
        self._needs_newline = False

    def _maybe_fsync(self) -> None:
        self._dirty = True
        # "interval" with a positive interval is the syncer thread's job: an append (on the
        # server's event loop) never waits for the disk. "always" must, before the ack.
        if self._fsync_policy == "always" or (self._fsync_policy == "interval" and self._syncer is None):
            self._fsync_locked()

    def _fsync_locked(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
        self._dirty = False
        self._last_fsync = time.monotonic()

    def sync_in_background(self) -> None:
        """fsync what was appended so far without holding the writer lock during the fsync."""
        with self._lock:
            if not self._dirty or self._fd is None:
                return
            # A duplicate descriptor stays valid even if rotation closes the original meanwhile.
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
            self._last_fsync = time.monotonic()
        finally:
            os.close(fd)

    def flush(self) -> None:
        """Force everything appended so far to disk."""
        with self._lock:
            self._check_open()
            self._fsync_locked()

    # -- rotation ----------------------------------------------------------

    def rotate(self, keep: int | None = None) -> Path | None:
        """Rotate now; return the final .gz path, or None if the live file is empty.

        ``keep`` overrides the retention for this rotation only (an admin's
        one-off clean-up); later automatic rotations use the configured keep.
        With gzip_in_background the .gz may not exist yet when this returns;
        wait_for_background() waits for it.
        """
        keep = self._keep if keep is None else keep
        _validate(self._max_bytes, keep, self._fsync_policy, self._fsync_interval)
        with self._lock:
            self._check_open()
            self._follow_live()
            rotated = self._rotate_locked()
        if rotated is None:
            # Nothing new, but an admin asking for a smaller keep still expects it applied.
            self._schedule(lambda: self._prune(keep))
            return None
        rotated, old_fd = rotated
        self._schedule(lambda: self._compress_and_prune(rotated, keep, old_fd=old_fd))
        return rotated.with_name(rotated.name + ".gz")

    def _rotate_locked(self) -> tuple[Path, int | None] | None:
        """Rename the live file away and open a new one; returns (rotated path, descriptor still
        to fsync and close in the background, or None).

        Only the rename and the open happen here, on the appending thread (the server's event
        loop). The fsync of up to max_bytes of dirty pages and the directory fsync took tens of
        milliseconds, and every message waited for them (docs/PERFORMANCE.md): they run on the
        background thread, before the gzip, with the descriptor that wrote the data. With
        fsync = "always" every record was fsynced before its ack anyway; the rename is made
        durable here as before, so that policy keeps its synchronous order.
        """
        if self._size == 0:
            return None
        old_fd, self._fd = self._fd, None
        synchronous = self._fsync_policy == "always" or not self._gzip_in_background
        try:
            if synchronous and old_fd is not None:
                os.fsync(old_fd)
            rotated = _plain_path(self._dir, _next_stamp(self._dir))
            # rename is atomic: every record is either in the live file or in the
            # rotated one, never both and never neither.
            os.rename(self.path, rotated)
        except BaseException:
            self._fd = old_fd  # nothing moved: keep appending to the same file
            raise
        if synchronous:
            if old_fd is not None:
                os.close(old_fd)
            old_fd = None
            _fsync_dir(self._dir)
        self._dirty = False
        self._last_fsync = time.monotonic()
        try:
            self._open_live()
        except BaseException:
            if old_fd is not None:
                os.close(old_fd)  # its records are in the rotated file; a restart gzips it (_recover)
            raise
        return rotated, old_fd

    def _open_live(self) -> None:
        fd = _open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._fd = fd
        st = os.fstat(fd)
        self._size = st.st_size
        self._ident = (st.st_dev, st.st_ino)
        self._needs_newline = not _ends_with_newline(self.path)

    # -- background work ---------------------------------------------------

    def _schedule(self, job) -> None:
        if not self._gzip_in_background:
            job()
            return
        with self._lock:
            if self._executor is None:
                self._executor = maintenance_executor("ciphertext-gzip")
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._executor.submit(self._logged, job))

    @staticmethod
    def _logged(job) -> None:
        # A failed gzip leaves the plain rotated file, which readers handle and
        # the next writer start-up retries; log it rather than lose it.
        try:
            job()
        except Exception:
            log.exception("ciphertext log maintenance failed")

    def _compress_and_prune(self, rotated: Path, keep: int | None = None, old_fd: int | None = None) -> None:
        if old_fd is not None:
            # The rotation's durability work, off the appending thread (see _rotate_locked).
            try:
                os.fsync(old_fd)
            finally:
                os.close(old_fd)
            _fsync_dir(self._dir)
        with self._maint_lock:
            stamp = _ROTATED_RE.match(rotated.name).group(1)
            # Retention may already have deleted an older queued file.
            if rotated.exists():
                _gzip_file(rotated, _gz_path(self._dir, stamp), _tmp_path(self._dir, stamp))
            _apply_retention(self._dir, self._keep if keep is None else keep)

    def _prune(self, keep: int) -> None:
        with self._maint_lock:
            _apply_retention(self._dir, keep)

    def _recover(self) -> None:
        with self._maint_lock:
            for stamp, suffixes in sorted(_rotated_stamps(self._dir).items()):
                if ".gz.tmp" in suffixes:
                    _unlink_quietly(_tmp_path(self._dir, stamp))
                if "" not in suffixes:
                    continue
                if ".gz" in suffixes:
                    # The .gz was renamed into place only after fsync, so it is
                    # complete; the crash happened before the plain unlink.
                    _unlink_quietly(_plain_path(self._dir, stamp))
                else:
                    _gzip_file(_plain_path(self._dir, stamp), _gz_path(self._dir, stamp),
                               _tmp_path(self._dir, stamp))
            _apply_retention(self._dir, self._keep)

    def wait_for_background(self) -> None:
        """Block until all queued gzip and retention work has finished."""
        with self._lock:
            pending = list(self._pending)
        concurrent.futures.wait(pending)

    # -- closing -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"the ciphertext log in {self._dir} is closed")

    def close(self) -> None:
        """Flush, fsync, finish background gzip and release the directory lock."""
        if self._syncer is not None:
            self._syncer.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.fsync(fd)
                os.close(fd)
            self.wait_for_background()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
        finally:
            os.close(self._lock_fd)  # closing the fd releases the flock


class _IntervalSync(threading.Thread):
    """fsyncs the live file every `interval` seconds, off the thread that appends."""

    def __init__(self, log: CiphertextLog, interval: float) -> None:
        super().__init__(name="ciphertext-fsync", daemon=True)
        self._log = log
        self._interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._log.sync_in_background()
            except OSError as exc:
                log.error("could not fsync the ciphertext log: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def rotate_offline(directory: Path, keep: int) -> Path | None:
    """Rotate, gzip and prune a log no server is writing to (for the CLI).

    Raises LogLocked if a running server holds the log.  Returns the .gz path,
    or None if there was nothing to rotate (opening the writer finishes any
    interrupted gzip and applies retention regardless).  A missing directory
    is left alone and yields None.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    with CiphertextLog(directory, keep=keep, fsync="never", gzip_in_background=False) as writer:
        return writer.rotate()


# --------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------


def log_files(directory: Path) -> list[Path]:
    """Rotated files oldest first, then the live file last (if it exists).

    A rotated file present both plain and gzipped (a gzip in progress, or a
    crash before the plain file was removed) is listed once, as the plain
    file; .tmp files are never listed.
    """
    directory = Path(directory)
    files = []
    for stamp, suffixes in sorted(_rotated_stamps(directory).items()):
        if "" in suffixes:
            files.append(_plain_path(directory, stamp))
        elif ".gz" in suffixes:
            files.append(_gz_path(directory, stamp))
    live = directory / LIVE_NAME
    if live.is_file():
        files.append(live)
    return files


def read_log(directory: Path, *, since: float | None = None, until: float | None = None,
             containing: bytes | None = None) -> Iterator[LogRecord | LogProblem]:
    """Yield every record in chronological order, and a LogProblem for each bad line.

    since/until are epoch seconds (since inclusive, until exclusive) compared
    with each record's "t" (epoch milliseconds).  With a filter, records
    without a numeric "t" are skipped; problems are always yielded.  Files are
    streamed line by line; a rotation happening while reading is followed
    (the directory is re-listed after each file).

    With `containing`, only the lines holding those bytes are parsed and yielded (with their
    true line numbers); the rest, problems included, are skipped unread. A scan for the few
    records that matter (attachment references) then costs a search through each megabyte
    instead of a JSON parse per line (see _read_lines_containing).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    done: str | None = None
    while True:
        stamp = _next_rotated_stamp(directory, after=done)
        if stamp is not None:
            yield from _filter(_read_rotated(directory, stamp, containing), since, until)
            done = stamp
            continue
        live = directory / LIVE_NAME
        try:
            f = open(live, "rb")
        except FileNotFoundError:
            if _next_rotated_stamp(directory, after=done) is not None:
                continue  # the live file was just rotated away
            return
        with f:
            # A rotation between listing and opening would hide the rotated
            # file; nothing has been read yet, so just go round again.
            if _next_rotated_stamp(directory, after=done) is not None:
                continue
            yield from _filter(_read_lines(live, f, containing), since, until)
        return


def rotated_stamps(directory: Path) -> list[str]:
    """The stamps of readable rotated files (plain or gzipped), oldest first."""
    return sorted(s for s, suffixes in _rotated_stamps(Path(directory)).items()
                  if suffixes & {"", ".gz"})


def read_rotated(directory: Path, stamp: str) -> Iterator[LogRecord | LogProblem]:
    """Every line of one rotated file, wherever gzip has got to; nothing if retention removed it."""
    return _read_rotated(Path(directory), stamp)


def parse_line(path: Path, line_no: int, raw: bytes) -> LogRecord | LogProblem:
    """One complete line (without its newline) as a record, or the problem with it."""
    return _parse_line(path, line_no, raw)


def _next_rotated_stamp(directory: Path, after: str | None) -> str | None:
    later = [s for s, suffixes in _rotated_stamps(directory).items()
             if (after is None or s > after) and suffixes & {"", ".gz"}]
    return min(later) if later else None


def _read_rotated(directory: Path, stamp: str, containing: bytes | None = None) -> Iterator[LogRecord | LogProblem]:
    # Prefer the plain file; if the gzip thread removed it meanwhile, the
    # .gz is complete by then.  If both are gone, retention deleted them.
    plain = _plain_path(directory, stamp)
    try:
        f: BinaryIO = open(plain, "rb")
        path = plain
    except FileNotFoundError:
        path = _gz_path(directory, stamp)
        try:
            f = gzip.open(path, "rb")
        except FileNotFoundError:
            return
    except OSError as exc:
        yield LogProblem(plain, 0, f"cannot open: {exc}")
        return
    with f:
        yield from _read_lines(path, f, containing)


def _read_lines(path: Path, f: BinaryIO, containing: bytes | None = None) -> Iterator[LogRecord | LogProblem]:
    # Binary lines split only on "\n" (text mode would also split on "\r"),
    # and decoding per line turns invalid UTF-8 into a problem for that line.
    if containing is not None:
        yield from _read_lines_containing(path, f, containing)
        return
    line_no = 0
    try:
        for raw in f:
            line_no += 1
            if not raw.endswith(b"\n"):
                yield LogProblem(path, line_no, "torn last line (no newline)")
                return
            yield _parse_line(path, line_no, raw[:-1])
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; EOFError is a truncated .gz.
        yield LogProblem(path, line_no + 1, f"unreadable file: {exc or type(exc).__name__}")


_SCAN_BYTES = 1024 * 1024


def _read_lines_containing(path: Path, f: BinaryIO, needle: bytes) -> Iterator[LogRecord | LogProblem]:
    """The lines of f that hold needle, parsed, with their line numbers.

    It reads a megabyte at a time and searches it with bytes.find, so the interpreter runs a
    few statements per megabyte instead of a json.loads per line: attachment retention's scan
    of 77 MiB of kept log took 1.07 s of CPU parsing every line and takes 0.81 s this way, most
    of it gzip's inflate, which runs without the GIL (docs/PERFORMANCE.md).
    """
    if not needle or b"\n" in needle:
        raise ValueError("containing must be non-empty bytes without a newline")
    line_no = 0  # lines wholly before `data`
    rest = b""
    try:
        while chunk := f.read(_SCAN_BYTES):
            data = rest + chunk if rest else chunk
            end = data.rfind(b"\n") + 1  # data[:end] is whole lines
            counted = 0  # newlines of data[:counted] are in line_no
            at = data.find(needle, 0, end)
            while at != -1:
                start = data.rfind(b"\n", 0, at) + 1
                stop = data.index(b"\n", at)
                line_no += data.count(b"\n", counted, start) + 1
                counted = stop + 1
                yield _parse_line(path, line_no, data[start:stop])
                at = data.find(needle, counted, end)
            line_no += data.count(b"\n", counted, end)
            rest = data[end:]
        if needle in rest:
            yield LogProblem(path, line_no + 1, "torn last line (no newline)")
    except (OSError, EOFError, zlib.error) as exc:
        yield LogProblem(path, line_no + 1, f"unreadable file: {exc or type(exc).__name__}")


def _parse_line(path: Path, line_no: int, raw: bytes) -> LogRecord | LogProblem:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LogProblem(path, line_no, f"invalid UTF-8: {exc}")
    if not text.strip():
        return LogProblem(path, line_no, "empty line")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return LogProblem(path, line_no, f"invalid JSON: {exc}")
    if not isinstance(value, dict):
        return LogProblem(path, line_no, "not a JSON object")
    return LogRecord(path, line_no, value, text)


def _filter(items: Iterator[LogRecord | LogProblem], since: float | None,
            until: float | None) -> Iterator[LogRecord | LogProblem]:
    if since is None and until is None:
        yield from items
        return
    for item in items:
        if isinstance(item, LogProblem) or _in_window(item.record, since, until):
            yield item


def _in_window(record: dict, since: float | None, until: float | None) -> bool:
    t = record.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return False
    try:
        # Dividing the integer milliseconds rounds exactly like parsing the
        # equivalent decimal seconds, so boundaries compare as intended.
        seconds = t / 1000
    except OverflowError:
        return False
    if not math.isfinite(seconds):
        return False
    if since is not None and seconds < since:
        return False
    if until is not None and seconds >= until:
        return False
    return True
