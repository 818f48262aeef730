"""Encrypted attachments end to end (docs/PROTOCOL.md §10): real server on loopback, real
clients, real files on disk. The server only ever holds ciphertext and checks who may ask."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import pytest
from conftest import serving, settle
from helpers import files_containing
from tornado.httpclient import AsyncHTTPClient

from securechat import filecrypto as fc
from securechat.client import AttachmentError, ChatClient, Message
from securechat.config import Config
from securechat.storage.blobs import BlobInfo

pytestmark = pytest.mark.gen_test(timeout=60)

MARKER = b"PLAINTEXT-MARKER-attachments-7f3a"
NAME = "secret-plan-NAME-MARKER.pdf"


def document(size: int) -> bytes:
    """A test file: the marker every 4 KiB, so any plaintext on disk would show."""
    block = MARKER + bytes(range(256)) * 16
    return (block * (size // len(block) + 1))[:size]


async def call(base_url, method, path, token=None, headers=None, body=None):
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await AsyncHTTPClient().fetch(base_url + path, method=method, headers=headers, body=body,
                                             raise_error=False, allow_nonstandard_methods=True)
    try:
        answer = json.loads(response.body) if response.body else None
    except ValueError:
        answer = None
    return response.code, answer, response


async def test_alice_sends_a_file_and_bob_gets_it_intact(connect, config, hub):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    data = document(3 * 1024 * 1024 + 12345)
    msg_id, ref = await alice.send_file(data, NAME, "application/pdf", text="the plan")
    received = await bob.next_message()
    assert isinstance(received, Message) and received.text == "the plan"
    (got,) = received.files
    assert (got.id, got.name, got.type, got.size) == (ref.id, NAME, "application/pdf", len(data))
    assert await bob.fetch_file(got) == data
    # The blob is named by its hash and stored owner-only; the log keeps the reference only.
    blob = config.data_dir / "blobs" / ref.id
    assert fc.blob_hash(blob.read_bytes()) == ref.id
    assert blob.stat().st_mode & 0o777 == 0o600 and blob.parent.stat().st_mode & 0o777 == 0o700
    hub.log.flush()
    (record,) = [json.loads(line) for line in (config.data_dir / "ciphertext.jsonl").read_text().splitlines()
                 if '"msg"' in line]
    assert record["id"] == msg_id
    assert record["attachments"] == [{"id": ref.id, "size": fc.blob_size(len(data))}]
    key_b64 = base64.b64encode(ref.key)
    assert files_containing(config.data_dir, MARKER, NAME.encode(), b"application/pdf", key_b64,
                            ref.key) == []


async def test_a_file_from_disk_is_read_in_pieces_and_an_empty_file_works(connect, tmp_path):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    path = tmp_path / "notes.txt"
    path.write_bytes(document(2 * fc.CHUNK_BYTES + 1))
    _, ref = await alice.send_file(path, "notes.txt", "text/plain")
    assert await bob.fetch_file((await bob.next_message()).files[0]) == path.read_bytes()
    _, empty = await alice.send_file(b"", "empty.txt", "text/plain")
    assert await bob.fetch_file((await bob.next_message()).files[0]) == b""
    assert empty.blob_size == fc.HEADER_BYTES + fc.TAG_BYTES


async def test_only_joined_sessions_may_upload_or_download(connect, base_url):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    _, ref = await alice.send_file(document(1000), "a.bin")
    token = alice.attachments["token"]
    for bad in (None, "", "nonsense", token + "x", token[:-1]):
        code, answer, response = await call(base_url, "GET", f"/api/blobs/{ref.id}", bad)
        assert code == 401 and answer["error"] == "no_capability", bad
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        code, answer, _ = await call(base_url, "POST", "/api/blobs", bad, {"Upload-Length": "100"})
        assert code == 401 and answer["error"] == "no_capability"
    # The admin token is not an attachment capability either.
    code, _, _ = await call(base_url, "GET", f"/api/blobs/{ref.id}", "test-admin-token-0123456789abcdef")
    assert code == 401
    # A session that left loses its capability at once.
    code, _, _ = await call(base_url, "GET", f"/api/blobs/{ref.id}", bob.attachments["token"])
    assert code == 200
    bob_token = bob.attachments["token"]
    await bob.send_frame({"v": 2, "type": "leave"})
    while await bob.ws.read_message() is not None:
        pass
    code, answer, _ = await call(base_url, "GET", f"/api/blobs/{ref.id}", bob_token)
    assert code == 401 and answer["error"] == "no_capability"


async def test_one_session_cannot_touch_anothers_upload(connect, base_url):
    alice, bob = await connect("alice"), await connect("bob")
    code, answer, _ = await call(base_url, "POST", "/api/blobs", alice.attachments["token"], {"Upload-Length": "64"})
    assert code == 201
    upload = answer["upload"]
    for method, headers, body in (("PATCH", {"Upload-Offset": "0"}, b"x" * 64), ("DELETE", {}, None)):
        code, answer, _ = await call(base_url, method, f"/api/blobs/uploads/{upload}", bob.attachments["token"],
                                     headers, body)
        assert code == 404 and answer["error"] == "not_found"


async def test_blob_ids_are_checked_strictly(connect, base_url):
    alice = await connect("alice")
    token = alice.attachments["token"]
    for path in ("/api/blobs/" + "A" * 64, "/api/blobs/" + "a" * 63, "/api/blobs/" + "a" * 65,
                 "/api/blobs/..%2f..%2fciphertext.jsonl", "/api/blobs/../ciphertext.jsonl",
                 "/api/blobs/%2e%2e", "/api/blobs/uploads/" + "0" * 31, "/api/blobs/" + "a" * 64 + ".json"):
        code, _, response = await call(base_url, "GET", path, token)
        assert code in (404, 405), path
        assert b"event" not in (response.body or b""), path
    code, answer, _ = await call(base_url, "GET", "/api/blobs/" + "0" * 64, token)
    assert code == 404 and answer["error"] == "not_found"


async def test_a_blob_is_only_readable_from_the_room_it_was_sent_in(connect, hub, blob_store):
    alice = await connect("alice")
    _, ref = await alice.send_file(document(500), "a.bin")
    assert blob_store.readable(ref.id, "lobby") is not None
    assert blob_store.readable(ref.id, "other-room") is None
    # What a capability grants is decided by the room of its session, nothing else.
    grant = hub.grant(alice.attachments["token"])
    assert grant.room == "lobby" and grant.participant.username == "alice"


async def test_over_size_uploads_are_refused_before_a_byte_is_sent(tmp_path, io_loop):
    config = Config(data_dir=tmp_path / "small", port=0, log_fsync="never", attachments_max_bytes=100_000)
    async with serving(config) as port:
        alice = ChatClient(f"ws://127.0.0.1:{port}/ws", "alice")
        await alice.connect()
        assert alice.attachments["max_bytes"] == 100_000
        with pytest.raises(AttachmentError) as info:
            await alice.upload_file(document(100_001), "big.bin")
        assert info.value.code == "too_large"  # the client checks the limit itself
        code, answer, _ = await call(f"http://127.0.0.1:{port}", "POST", "/api/blobs", alice.attachments["token"],
                                     {"Upload-Length": str(fc.blob_size(100_001))})
        assert code == 413 and answer["error"] == "too_large" and answer["max_bytes"] == fc.blob_size(100_000)
        assert "larger than this server accepts" in answer["message"]
        # Exactly the limit is fine.
        ref = await alice.upload_file(document(100_000), "fits.bin")
        assert ref.size == 100_000
        alice.close()


async def test_over_quota_uploads_get_a_clear_error_and_reservations_count(tmp_path, io_loop):
    quota = 3 * fc.blob_size(40_000)
    config = Config(data_dir=tmp_path / "quota", port=0, log_fsync="never", attachments_quota_bytes=quota)
    async with serving(config) as port:
        base = f"http://127.0.0.1:{port}"
        alice = ChatClient(f"ws://127.0.0.1:{port}/ws", "alice")
        await alice.connect()
        token = alice.attachments["token"]
        await alice.upload_file(document(40_000), "one.bin")
        # An unfinished upload holds its reservation: two more fit in the quota, not three.
        code, started, _ = await call(base, "POST", "/api/blobs", token, {"Upload-Length": str(fc.blob_size(40_000))})
        assert code == 201
        await alice.upload_file(document(40_000), "two.bin")
        with pytest.raises(AttachmentError) as info:
            await alice.upload_file(document(40_000), "three.bin")
        assert info.value.code == "quota_exceeded" and info.value.status == 507
        assert "storage for attachments is full" in str(info.value)
        code, _, _ = await call(base, "DELETE", f"/api/blobs/uploads/{started['upload']}", token)
        assert code == 204
        await alice.upload_file(document(40_000), "three.bin")  # the cancelled reservation is free again
        alice.close()


async def test_uploads_per_address_are_rate_limited(tmp_path, io_loop):
    config = Config(data_dir=tmp_path / "rate", port=0, log_fsync="never", attachments_uploads_per_minute=3)
    async with serving(config) as port:
        base = f"http://127.0.0.1:{port}"
        alice, bob = (ChatClient(f"ws://127.0.0.1:{port}/ws", name) for name in ("alice", "bob"))
        await alice.connect()
        await bob.connect()
        for _ in range(2):
            await alice.upload_file(b"x", "x.txt")
        await bob.upload_file(b"y", "y.txt")  # the same address, another session: one budget
        code, answer, response = await call(base, "POST", "/api/blobs", alice.attachments["token"],
                                            {"Upload-Length": "31"})
        assert code == 429 and answer["error"] == "rate_limited" and response.headers["Retry-After"] == "60"
        alice.close()
        bob.close()


async def test_parts_must_continue_where_the_upload_stands(connect, base_url):
    alice = await connect("alice")
    token = alice.attachments["token"]
    _, started, _ = await call(base_url, "POST", "/api/blobs", token, {"Upload-Length": "100"})
    path = f"/api/blobs/uploads/{started['upload']}"
    code, answer, _ = await call(base_url, "PATCH", path, token, {"Upload-Offset": "0"}, b"a" * 60)
    assert code == 200 and answer == {"offset": 60}
    code, answer, _ = await call(base_url, "PATCH", path, token, {"Upload-Offset": "0"}, b"a" * 40)
    assert code == 409 and answer["error"] == "bad_offset" and answer["offset"] == 60
    code, answer, _ = await call(base_url, "PATCH", path, token, {"Upload-Offset": "60"}, b"a" * 41)
    assert code == 413 and answer["error"] == "too_large"
    code, answer, _ = await call(base_url, "PATCH", path, token, {"Upload-Offset": "sixty"}, b"a")
    assert code == 400 and answer["error"] == "bad_request"
    for bad in ("-1", "1e3", " ", "0x10", "99999999999999999999"):
        code, answer, _ = await call(base_url, "POST", "/api/blobs", token, {"Upload-Length": bad})
        assert code == 400, bad
    code, answer, _ = await call(base_url, "PATCH", path, token, {"Upload-Offset": "60"}, b"a" * 40)
    assert code == 201 and answer["size"] == 100 and answer["id"] == fc.blob_hash(b"a" * 100)
    code, answer, _ = await call(base_url, "PATCH", path, token, {"Upload-Offset": "100"}, b"a")
    assert code == 404  # finished uploads are gone


def raw_request(port: int, head: str, body: bytes = b"", read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        if not read:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_a_part_without_length_or_past_limits_is_refused_unread(connect, http_port, io_loop):
    alice = await connect("alice")
    token = alice.attachments["token"]
    _, started, _ = await call(f"http://127.0.0.1:{http_port}", "POST", "/api/blobs", token,
                               {"Upload-Length": str(8 * 1024 * 1024)})
    path = f"/api/blobs/uploads/{started['upload']}"
    chunked = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nUpload-Offset: 0\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    answer = await io_loop.run_in_executor(None, raw_request, http_port, chunked, b"5\r\nhello\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b"length_required" in answer
    # A part larger than 4 MiB is refused from its headers: the server never reads the body.
    huge = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {5 * 1024 * 1024}\r\n\r\n")
    answer = await io_loop.run_in_executor(None, raw_request, http_port, huge, b"")
    assert answer.startswith(b"HTTP/1.1 413") and b"too_large" in answer
    # Without a capability not even a small body is read.
    stranger = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpload-Offset: 0\r\nContent-Length: 1000000\r\n\r\n")
    answer = await io_loop.run_in_executor(None, raw_request, http_port, stranger, b"")
    assert answer.startswith(b"HTTP/1.1 401")


async def test_a_part_that_breaks_off_is_undone_and_can_be_sent_again(connect, base_url, http_port, io_loop,
                                                                      blob_store):
    alice = await connect("alice")
    token = alice.attachments["token"]
    data = os.urandom(900_000)
    _, started, _ = await call(base_url, "POST", "/api/blobs", token, {"Upload-Length": str(len(data))})
    upload = started["upload"]
    head = (f"PATCH /api/blobs/uploads/{upload} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n")
    (pending,) = blob_store.pending()
    # Half the body arrives, then the connection drops.
    sock = socket.create_connection(("127.0.0.1", http_port))
    try:
        sock.sendall(head.encode() + data[:600_000])
        await wait_until(lambda: pending.received > 0)  # written, and hashed, already
    finally:
        sock.close()
    await wait_until(lambda: not pending.busy)
    assert pending.received == 0
    code, answer, _ = await call(base_url, "PATCH", f"/api/blobs/uploads/{upload}", token,
                                 {"Upload-Offset": "0"}, data)
    assert code == 201 and answer["id"] == fc.blob_hash(data)


async def wait_until(condition, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


async def test_leaving_cancels_a_sessions_unfinished_uploads(connect, base_url, blob_store):
    alice = await connect("alice")
    code, _, _ = await call(base_url, "POST", "/api/blobs", alice.attachments["token"], {"Upload-Length": "1000"})
    assert code == 201 and len(blob_store.pending()) == 1
    alice.close()
    await wait_until(lambda: not blob_store.pending())
    assert blob_store.reserved_bytes == 0
    assert list((blob_store.uploads_dir).iterdir()) == []


async def test_a_session_has_at_most_four_uploads_at_once(connect, base_url):
    alice = await connect("alice")
    for _ in range(4):
        code, _, _ = await call(base_url, "POST", "/api/blobs", alice.attachments["token"], {"Upload-Length": "10"})
        assert code == 201
    code, answer, _ = await call(base_url, "POST", "/api/blobs", alice.attachments["token"], {"Upload-Length": "10"})
    assert code == 429 and answer["error"] == "too_many_uploads"


async def test_a_message_may_only_name_blobs_of_its_room(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    ref = fc.FileRef("ab" * 32, fc.new_file_key(), "ghost.png", "image/png", 10)
    with pytest.raises(Exception) as info:
        await alice.deliver("", files=[ref])
    assert "bad_attachment" in str(info.value)
    bad = alice.seal("x")
    for attachments in ([], ["AB" * 32], ["ab" * 32, "ab" * 32], ["ab" * 32] * 17, "ab" * 32, [1]):
        await alice.send_frame({**bad, "attachments": attachments, "id": os.urandom(16).hex()})
        error = await alice.expect("error")
        assert error["code"] == "bad_frame", attachments


async def test_the_server_names_blobs_itself_and_the_sender_checks_it(connect, base_url):
    alice = await connect("alice")
    token = alice.attachments["token"]
    data = os.urandom(2 * fc.BLOCK_BYTES + 5)
    _, started, _ = await call(base_url, "POST", "/api/blobs", token, {"Upload-Length": str(len(data))})
    path = f"/api/blobs/uploads/{started['upload']}"
    offset = 0
    for size in (1000, fc.BLOCK_BYTES, 4 * 1024 * 1024):  # parts need not follow the hash blocks
        part = data[offset:offset + size]
        code, answer, _ = await call(base_url, "PATCH", path, token, {"Upload-Offset": str(offset)}, part)
        offset += len(part)
    assert code == 201 and answer["id"] == fc.blob_hash(data) and answer["size"] == len(data)
    code, _, response = await call(base_url, "GET", f"/api/blobs/{answer['id']}", token)
    assert code == 200 and response.body == data
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def tamper(blob_store, blob_id: str, data: bytes) -> None:
    """Play a malicious or broken server: serve other bytes under the same name."""
    blob_store.path(blob_id).write_bytes(data)
    info = blob_store.get(blob_id)
    blob_store._blobs[blob_id] = BlobInfo(blob_id, len(data), info.created, info.rooms)


async def test_tampered_truncated_and_reordered_blobs_are_rejected(connect, blob_store):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    data = document(5 * fc.CHUNK_BYTES + 100)
    _, ref = await alice.send_file(data, "doc.bin")
    message = await bob.next_message()
    blob = blob_store.path(ref.id).read_bytes()
    sealed = fc.CHUNK_BYTES + fc.TAG_BYTES
    head, chunks = blob[:fc.HEADER_BYTES], [blob[i:i + sealed] for i in range(fc.HEADER_BYTES, len(blob), sealed)]
    flipped = bytearray(blob)
    flipped[fc.HEADER_BYTES + sealed + 10] ^= 1
    cases = {
        "tampered": (bytes(flipped), "bad_chunk"),
        "truncated": (head + b"".join(chunks[:-1]), "truncated"),
        "reordered": (head + chunks[0] + chunks[2] + chunks[1] + b"".join(chunks[3:]), "bad_chunk"),
        "dropped": (head + chunks[0] + b"".join(chunks[2:]), "bad_chunk"),
        "duplicated": (head + chunks[0] + chunks[0] + b"".join(chunks[1:]), "bad_chunk"),
    }
    for why, (bad, code) in cases.items():
        tamper(blob_store, ref.id, bad)
        with pytest.raises(AttachmentError) as info:
            await bob.fetch_file(message.files[0])
        assert info.value.code == code, why
    # Another valid blob under this name (a server swapping files) fails the blob hash check.
    other = fc.encrypt(ref.key, data[:-1])
    tamper(blob_store, ref.id, other)
    with pytest.raises(AttachmentError) as info:
        await bob.fetch_file(message.files[0])
    assert info.value.code in ("bad_hash", "bad_size")
    tamper(blob_store, ref.id, blob)
    assert await bob.fetch_file(message.files[0]) == data


async def test_a_late_joiner_never_gets_the_key(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    _, ref = await alice.send_file(document(10_000), "before.bin")
    assert (await bob.next_message()).files[0].id == ref.id
    carol = await connect("carol")
    await settle(alice, bob, carol, members=3)
    await alice.deliver("after carol came")
    received = await carol.next_message()
    assert received.text == "after carol came" and received.files == []
    # The ciphertext is fetchable by any member of the room, but without the key it is noise.
    blob = await carol.fetch_blob(ref.id)
    assert MARKER not in blob
    with pytest.raises(fc.FileCryptoError):
        fc.decrypt(fc.new_file_key(), blob)


async def test_rotating_the_session_key_keeps_the_capability_and_its_uploads(connect):
    alice, bob = await connect("alice"), await connect("bob")
    await settle(alice, bob, members=2)
    token = alice.attachments["token"]
    code, started, _ = await call(alice.http_url, "POST", "/api/blobs", token, {"Upload-Length": "100"})
    assert code == 201
    await alice.rotate()  # §4: the same member under a fresh session key, not a new session
    code, answer, _ = await call(alice.http_url, "PATCH", f"/api/blobs/uploads/{started['upload']}", token,
                                 {"Upload-Offset": "0"}, bytes(50))
    assert (code, answer) == (200, {"offset": 50})
    _, ref = await alice.send_file(document(5000), "after the rotation.bin")
    received = await bob.next_message()
    while not received.files:
        received = await bob.next_message()
    assert await bob.fetch_file(received.files[0]) == document(5000) and ref.id == received.files[0].id
