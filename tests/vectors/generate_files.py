"""Write tests/vectors/files.json: vectors for encrypted attachments (docs/PROTOCOL.md §10).

Run `python tests/vectors/generate_files.py`. Everything is deterministic (fixed key, nonce
prefix and a small chunk size so every case has several chunks), so a regenerated file only
changes when the format does. Python (tests/test_filecrypto.py) and JavaScript
(tests/js/filecrypto.test.mjs) both check every value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from securechat import filecrypto as fc  # noqa: E402
from securechat.crypto import b64encode, encode_plaintext  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "files.json"
KEY = bytes(range(0x40, 0x60))
PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
CHUNK = 32
PLAINTEXTS = {
    "empty": b"",
    "one_short_chunk": b"PLAINTEXT-MARKER: hi",
    "two_full_chunks": bytes(range(64)),
    "four_chunks": ("PLAINTEXT-MARKER Grüße, 世界 " * 4).encode()[:100],
}


def synthetic(length: int) -> bytes:
    """byte i = (31 i + 7) mod 251: a rule both languages can regenerate for the hash vectors."""
    return bytes((31 * i + 7) % 251 for i in range(length))


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    sealed = CHUNK + fc.TAG_BYTES
    body = blob[fc.HEADER_BYTES:]
    return blob[: fc.HEADER_BYTES], [body[i:i + sealed] for i in range(0, len(body), sealed)]


def case(name: str, plaintext: bytes) -> dict:
    blob = fc.encrypt(KEY, plaintext, CHUNK, PREFIX)
    count = fc.chunk_count(len(plaintext), CHUNK)
    return {
        "name": name,
        "plaintext": plaintext.hex(),
        "blob": blob.hex(),
        "blob_size": len(blob),
        "chunks": count,
        "nonces": [fc.nonce(PREFIX, i, i == count - 1).hex() for i in range(count)],
        "blob_hash": fc.blob_hash(blob),
    }


def invalid(blob: bytes, two_chunks: bytes) -> list[dict]:
    head, (c0, c1, c2, c3) = split(blob)
    flipped = bytearray(c2)
    flipped[5] ^= 0x01
    bigger = head[:4] + (CHUNK + 1).to_bytes(4, "big") + head[8:]
    prefix = head[:8] + bytes(7)
    magic = b"SCF2" + head[4:]
    tiny = head[:4] + (8).to_bytes(4, "big") + head[8:]
    exact_head, (e0, _e1) = split(two_chunks)
    cases = [
        ("the last chunk is cut off", head + c0 + c1 + c2, "truncated"),
        ("the last full chunk of an exact multiple is cut off", exact_head + e0, "truncated"),
        ("only the header is left", head, "truncated"),
        ("nothing at all", b"", "truncated"),
        ("a chunk in the middle is dropped", head + c0 + c2 + c3, "bad_chunk"),
        ("a chunk is duplicated", head + c0 + c1 + c1 + c2 + c3, "bad_chunk"),
        ("two chunks are swapped", head + c0 + c2 + c1 + c3, "bad_chunk"),
        ("a copy of the last chunk is appended", head + c0 + c1 + c2 + c3 + c3, "bad_chunk"),
        ("one bit of a chunk is flipped", head + c0 + c1 + bytes(flipped) + c3, "bad_chunk"),
        ("the file ends two bytes early", head + c0 + c1 + c2 + c3[:-2], "bad_chunk"),
        ("the header's chunk size is changed", bigger + c0 + c1 + c2 + c3, "bad_chunk"),
        ("the header's nonce prefix is changed", prefix + c0 + c1 + c2 + c3, "bad_chunk"),
        ("the magic is wrong", magic + c0 + c1 + c2 + c3, "bad_header"),
        ("the chunk size is below the minimum", tiny + c0 + c1 + c2 + c3, "bad_header"),
    ]
    return [{"why": why, "blob": data.hex(), "code": code} for why, data, code in cases]


def references() -> dict:
    ref = fc.FileRef("ab" * 32, KEY, "holiday photo.png", "image/png", 123456, 640, 480)
    good = ref.to_json()
    bad = [
        ("no id", {k: v for k, v in good.items() if k != "id"}),
        ("id in upper case", {**good, "id": "AB" * 32}),
        ("id too short", {**good, "id": "ab" * 31}),
        ("key of 16 bytes", {**good, "key": b64encode(bytes(16))}),
        ("key not canonical base64", {**good, "key": good["key"].rstrip("=")}),
        ("empty name", {**good, "name": ""}),
        ("name of 256 characters", {**good, "name": "x" * 256}),
        ("type not a MIME type", {**good, "type": "png"}),
        ("type in upper case", {**good, "type": "Image/PNG"}),
        ("negative size", {**good, "size": -1}),
        ("size as a string", {**good, "size": "12"}),
        ("size true", {**good, "size": True}),
        ("width without height", {k: v for k, v in good.items() if k != "height"}),
        ("width 0", {**good, "width": 0}),
        ("height 65536", {**good, "height": 65536}),
        ("not an object", ["ab" * 32]),
    ]
    return {
        "valid": good,
        "valid_file": {**{k: v for k, v in good.items() if k not in ("width", "height")},
                       "name": "report 世界.pdf", "type": "application/pdf"},
        "invalid": [{"why": why, "ref": value} for why, value in bad],
    }


def message_plaintext(refs: dict) -> dict:
    """A message's padded plaintext (§7.1) carrying two file references (§10.4), byte for byte."""
    text = "two files: Grüße"
    files = [refs["valid"], refs["valid_file"]]
    return {"text": text, "files": files, "padded": b64encode(encode_plaintext(text, {"files": files}))}


def main() -> None:
    cases = [case(name, data) for name, data in PLAINTEXTS.items()]
    four = bytes.fromhex(cases[3]["blob"])
    two = bytes.fromhex(cases[2]["blob"])
    hashes = [{"rule": "byte i = (31 i + 7) mod 251", "length": n, "blob_hash": fc.blob_hash(synthetic(n))}
              for n in (0, 1, fc.BLOCK_BYTES, fc.BLOCK_BYTES + 1, 2 * fc.BLOCK_BYTES + fc.BLOCK_BYTES // 2 + 3)]
    sizes = [{"plaintext": n, "chunk_bytes": fc.CHUNK_BYTES, "blob": fc.blob_size(n)}
             for n in (0, 1, 65535, 65536, 65537, 25 * 1024 * 1024)]
    vectors = {
        "comment": "securechat encrypted attachments (docs/PROTOCOL.md §10); generated by generate_files.py",
        "key": KEY.hex(),
        "prefix": PREFIX.hex(),
        "chunk_bytes": CHUNK,
        "header": fc.header(CHUNK, PREFIX).hex(),
        "cases": cases,
        "invalid": invalid(four, two),
        "hashes": hashes,
        "sizes": sizes,
        "largest_file": {"max_blob_bytes": fc.blob_size(25 * 1024 * 1024),
                         "plaintext": fc.largest_file(fc.blob_size(25 * 1024 * 1024))},
        "references": references(),
    }
    vectors["message_plaintext"] = message_plaintext(vectors["references"])
    OUT.write_text(json.dumps(vectors, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
