"""The attachment format (docs/PROTOCOL.md §10) against tests/vectors/files.json, and its edges."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from securechat import crypto
from securechat import filecrypto as fc

V = json.loads((Path(__file__).parent / "vectors" / "files.json").read_text())
KEY = bytes.fromhex(V["key"])
PREFIX = bytes.fromhex(V["prefix"])
CHUNK = V["chunk_bytes"]


def synthetic(length: int) -> bytes:
    return bytes((31 * i + 7) % 251 for i in range(length))


def pushed_in_pieces(key: bytes, blob: bytes, rng: random.Random) -> bytes:
    decryptor = fc.Decryptor(key)
    out, at = [], 0
    while at < len(blob):
        step = rng.randint(1, 3 * CHUNK)
        out.append(decryptor.push(blob[at:at + step]))
        at += step
    out.append(decryptor.finish())
    return b"".join(out)


def test_header_layout():
    assert fc.header(CHUNK, PREFIX).hex() == V["header"]
    assert fc.parse_header(bytes.fromhex(V["header"])) == (CHUNK, PREFIX)
    assert fc.HEADER_BYTES == 15


@pytest.mark.parametrize("case", V["cases"], ids=lambda c: c["name"])
def test_vector_encrypts_byte_for_byte_and_decrypts(case):
    plaintext = bytes.fromhex(case["plaintext"])
    blob = fc.encrypt(KEY, plaintext, CHUNK, PREFIX)
    assert blob.hex() == case["blob"]
    assert len(blob) == case["blob_size"] == fc.blob_size(len(plaintext), CHUNK)
    assert fc.chunk_count(len(plaintext), CHUNK) == case["chunks"]
    assert [fc.nonce(PREFIX, i, i == case["chunks"] - 1).hex() for i in range(case["chunks"])] == case["nonces"]
    assert fc.blob_hash(blob) == case["blob_hash"]
    assert fc.decrypt(KEY, blob) == plaintext
    assert pushed_in_pieces(KEY, blob, random.Random(case["name"])) == plaintext


@pytest.mark.parametrize("bad", V["invalid"], ids=lambda b: b["why"])
def test_vector_tampering_is_detected_with_its_code(bad):
    blob = bytes.fromhex(bad["blob"])
    with pytest.raises(fc.FileCryptoError) as info:
        fc.decrypt(KEY, blob)
    assert info.value.code == bad["code"]
    # Fed in small pieces, nothing unauthentic is ever released before the failure.
    decryptor, released = fc.Decryptor(KEY), b""
    with pytest.raises(fc.FileCryptoError):
        for i in range(0, len(blob), 7):
            released += decryptor.push(blob[i:i + 7])
        released += decryptor.finish()
    four = bytes.fromhex(V["cases"][3]["plaintext"])
    assert four.startswith(released) or bytes.fromhex(V["cases"][2]["plaintext"]).startswith(released)


def test_the_wrong_key_opens_nothing():
    blob = bytes.fromhex(V["cases"][3]["blob"])
    with pytest.raises(fc.FileCryptoError) as info:
        fc.decrypt(bytes(32), blob)
    assert info.value.code == "bad_chunk"


@pytest.mark.parametrize("entry", V["hashes"], ids=lambda h: str(h["length"]))
def test_blob_hash_vectors(entry):
    data = synthetic(entry["length"])
    assert fc.blob_hash(data) == entry["blob_hash"]
    # Fed in uneven pieces across block boundaries, the hash is the same.
    hasher, rng, at = fc.BlobHasher(), random.Random(1), 0
    while at < len(data):
        step = rng.randint(1, 400_000)
        hasher.update(data[at:at + step])
        at += step
    assert hasher.hexdigest() == entry["blob_hash"] and hasher.size == len(data)


def test_sizes_and_the_largest_file():
    for entry in V["sizes"]:
        assert fc.blob_size(entry["plaintext"], entry["chunk_bytes"]) == entry["blob"]
    limit = V["largest_file"]
    assert fc.largest_file(limit["max_blob_bytes"]) == limit["plaintext"]
    rng = random.Random(7)
    for _ in range(500):
        limit = rng.randint(fc.HEADER_BYTES + fc.TAG_BYTES, 3 * fc.CHUNK_BYTES)
        best = fc.largest_file(limit)
        assert fc.blob_size(best) <= limit < fc.blob_size(best + 1)


def test_random_round_trips_with_the_real_chunk_size():
    rng = random.Random(3)
    for size in (0, 1, fc.CHUNK_BYTES - 1, fc.CHUNK_BYTES, fc.CHUNK_BYTES + 1, 3 * fc.CHUNK_BYTES + 17):
        key, data = os.urandom(32), os.urandom(size)
        pieces = [data[i:i + 1000] for i in range(0, len(data), 1000)] or [b""]
        blob = b"".join(fc.encrypt_stream(key, pieces))
        assert len(blob) == fc.blob_size(size)
        assert pushed_in_pieces(key, blob, rng) == data


def test_fresh_prefix_per_file():
    a, b = fc.Encryptor(KEY), fc.Encryptor(KEY)
    assert a.prefix != b.prefix and len(a.prefix) == 7


def test_encryptor_refuses_misuse():
    encryptor = fc.Encryptor(KEY, CHUNK, PREFIX)
    with pytest.raises(ValueError):
        encryptor.seal(b"short", last=False)
    encryptor.seal(b"end", last=True)
    with pytest.raises(ValueError):
        encryptor.seal(b"more", last=True)
    with pytest.raises(ValueError):
        fc.Encryptor(bytes(16))
    with pytest.raises(ValueError):
        fc.header(8, PREFIX)


def test_file_references():
    refs = V["references"]
    ref = fc.parse_file_ref(refs["valid"])
    assert (ref.name, ref.type, ref.size, ref.width, ref.height) == ("holiday photo.png", "image/png", 123456, 640, 480)
    assert ref.to_json() == refs["valid"]
    plain = fc.parse_file_ref(refs["valid_file"])
    assert plain.width is None and plain.to_json() == refs["valid_file"]
    for bad in refs["invalid"]:
        with pytest.raises(fc.FileCryptoError) as info:
            fc.parse_file_ref(bad["ref"])
        assert info.value.code == "bad_reference", bad["why"]
    assert fc.parse_files({"text": "hi"}) == []
    with pytest.raises(fc.FileCryptoError):
        fc.parse_files({"text": "", "files": [refs["valid"]] * 17})


def test_a_message_carries_its_files_inside_the_padded_plaintext():
    m = V["message_plaintext"]
    padded = crypto.encode_plaintext(m["text"], {"files": m["files"]})
    assert crypto.b64encode(padded) == m["padded"] and len(padded) in crypto.PAD_BUCKETS
    body = crypto.decode_body(crypto.b64decode(m["padded"]))
    assert body["text"] == m["text"]
    assert [ref.to_json() for ref in fc.parse_files(body)] == m["files"]
