"""`securechat blobs`, `logs dump` attachment rows and /api/admin/blobs, as an admin uses them."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from helpers import Server, cli, close_all, joined

from securechat import filecrypto as fc
from securechat.config import Config
from securechat.storage.blobs import BlobStore
from securechat.storage.ciphertext_log import CiphertextLog

DAY_MS = 86_400_000


@pytest.fixture
def server(tmp_path):
    started = []

    def _start(*args, **kwargs) -> Server:
        started.append(Server(tmp_path, *args, **kwargs))
        return started[-1]

    yield _start
    for s in started:
        s.stop()


def offline_data(tmp_path):
    """A data dir as a stopped server leaves it: one blob a message names, one nobody does."""
    data = tmp_path / "data"
    store = BlobStore(data, max_blob_bytes=10**6, quota_bytes=10**7)
    named, loose = [], []
    for bucket, content in ((named, b"named" * 100), (loose, b"loose" * 300)):
        upload = store.begin(len(content), room="lobby", owner="t", now=0)
        store.write(upload, content)
        bucket.append(store.finish(upload))  # created at the epoch: past every age limit
    store.close()
    with CiphertextLog(data, fsync="never") as log:
        log.append({"event": "msg", "t": 5, "id": "1" * 32, "from": {"username": "alice"},
                    "recipients": ["a" * 32], "ct": "AAAA", "attachments": [{"id": named[0].id, "size": 500}]})
    return data, named[0], loose[0]


def test_blobs_without_a_server_shows_usage_and_prunes(tmp_path):
    data, named, loose = offline_data(tmp_path)
    runtime = tmp_path / "run"
    result = cli("blobs", "--data-dir", str(data), runtime=runtime)
    assert result.exit_code == 0, result.output
    assert f"attachments in {data / 'blobs'}" in result.output
    assert "stored        2 blobs, 2.0 KiB of a 1.0 GiB quota" in result.output
    assert "referenced    1 blobs (500 B) by messages in the kept log" in result.output
    assert "unreferenced  1 blobs (1.5 KiB), deleted once older than 1 h" in result.output
    as_json = json.loads(cli("blobs", "usage", "--json", "--data-dir", str(data), runtime=runtime).output)
    assert as_json["count"] == 2 and as_json["referenced"] == {"count": 1, "bytes": 500}
    assert as_json["quota_bytes"] == Config().attachments_quota_bytes
    dry = cli("blobs", "prune", "--dry-run", "--data-dir", str(data), runtime=runtime)
    assert dry.exit_code == 0 and "would delete 2 blobs (2.0 KiB): 2 past the age limit; 0 kept" in dry.output
    assert (data / "blobs" / loose.id).exists()
    # With no age limit only the message's reference keeps a blob.
    done = cli("blobs", "prune", "--data-dir", str(data), runtime=runtime, SECURECHAT_ATTACHMENTS_RETENTION_DAYS="0")
    assert done.exit_code == 0, done.output
    assert f"deleted 1 blobs (1.5 KiB): 1 no longer referenced; 1 kept in {data} (no server running)" in done.output
    assert not (data / "blobs" / loose.id).exists() and (data / "blobs" / named.id).exists()


def test_logs_dump_shows_each_attachment_reference(tmp_path):
    data, named, _ = offline_data(tmp_path)
    result = cli("logs", "dump", "--data-dir", str(data), runtime=tmp_path / "run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    (at,) = [i for i, line in enumerate(lines) if " file " in line]
    assert lines[at - 1].split()[2] == "msg"
    assert lines[at].split() == ["file", "500", named.id[:32]] and lines[at + 1].split() == [named.id[32:]]
    dumped = json.loads(cli("logs", "dump", "--json", "--data-dir", str(data), runtime=tmp_path / "run").output)
    assert dumped["attachments"] == [{"id": named.id, "size": 500}]


def test_blobs_of_a_missing_data_dir_is_a_clear_error(tmp_path):
    result = cli("blobs", "--data-dir", str(tmp_path / "nope"), runtime=tmp_path / "run")
    assert result.exit_code == 1 and "no data in" in result.output and "Traceback" not in result.output


def test_blobs_through_the_running_server(server, tmp_path):
    running = server()

    async def scenario():
        alice, bob = await joined(running.ws, "alice", "bob")
        while len(alice.members) < 2:
            await alice.recv(2)
        _, ref = await alice.send_file(os.urandom(200_000), "photo.jpg", "image/jpeg")
        await close_all([alice, bob])
        return ref

    ref = asyncio.run(scenario())
    result = cli("blobs", runtime=running.runtime)
    assert result.exit_code == 0, result.output
    assert f"attachments in {running.data / 'blobs'}" in result.output
    assert "stored        1 blobs, 195.4 KiB" in result.output and "referenced    1 blobs" in result.output
    prune = cli("blobs", "prune", "--json", "--data-dir", str(running.data), runtime=running.runtime)
    answer = json.loads(prune.output)
    assert answer == {"deleted": [], "freed_bytes": 0, "kept": 1, "referenced": 1, "dry_run": False}
    text = cli("blobs", "prune", "--dry-run", "--data-dir", str(running.data), runtime=running.runtime).output
    assert text.startswith("would delete 0 blobs (0 B); 1 kept by the server at http://")
    dump = cli("logs", "dump", "--data-dir", str(running.data), runtime=running.runtime).output
    assert ref.id[:32] in dump and str(fc.blob_size(200_000)) in dump
    running.stop()


async def admin(http_client, base_url, path, token, method="GET", body=None):
    response = await http_client.fetch(base_url + path, method=method, body=body, raise_error=False,
                                       headers={"Authorization": f"Bearer {token}"} if token else {})
    return response.code, json.loads(response.body or b"null")


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", admin_token="blob-admin-token-0123456789")


@pytest.mark.gen_test(timeout=30)
async def test_the_admin_api_reports_and_prunes(http_client, base_url, connect, blob_store):
    for path, method in (("/api/admin/blobs", "GET"), ("/api/admin/blobs/prune", "POST")):
        code, _ = await admin(http_client, base_url, path, "wrong", method, "" if method == "POST" else None)
        assert code == 401
    alice = await connect("alice")
    loose = await alice.upload_file(b"never sent", "x.txt")  # uploaded, no message names it
    code, report = await admin(http_client, base_url, "/api/admin/blobs", "blob-admin-token-0123456789")
    assert code == 200 and report["enabled"] is True and report["count"] == 1
    assert report["unreferenced"] == {"count": 1, "bytes": loose.blob_size}
    code, result = await admin(http_client, base_url, "/api/admin/blobs/prune", "blob-admin-token-0123456789",
                               "POST", json.dumps({"dry_run": True}))
    assert code == 200 and result["deleted"] == [] and result["kept"] == 1  # still inside its grace time
    info = blob_store.get(loose.id)
    blob_store._blobs[loose.id] = type(info)(info.id, info.size, info.created - 2 * 3600_000, info.rooms)
    code, result = await admin(http_client, base_url, "/api/admin/blobs/prune", "blob-admin-token-0123456789",
                               "POST", "")
    assert code == 200 and result["deleted"] == [{"id": loose.id, "size": loose.blob_size, "reason": "unreferenced"}]
    assert not blob_store.path(loose.id).exists()
