"""The blob store on real files: names, modes, quota, retention, restarts, a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from securechat import filecrypto as fc
from securechat.storage.blobs import BlobError, BlobStore, apply_retention, referenced_blobs, scan, usage
from securechat.storage.ciphertext_log import CiphertextLog

NOW = time.time()
DAY_MS = 86_400_000


def store_at(path, quota=10 * 1024 * 1024, max_blob=5 * 1024 * 1024, **kwargs) -> BlobStore:
    return BlobStore(path, max_blob_bytes=max_blob, quota_bytes=quota, disk_reserve_bytes=0, **kwargs)


def put(store: BlobStore, data: bytes, room: str = "lobby", owner: str = "tok", pieces: int = 3):
    upload = store.begin(len(data), room=room, owner=owner, now=NOW)
    upload.begin_part()
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        store.write(upload, data[i:i + step])
    return store.finish(upload)


def log_with(directory, *blob_ids, t: int = 1) -> None:
    with CiphertextLog(directory, fsync="never", gzip_in_background=False) as log:
        log.append({"event": "msg", "t": t, "id": "0" * 32, "attachments": [{"id": b, "size": 1} for b in blob_ids]})


def test_a_blob_is_named_by_the_hash_of_its_bytes_and_private(tmp_path):
    store = store_at(tmp_path)
    data = os.urandom(fc.BLOCK_BYTES + 77)
    info = put(store, data)
    assert info.id == fc.blob_hash(data) and info.size == len(data) and info.rooms == ("lobby",)
    path = tmp_path / "blobs" / info.id
    assert path.read_bytes() == data
    for item in (tmp_path / "blobs", tmp_path / "blobs" / "uploads"):
        assert item.stat().st_mode & 0o777 == 0o700
    for item in (path, tmp_path / "blobs" / f"{info.id}.json"):
        assert item.stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "blobs" / f"{info.id}.json").read_text())["rooms"] == ["lobby"]
    assert list((tmp_path / "blobs" / "uploads").iterdir()) == []
    store.close()


def test_the_same_bytes_twice_are_one_blob_readable_from_both_rooms(tmp_path):
    store = store_at(tmp_path)
    first = put(store, b"same bytes")
    second = put(store, b"same bytes", room="other")
    assert first.id == second.id and second.rooms == ("lobby", "other")
    assert store.used_bytes == len(b"same bytes") and store.reserved_bytes == 0
    assert store.readable(first.id, "other") and not store.readable(first.id, "third")
    store.close()


@pytest.mark.parametrize("bad", ["../ciphertext.jsonl", "A" * 64, "a" * 63, "a" * 64 + "/", "", None, 5,
                                 "a" * 64 + ".json", "uploads"])
def test_ids_are_validated_before_they_touch_a_path(tmp_path, bad):
    store = store_at(tmp_path)
    assert store.get(bad) is None and store.readable(bad, "lobby") is None
    with pytest.raises(ValueError):
        store.path(bad)
    assert store.upload(bad, "tok") is None
    store.close()


def test_size_and_quota_are_checked_before_anything_is_written(tmp_path):
    store = store_at(tmp_path, quota=1000, max_blob=600)
    with pytest.raises(BlobError) as info:
        store.begin(601, room="lobby", owner="t", now=NOW)
    assert info.value.code == "too_large"
    put(store, b"x" * 500)
    held = store.begin(400, room="lobby", owner="t", now=NOW)  # reserved, not yet written
    with pytest.raises(BlobError) as info:
        store.begin(101, room="lobby", owner="t", now=NOW)
    assert info.value.code == "quota_exceeded" and info.value.details["free_bytes"] == 100
    store.abort(held)
    store.begin(500, room="lobby", owner="t", now=NOW)
    with pytest.raises(BlobError):
        store.write(store.pending()[0], b"y" * 501)  # more than announced
    store.close()


def test_a_broken_part_rolls_back_bytes_and_hash(tmp_path):
    store = store_at(tmp_path)
    upload = store.begin(20, room="lobby", owner="t", now=NOW)
    upload.begin_part()
    store.write(upload, b"0123456789")
    upload.begin_part()
    store.write(upload, b"garbage")
    upload.rollback_part()
    assert upload.received == 10 and os.path.getsize(upload.path) == 10
    upload.begin_part()
    store.write(upload, b"abcdefghij")
    assert store.finish(upload).id == fc.blob_hash(b"0123456789abcdefghij")
    store.close()


def test_a_restart_keeps_blobs_and_drops_unfinished_uploads(tmp_path):
    store = store_at(tmp_path)
    kept = put(store, b"kept")
    store.begin(10, room="lobby", owner="t", now=NOW)
    (tmp_path / "blobs" / f"{kept.id}.json.tmp").write_text("{")  # a crash mid-write
    (tmp_path / "blobs" / f"{'c' * 64}.json").write_text("{}")  # sidecar without its blob
    orphan = b"no metadata"
    (tmp_path / "blobs" / fc.blob_hash(orphan)).write_bytes(orphan)
    again = store_at(tmp_path)  # as after a kill: the first store never closed
    assert again.get(kept.id) == kept
    assert again.get(fc.blob_hash(orphan)).rooms == ()  # nobody can fetch it; retention removes it
    assert list((tmp_path / "blobs" / "uploads").iterdir()) == []
    names = sorted(p.name for p in (tmp_path / "blobs").iterdir())
    assert names == sorted([kept.id, f"{kept.id}.json", fc.blob_hash(orphan), "uploads"])
    again.close()
    store.close()


def test_retention_deletes_the_expired_and_the_unreferenced_after_grace(tmp_path):
    store = store_at(tmp_path)
    old, referenced, loose, fresh = (put(store, data) for data in (b"old", b"referenced", b"loose", b"fresh"))
    now = int(NOW * 1000)
    for info, age in ((old, 40 * DAY_MS), (referenced, 2 * DAY_MS), (loose, 2 * DAY_MS), (fresh, 1000)):
        store._blobs[info.id] = type(info)(info.id, info.size, now - age, info.rooms)
    log_with(tmp_path, old.id, referenced.id)
    assert referenced_blobs(tmp_path) == {old.id, referenced.id}
    planned = apply_retention(store, tmp_path, retention_days=30, grace_seconds=3600, now_ms=now, dry_run=True)
    assert {(i.id, why) for i, why in planned.deleted} == {(old.id, "expired"), (loose.id, "unreferenced")}
    assert len(store.blobs()) == 4 and planned.kept == 2
    done = apply_retention(store, tmp_path, retention_days=30, grace_seconds=3600, now_ms=now)
    assert done.freed_bytes == len(b"old") + len(b"loose") and done.kept == 2
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir() if ".json" not in p.name) == sorted(
        [referenced.id, fresh.id, "uploads"])
    # retention_days = 0: no age limit, references alone decide.
    store._blobs[referenced.id] = type(referenced)(referenced.id, 1, now - 400 * DAY_MS, ("lobby",))
    assert apply_retention(store, tmp_path, retention_days=0, grace_seconds=3600, now_ms=now).deleted == []
    store.close()


def test_a_message_sent_during_a_prune_keeps_its_blob(tmp_path):
    store = store_at(tmp_path)
    info = put(store, b"just referenced")
    store.mark_referenced([info.id])  # the relay logged a message naming it after the scan began
    assert store.prune(set(), now_ms=int(NOW * 1000) + DAY_MS, max_age_ms=None, grace_ms=0) == []
    store.close()


def test_rotating_old_logs_away_frees_their_attachments(tmp_path):
    store = store_at(tmp_path)
    first, second = put(store, b"first"), put(store, b"second")
    with CiphertextLog(tmp_path, fsync="never", keep=1, gzip_in_background=False) as log:
        log.append({"event": "msg", "t": 1, "attachments": [{"id": first.id, "size": 5}]})
        log.rotate()
        assert referenced_blobs(tmp_path) == {first.id}  # read from the gzipped rotated file
        log.append({"event": "msg", "t": 2, "attachments": [{"id": second.id, "size": 6}]})
        log.rotate()  # keep = 1: the file naming `first` is deleted
    assert referenced_blobs(tmp_path) == {second.id}
    later = int(NOW * 1000) + 2 * 3600_000
    result = apply_retention(store, tmp_path, retention_days=30, grace_seconds=3600, now_ms=later)
    assert [(i.id, why) for i, why in result.deleted] == [(first.id, "unreferenced")]
    store.close()


def test_usage_counts_referenced_and_loose(tmp_path):
    store = store_at(tmp_path)
    a, b = put(store, b"a" * 10), put(store, b"b" * 20)
    log_with(tmp_path, a.id)
    pending = [store.begin(7, room="lobby", owner="t", now=NOW)]
    report = usage(store.blobs(), tmp_path, pending)
    assert report["count"] == 2 and report["bytes"] == 30
    assert report["referenced"] == {"count": 1, "bytes": 10} and report["unreferenced"] == {"count": 1, "bytes": 20}
    assert report["uploads"] == {"count": 1, "reserved_bytes": 7}
    assert sorted(i.id for i in scan(tmp_path / "blobs")) == sorted([a.id, b.id])
    store.close()


def test_the_disk_must_keep_room_for_the_log(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = BlobStore(tmp_path, max_blob_bytes=100, quota_bytes=1000, disk_reserve_bytes=free)
    with pytest.raises(BlobError) as info:
        store.begin(100, room="lobby", owner="t", now=NOW)
    assert info.value.code == "no_space"
    store.close()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 1 MiB tmpfs, as root can mount one (CI runs as root); elsewhere this test cannot run."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_that_fills_mid_upload_refuses_the_upload_cleanly(tiny_filesystem):
    store = store_at(tiny_filesystem, quota=10 * 1024 * 1024)
    with pytest.raises(BlobError) as info:
        store.begin(2 * 1024 * 1024, room="lobby", owner="t", now=NOW)
    assert info.value.code == "no_space"  # known too big from the start
    upload = store.begin(700 * 1024, room="lobby", owner="t", now=NOW)
    upload.begin_part()
    # Something else fills the disk after the upload started.
    (tiny_filesystem / "filler").write_bytes(b"f" * 600 * 1024)
    with pytest.raises(BlobError) as info:
        for _ in range(700 // 32):
            store.write(upload, b"z" * 32 * 1024)
    assert info.value.code == "no_space"
    store.abort(upload)
    (tiny_filesystem / "filler").unlink()
    assert list((tiny_filesystem / "blobs" / "uploads").iterdir()) == []
    assert put(store, b"small file still fits").size == 21
    store.close()


@pytest.mark.gen_test
async def test_hourly_retention_scans_on_the_maintenance_thread_at_the_servers_priority_and_not_without_blobs(app, blob_store):
    api = app.settings["blob_api"]
    # (thread name, nice value) of each retention run. Not at a nice above the server's: that
    # thread shares the loop's GIL, and a low-priority holder stalls the loop (background.py).
    scans = []
    server_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    real = api.retention

    def retention(*args, **kwargs):
        scans.append((threading.current_thread().name.split("_")[0],
                      os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real(*args, **kwargs)

    api.retention = retention
    await api.housekeeping()  # the first tick is retention's: with nothing stored, no scan
    assert scans == []

    loose = put(blob_store, b"nobody refers to me")
    blob_store._blobs[loose.id] = type(loose)(loose.id, loose.size, int(NOW * 1000) - 2 * DAY_MS, loose.rooms)
    await api.housekeeping()
    assert scans == [] and [b.id for b in blob_store.blobs()] == [loose.id], "retention waits for the hour"

    api._last_prune -= 3600
    await api.housekeeping()
    assert scans == [("blob-retention", server_nice)]
    assert blob_store.blobs() == [] and not (blob_store.directory / loose.id).exists()
