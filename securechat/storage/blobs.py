"""Attachment blobs on disk: `<data dir>/blobs/`, owner-only, each named by its blob hash.

The server stores what browsers upload without understanding it: an encrypted file (§10)
is an opaque blob to it. The name of a blob is the blob hash the *server* computes while the
bytes arrive (filecrypto.BlobHasher), so a client can neither choose a file name nor overwrite
another blob, and every name is validated as exactly 64 lowercase hex digits before it is
joined to a path.

    blobs/<id>            the blob (0600)
    blobs/<id>.json       {"size", "created", "rooms"}: which rooms' members may fetch it
    blobs/uploads/<u>.part  an upload in progress (removed at start-up: uploads die with the process)
    blobs/uploads/<n>/<u>.part  the same for worker n of `serve --workers` (shared=True)
    blobs/uploads/store-id  a random name of the directory, for the cluster's upload reservations

Under `serve --workers` every worker opens the same directory (`shared`): each keeps its own
uploads (an upload's parts all reach the worker holding the uploader's session, see
web/blobs.py), and a blob another worker finished is read from disk the first time it is asked
for, so any worker can serve any download.

File I/O only: no Tornado, no sockets. Methods marked "worker thread" do disk work and touch
only the one upload they are given; everything else runs on the caller's thread (the server's
event loop), under one lock where the two meet.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..filecrypto import BLOB_ID, BlobHasher
from .background import maintenance_executor
from .ciphertext_log import LogRecord, read_log

log = logging.getLogger(__name__)

DIR_NAME = "blobs"
UPLOADS_NAME = "uploads"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}\Z")
_DIR_MODE = 0o700
_FILE_MODE = 0o600
# Free space an upload must leave on the disk, so attachments never starve the ciphertext log.
DISK_RESERVE_BYTES = 64 * 1024 * 1024


class BlobError(Exception):
    """Why a blob operation was refused; `code` is the stable error code of §10.5."""

    def __init__(self, code: str, message: str, **details):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True)
class BlobInfo:
    id: str
    size: int
    created: int  # ms since the epoch
    rooms: tuple[str, ...]

    def as_json(self) -> dict:
        return {"size": self.size, "created": self.created, "rooms": list(self.rooms)}


@dataclass(eq=False)
class Upload:
    """One blob being uploaded in parts (§10.5): its reservation, file and running hash."""

    id: str
    owner: str  # the session (capability) that may continue it
    room: str
    size: int  # announced blob size, reserved against the quota
    path: Path
    fd: int
    last_active: float
    received: int = 0
    hasher: BlobHasher = field(default_factory=BlobHasher)
    busy: bool = False  # a part is being received right now
    cancelled: bool = False  # cancelled while a part was arriving: abort when it ends
    _mark: tuple[int, BlobHasher] | None = None

    def begin_part(self) -> None:
        """Remember where this part starts, so a part that breaks off can be undone."""
        self._mark = (self.received, self.hasher.copy())

    def rollback_part(self) -> None:
        if self._mark is not None:
            self.received, self.hasher = self._mark
            os.ftruncate(self.fd, self.received)
            self._mark = None


def is_blob_id(value: object) -> bool:
    return isinstance(value, str) and bool(BLOB_ID.match(value))


def _private_dir(path: Path) -> None:
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != _DIR_MODE:
        os.chmod(path, _DIR_MODE)


def _write_private(path: Path, data: bytes) -> None:
    """Write a small file atomically (temp file, fsync, rename), mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Every blob of one data directory, the uploads in progress and the quota they share."""

    def __init__(self, data_dir: Path, *, max_blob_bytes: int, quota_bytes: int,
                 disk_reserve_bytes: int = DISK_RESERVE_BYTES, worker: int | None = None):
        self.directory = Path(data_dir) / DIR_NAME
        self.uploads_dir = self.directory / UPLOADS_NAME
        # Other processes finish blobs in this directory too: look on disk for what we lack.
        self.shared = worker is not None
        if self.shared:
            _private_dir(Path(data_dir))
            _private_dir(self.directory)
            _private_dir(self.uploads_dir)
            self.uploads_dir = self.uploads_dir / str(worker)
        self.max_blob_bytes = max_blob_bytes
        self.quota_bytes = quota_bytes
        self.disk_reserve_bytes = disk_reserve_bytes
        self._lock = threading.Lock()
        self._blobs: dict[str, BlobInfo] = {}
        self._uploads: dict[str, Upload] = {}
        self._referenced_lately: set[str] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._maintenance: concurrent.futures.ThreadPoolExecutor | None = None
        # Called with each upload that stops holding its reservation (finished or aborted), on
        # whichever thread did it: the cluster's reservation in Redis goes with it.
        self.released: Callable[[Upload], None] | None = None
        self._scope: str | None = None
        _private_dir(Path(data_dir))
        _private_dir(self.directory)
        _private_dir(self.uploads_dir)
        # A worker starting (again) next to others may not remove their temp files, which are
        # in flight: it cleans only its own uploads.
        _clean(self.directory, self.uploads_dir, uploads_only=self.shared)
        self._blobs = {info.id: info for info in scan(self.directory)}

    # -- reading -------------------------------------------------------------------------------

    def get(self, blob_id: str) -> BlobInfo | None:
        if not is_blob_id(blob_id):
            return None
        with self._lock:
            info = self._blobs.get(blob_id)
        if info is None and self.shared:
            info = self._from_disk(blob_id)
        return info

    def readable(self, blob_id: str, room: str) -> BlobInfo | None:
        """The blob, if members of `room` may fetch it; None otherwise (no matter why)."""
        info = self.get(blob_id)
        if info is not None and room not in info.rooms and self.shared:
            info = self._from_disk(blob_id)  # another worker may have added the room since
        return info if info is not None and room in info.rooms else None

    def _from_disk(self, blob_id: str) -> BlobInfo | None:
        """A blob another worker stored (shared directory), read and remembered; None if absent."""
        try:
            size = (self.directory / blob_id).stat().st_size
            meta = json.loads((self.directory / f"{blob_id}.json").read_text())
            info = BlobInfo(blob_id, size, int(meta["created"]), tuple(r for r in meta["rooms"] if isinstance(r, str)))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        with self._lock:
            self._blobs[blob_id] = info
        return info

    def rescan(self) -> None:
        """Every blob on disk again (shared directory: before an upload is checked against the quota)."""
        found = {info.id: info for info in scan(self.directory)}
        with self._lock:
            self._blobs = found

    def path(self, blob_id: str) -> Path:
        if not is_blob_id(blob_id):
            raise ValueError("not a blob id")
        return self.directory / blob_id

    def blobs(self) -> list[BlobInfo]:
        with self._lock:
            return list(self._blobs.values())

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(info.size for info in self._blobs.values())

    @property
    def reserved_bytes(self) -> int:
        with self._lock:
            return sum(upload.size for upload in self._uploads.values())

    @property
    def io(self) -> concurrent.futures.ThreadPoolExecutor:
        """The worker threads for disk writes, so the event loop never waits for the disk."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="blob-io")
        return self._executor

    @property
    def maintenance(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread for retention's scan of the log (~1 s of CPU per 80 MiB of kept log, mostly
        zlib's inflate, which lets go of the GIL), so that one scan runs at a time and the default
        executor stays free for uploads and the admin API. Why not at a lower priority:
        storage/background.py."""
        if self._maintenance is None:
            self._maintenance = maintenance_executor("blob-retention")
        return self._maintenance

    @property
    def scope(self) -> str:
        """A random name of this blob directory, the same for every process that opens it
        (blobs/uploads/store-id, made once): what a cluster-wide reservation is counted against."""
        if self._scope is None:
            home = self.directory / UPLOADS_NAME
            path = home / "store-id"
            try:
                self._scope = path.read_text().strip()
            except FileNotFoundError:
                tmp = home / f"store-id.{secrets.token_hex(8)}.tmp"
                _write_private(tmp, secrets.token_hex(16).encode())
                try:
                    os.link(tmp, path)  # atomic, and never over another process's name
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink(missing_ok=True)
                self._scope = path.read_text().strip()
        return self._scope

    def check_quota(self, upload: Upload, others: int) -> None:
        """BlobError quota_exceeded unless the stored blobs, our reservations (`upload`'s among
        them) and `others` (other processes' uploads in progress, from the cluster) fit."""
        with self._lock:
            committed = sum(info.size for info in self._blobs.values())
            reserved = sum(u.size for u in self._uploads.values())
        if committed + reserved + others > self.quota_bytes:
            free = max(0, self.quota_bytes - committed - (reserved - upload.size) - others)
            raise BlobError("quota_exceeded", "the server's storage for attachments is full "
                            f"({free} of {self.quota_bytes} bytes left)", free_bytes=free)

    # -- uploading -----------------------------------------------------------------------------

    def begin(self, size: int, *, room: str, owner: str, now: float) -> Upload:
        """Reserve `size` bytes of the quota and open the part file, or BlobError."""
        if size > self.max_blob_bytes:
            raise BlobError("too_large", f"the file is larger than this server accepts "
                            f"({self.max_blob_bytes} bytes encrypted)", max_bytes=self.max_blob_bytes)
        with self._lock:
            committed = sum(info.size for info in self._blobs.values())
            reserved = sum(upload.size for upload in self._uploads.values())
            if committed + reserved + size > self.quota_bytes:
                free = max(0, self.quota_bytes - committed - reserved)
                raise BlobError("quota_exceeded", "the server's storage for attachments is full "
                                f"({free} of {self.quota_bytes} bytes left)", free_bytes=free)
            if shutil.disk_usage(self.directory).free < size + reserved + self.disk_reserve_bytes:
                raise BlobError("no_space", "the server's disk is too full for this file")
            upload_id = secrets.token_hex(16)
            path = self.uploads_dir / f"{upload_id}.part"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            os.fchmod(fd, _FILE_MODE)
            upload = Upload(upload_id, owner, room, size, path, fd, now)
            self._uploads[upload_id] = upload
        return upload

    def upload(self, upload_id: str, owner: str) -> Upload | None:
        """The upload, if `owner` started it."""
        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            return None
        with self._lock:
            upload = self._uploads.get(upload_id)
        return upload if upload is not None and secrets.compare_digest(upload.owner, owner) else None

    def write(self, upload: Upload, data: bytes) -> None:
        """Append one piece of a part (worker thread); BlobError when the disk refuses it."""
        if upload.received + len(data) > upload.size:
            raise BlobError("too_large", "more bytes than the upload announced")
        view = memoryview(data)
        try:
            while view:
                view = view[os.pwrite(upload.fd, view, upload.received + len(data) - len(view)):]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BlobError("no_space", "the server's disk is full") from None
            raise
        upload.hasher.update(data)
        upload.received += len(data)

    def finish(self, upload: Upload) -> BlobInfo:
        """Make a complete upload a blob under the hash of its bytes (worker thread)."""
        if upload.received != upload.size:
            raise BlobError("bad_offset", "the upload is not complete", offset=upload.received)
        os.fsync(upload.fd)
        os.close(upload.fd)
        upload.fd = -1
        blob_id = upload.hasher.hexdigest()
        created = int(upload.last_active * 1000)
        if self.shared:
            self.get(blob_id)  # finished by another worker before: merge the rooms
        with self._lock:
            self._uploads.pop(upload.id, None)
            known = self._blobs.get(blob_id)
            if known is not None:
                # The same bytes again (a retry): one copy, readable from both rooms.
                upload.path.unlink(missing_ok=True)
                rooms = known.rooms if upload.room in known.rooms else (*known.rooms, upload.room)
                info = BlobInfo(blob_id, known.size, known.created, rooms)
            else:
                os.rename(upload.path, self.directory / blob_id)
                info = BlobInfo(blob_id, upload.size, created, (upload.room,))
            _write_private(self.directory / f"{blob_id}.json", json.dumps(info.as_json()).encode())
            _fsync_dir(self.directory)
            self._blobs[blob_id] = info
            self._referenced_lately.discard(blob_id)
        if self.released is not None:
            self.released(upload)  # only once the blob is on disk: always counted one way or the other
        return info

    def abort(self, upload: Upload) -> None:
        with self._lock:
            held = self._uploads.pop(upload.id, None) is not None
        if upload.fd >= 0:
            os.close(upload.fd)
            upload.fd = -1
        upload.path.unlink(missing_ok=True)
        if held and self.released is not None:
            self.released(upload)

    def abort_owner(self, owner: str) -> int:
        """Cancel every upload of a session that ended; how many there were."""
        with self._lock:
            mine = [u for u in self._uploads.values() if u.owner == owner and not u.busy]
        for upload in mine:
            self.abort(upload)
        return len(mine)

    def pending(self, owner: str | None = None) -> list[Upload]:
        with self._lock:
            return [u for u in self._uploads.values() if owner is None or u.owner == owner]

    def expire_idle(self, now: float, idle_seconds: float) -> int:
        with self._lock:
            idle = [u for u in self._uploads.values() if not u.busy and now - u.last_active > idle_seconds]
        for upload in idle:
            self.abort(upload)
        return len(idle)

    # -- references and retention -----------------------------------------------------------

    def mark_referenced(self, blob_ids) -> None:
        """A message just referred to these: keep them through a prune that scanned before."""
        with self._lock:
            self._referenced_lately.update(blob_ids)

    def prune(self, referenced: set[str], *, now_ms: int, max_age_ms: int | None, grace_ms: int,
              dry_run: bool = False) -> list[tuple[BlobInfo, str]]:
        """Delete blobs past retention: older than max_age_ms, or (once older than grace_ms)
        referenced by no message of the kept log. Returns (blob, reason) for each."""
        with self._lock:
            keep = referenced | self._referenced_lately
            doomed = []
            for info in self._blobs.values():
                age = now_ms - info.created
                if max_age_ms is not None and age > max_age_ms:
                    doomed.append((info, "expired"))
                elif info.id not in keep and age > grace_ms:
                    doomed.append((info, "unreferenced"))
            if not dry_run:
                for info, _ in doomed:
                    self._blobs.pop(info.id, None)
                    self._referenced_lately.discard(info.id)
        if not dry_run:
            for info, _ in doomed:
                # An open download keeps reading its file descriptor after the unlink.
                (self.directory / f"{info.id}.json").unlink(missing_ok=True)
                (self.directory / info.id).unlink(missing_ok=True)
            if doomed:
                _fsync_dir(self.directory)
        return doomed

    def close(self) -> None:
        for upload in self.pending():
            self.abort(upload)
        for executor in (self._executor, self._maintenance):
            if executor is not None:
                executor.shutdown(wait=True)
        self._executor = self._maintenance = None


def _clean(directory: Path, uploads_dir: Path, *, uploads_only: bool = False) -> None:
    """What a crash or a kill leaves behind: parts of uploads, temp files, orphan sidecars."""
    for stale in uploads_dir.iterdir():
        if stale.is_file():
            stale.unlink(missing_ok=True)
    if uploads_only:
        return
    for entry in os.scandir(directory):
        orphan = entry.name.endswith(".json") and not (directory / entry.name[:-5]).exists()
        if entry.name.endswith(".tmp") or orphan:
            Path(entry.path).unlink(missing_ok=True)


def scan(directory: Path):
    """A BlobInfo for every blob file; one without readable metadata is listed with no rooms
    (no one can fetch it, and retention removes it once its grace time is over). Read-only."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if not BLOB_ID.match(entry.name) or not entry.is_file():
            continue
        stat = entry.stat()
        meta_path = directory / f"{entry.name}.json"
        try:
            meta = json.loads(meta_path.read_text())
            rooms = tuple(r for r in meta["rooms"] if isinstance(r, str))
            created = int(meta["created"])
        except (OSError, ValueError, KeyError, TypeError):
            # Readable by nobody until uploaded again; retention removes it after the grace time.
            rooms, created = (), int(stat.st_mtime * 1000)
            log.warning("blob %s has no readable metadata; it is kept but no room can fetch it", entry.name)
        yield BlobInfo(entry.name, stat.st_size, created, rooms)


# -- retention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    deleted: list[tuple[BlobInfo, str]]  # (blob, "expired" | "unreferenced")
    kept: int
    referenced: int  # distinct blob ids the kept log files refer to
    dry_run: bool

    @property
    def freed_bytes(self) -> int:
        return sum(info.size for info, _ in self.deleted)

    def as_json(self) -> dict:
        return {"deleted": [{"id": info.id, "size": info.size, "reason": why} for info, why in self.deleted],
                "freed_bytes": self.freed_bytes, "kept": self.kept, "referenced": self.referenced,
                "dry_run": self.dry_run}


def referenced_blobs(log_dir: Path | list[Path]) -> set[str]:
    """Every blob id a msg record of the kept log files (live and rotated) refers to (§8);
    of every worker's log when given their directories."""
    found: set[str] = set()
    if isinstance(log_dir, list):
        for one in log_dir:
            found |= referenced_blobs(one)
        return found
    # The server writes every record itself (compact JSON, keys unescaped): a msg with
    # attachments holds these bytes, and most lines, which do not, are never parsed.
    for item in read_log(log_dir, containing=b'"attachments"'):
        if not isinstance(item, LogRecord):
            continue
        for ref in item.record.get("attachments") or ():
            if isinstance(ref, dict) and is_blob_id(ref.get("id")):
                found.add(ref["id"])
    return found


def apply_retention(store: BlobStore, log_dir: Path | list[Path], *, retention_days: float, grace_seconds: float,
                    now_ms: int | None = None, dry_run: bool = False) -> PruneResult:
    """Delete what retention says must go (§10.6); the log scan is the slow part, off the loop."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    referenced = referenced_blobs(log_dir)
    max_age = int(retention_days * 86_400_000) if retention_days > 0 else None
    deleted = store.prune(referenced, now_ms=now_ms, max_age_ms=max_age, grace_ms=int(grace_seconds * 1000),
                          dry_run=dry_run)
    kept = len(store.blobs()) - (len(deleted) if dry_run else 0)
    return PruneResult(deleted, kept, len(referenced), dry_run)


def usage(blobs: list[BlobInfo], log_dir: Path, pending: list[Upload] = ()) -> dict:
    """What `securechat blobs` and GET /api/admin/blobs show (§10.6): sizes, references, age."""
    referenced = referenced_blobs(log_dir)
    kept = [info for info in blobs if info.id in referenced]
    loose = [info for info in blobs if info.id not in referenced]
    return {
        "count": len(blobs),
        "bytes": sum(info.size for info in blobs),
        "referenced": {"count": len(kept), "bytes": sum(info.size for info in kept)},
        "unreferenced": {"count": len(loose), "bytes": sum(info.size for info in loose)},
        "oldest": min((info.created for info in blobs), default=None),
        "uploads": {"count": len(pending), "reserved_bytes": sum(u.size for u in pending)},
    }
