"""`securechat blobs` without a running server: usage and retention straight on the data dir.

With a server running, the CLI goes through GET/POST /api/admin/blobs instead, so uploads in
progress are seen and nothing is deleted under the server's feet; here the log directory's
writer lock proves no server is using the data dir before anything is deleted.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..config import Config
from ..filecrypto import blob_size
from ..storage import blobs as storage
from ..storage.ciphertext_log import exclusive


def describe(config: Config, report: dict) -> dict:
    """The usage report plus the limits that explain it."""
    return {
        "directory": str(config.data_dir / storage.DIR_NAME),
        **report,
        "quota_bytes": config.attachments_quota_bytes,
        "max_file_bytes": config.attachments_max_bytes,
        "retention_days": config.attachments_retention_days,
        "grace_seconds": config.attachments_grace_seconds,
    }


def log_dirs(config: Config) -> list[Path]:
    """The data dir's log and each worker's of `serve --workers` (they share the blobs)."""
    workers = Path(config.data_dir) / "workers"
    found = [Path(config.log_dir)]
    if workers.is_dir():
        found += sorted(path for path in workers.iterdir() if path.is_dir())
    return found


def offline_usage(config: Config) -> dict:
    """Read-only: safe beside a running server too (it then misses uploads in progress)."""
    return describe(config, storage.usage(list(storage.scan(config.data_dir / storage.DIR_NAME)), config.log_dir))


def offline_prune(config: Config, *, dry_run: bool = False, now_ms: int | None = None) -> storage.PruneResult:
    """Apply retention with no server running; LogLocked if one holds the data dir (or a
    worker's log in it): what any worker's log refers to is kept."""
    dirs = log_dirs(config)
    with contextlib.ExitStack() as locks:
        for directory in dirs:
            locks.enter_context(exclusive(directory))
        store = storage.BlobStore(config.data_dir, max_blob_bytes=blob_size(config.attachments_max_bytes),
                                  quota_bytes=config.attachments_quota_bytes)
        try:
            return storage.apply_retention(
                store, dirs, retention_days=config.attachments_retention_days,
                grace_seconds=config.attachments_grace_seconds,
                now_ms=int(time.time() * 1000) if now_ms is None else now_ms, dry_run=dry_run)
        finally:
            store.close()
