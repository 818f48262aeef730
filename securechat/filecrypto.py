"""Encrypted attachments (docs/PROTOCOL.md §10): the chunked blob format and the blob hash.

Free of any I/O, like crypto.py. A file is encrypted under a fresh AES-256-GCM key with the
STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015, "Online Authenticated-Encryption
and its Nonce-Reuse Misuse-Resistance"), nonce = prefix ‖ chunk counter ‖ last-chunk flag, so a
reader can decrypt chunk by chunk and still notice chunks that were reordered, dropped,
duplicated, appended or cut off. The server never sees the key; it stores the result as an
opaque blob named by its blob hash, which sender, server and recipients all compute.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .crypto import CryptoError, b64decode, b64encode

MAGIC = b"SCF1"
PREFIX_BYTES = 7
HEADER_BYTES = len(MAGIC) + 4 + PREFIX_BYTES  # magic ‖ u32 chunk size ‖ nonce prefix
TAG_BYTES = 16
KEY_BYTES = 32
CHUNK_BYTES = 64 * 1024  # what clients write; readers accept MIN..MAX
MIN_CHUNK_BYTES = 16
MAX_CHUNK_BYTES = 1024 * 1024  # bounds what a reader buffers for one chunk
MAX_CHUNKS = 2**32  # the counter is 32 bits
BLOCK_BYTES = 1024 * 1024  # the blob hash hashes the blob in blocks of this size
BLOB_ID = re.compile(r"[0-9a-f]{64}\Z")

# The plaintext file reference (§10.4).
MAX_NAME_CHARS = 255
MAX_TYPE_CHARS = 127
MAX_DIMENSION = 65535
MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*\Z")
MAX_FILES_PER_MESSAGE = 16


class FileCryptoError(CryptoError):
    """A blob that does not decrypt as §10 says; `code` tells the failures apart.

    bad_header: not a securechat file or an unsupported chunk size; truncated: chunks are
    missing at the end; bad_chunk: a chunk was altered, reordered, duplicated, dropped or added.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# -- sizes -----------------------------------------------------------------------------------


def chunk_count(plaintext_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """An empty file is one empty final chunk; otherwise full chunks and a shorter last one."""
    return max(1, math.ceil(plaintext_size / chunk_bytes))


def blob_size(plaintext_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """The exact blob size for a file of plaintext_size bytes."""
    return HEADER_BYTES + plaintext_size + TAG_BYTES * chunk_count(plaintext_size, chunk_bytes)


def largest_file(max_blob_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """The largest plaintext whose blob fits in max_blob_bytes (the inverse of blob_size)."""
    room = max_blob_bytes - HEADER_BYTES
    if room < TAG_BYTES:
        return -1
    full, rest = divmod(room, chunk_bytes + TAG_BYTES)
    return full * chunk_bytes + max(0, rest - TAG_BYTES)


# -- the format --------------------------------------------------------------------------------


def header(chunk_bytes: int, prefix: bytes) -> bytes:
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk size must be {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES} bytes")
    if len(prefix) != PREFIX_BYTES:
        raise ValueError(f"the nonce prefix must be {PREFIX_BYTES} bytes")
    return MAGIC + chunk_bytes.to_bytes(4, "big") + prefix


def parse_header(data: bytes) -> tuple[int, bytes]:
    """(chunk size, nonce prefix) of a blob header, or FileCryptoError("bad_header")."""
    if len(data) < HEADER_BYTES or data[: len(MAGIC)] != MAGIC:
        raise FileCryptoError("bad_header", "not a securechat encrypted file")
    chunk_bytes = int.from_bytes(data[4:8], "big")
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise FileCryptoError("bad_header", f"unsupported chunk size {chunk_bytes}")
    return chunk_bytes, bytes(data[8:HEADER_BYTES])


def nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """prefix (7 bytes) ‖ index (u32, big-endian) ‖ 0x01 for the last chunk, else 0x00."""
    if not 0 <= index < MAX_CHUNKS:
        raise FileCryptoError("bad_chunk", "the file has more chunks than the format allows")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def new_file_key() -> bytes:
    """A fresh AES-256 key: one per file, never reused."""
    return os.urandom(KEY_BYTES)


class Encryptor:
    """Seals one file chunk by chunk; the header goes first, then every sealed chunk in order."""

    def __init__(self, key: bytes, chunk_bytes: int = CHUNK_BYTES, prefix: bytes | None = None):
        if len(key) != KEY_BYTES:
            raise ValueError("a file key is 32 bytes")
        self.chunk_bytes = chunk_bytes
        self.prefix = os.urandom(PREFIX_BYTES) if prefix is None else prefix
        self.header = header(chunk_bytes, self.prefix)
        self._aead = AESGCM(key)
        self._index = 0
        self._done = False

    def seal(self, chunk: bytes, last: bool) -> bytes:
        if self._done:
            raise ValueError("the last chunk was already sealed")
        if len(chunk) > self.chunk_bytes or (not last and len(chunk) != self.chunk_bytes):
            raise ValueError("every chunk but the last is exactly chunk_bytes long")
        sealed = self._aead.encrypt(nonce(self.prefix, self._index, last), bytes(chunk), self.header)
        self._index += 1
        self._done = last
        return sealed


def encrypt_stream(key: bytes, pieces: Iterable[bytes], chunk_bytes: int = CHUNK_BYTES,
                   prefix: bytes | None = None) -> Iterator[bytes]:
    """The blob for the concatenation of `pieces` (any sizes), yielded header first, then chunks."""
    encryptor = Encryptor(key, chunk_bytes, prefix)
    yield encryptor.header
    pending = bytearray()
    for piece in pieces:
        pending += piece
        # Keep at least one byte back: only the end of the input tells which chunk is last.
        while len(pending) > chunk_bytes:
            yield encryptor.seal(bytes(pending[:chunk_bytes]), last=False)
            del pending[:chunk_bytes]
    yield encryptor.seal(bytes(pending), last=True)


def encrypt(key: bytes, data: bytes, chunk_bytes: int = CHUNK_BYTES, prefix: bytes | None = None) -> bytes:
    return b"".join(encrypt_stream(key, [data], chunk_bytes, prefix))


class Decryptor:
    """Opens a blob pushed in pieces of any size; a chunk is released once it is authentic.

    The last-chunk flag is what makes truncation detectable, so a chunk is only decrypted once
    bytes after it show it is not the last; the final one waits for finish().
    """

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise FileCryptoError("bad_header", "a file key is 32 bytes")
        self._aead = AESGCM(key)
        self._buffer = bytearray()
        self._header: bytes | None = None
        self.chunk_bytes = 0
        self._prefix = b""
        self._index = 0
        self._finished = False

    def push(self, data: bytes) -> bytes:
        """Plaintext of every chunk now known not to be the last (may be b"")."""
        if self._finished:
            raise ValueError("finish() was already called")
        self._buffer += data
        if self._header is None:
            if len(self._buffer) < HEADER_BYTES:
                if self._buffer[: len(MAGIC)] != MAGIC[: len(self._buffer)]:
                    raise FileCryptoError("bad_header", "not a securechat encrypted file")
                return b""
            self._header = bytes(self._buffer[:HEADER_BYTES])
            self.chunk_bytes, self._prefix = parse_header(self._header)
            del self._buffer[:HEADER_BYTES]
        sealed = self.chunk_bytes + TAG_BYTES
        out = []
        while len(self._buffer) > sealed:
            out.append(self._open(bytes(self._buffer[:sealed]), last=False))
            del self._buffer[:sealed]
        return b"".join(out)

    def finish(self) -> bytes:
        """The final chunk's plaintext; raises unless the blob ended exactly after it."""
        self._finished = True
        if self._header is None:
            raise FileCryptoError("bad_header" if self._buffer else "truncated",
                                  "the file ends inside its header")
        final = bytes(self._buffer)
        self._buffer.clear()
        if len(final) < TAG_BYTES:
            raise FileCryptoError("truncated", "the file ends inside a chunk")
        try:
            return self._open(final, last=True)
        except FileCryptoError:
            # Only to say why: a complete non-final chunk here means chunks were cut off.
            if len(final) == self.chunk_bytes + TAG_BYTES and self._opens(final, last=False):
                raise FileCryptoError("truncated", "the file was cut off after chunk "
                                      f"{self._index + 1}") from None
            raise

    def _opens(self, sealed: bytes, last: bool) -> bool:
        try:
            self._aead.decrypt(nonce(self._prefix, self._index, last), sealed, self._header)
        except InvalidTag:
            return False
        return True

    def _open(self, sealed: bytes, last: bool) -> bytes:
        try:
            plain = self._aead.decrypt(nonce(self._prefix, self._index, last), sealed, self._header)
        except InvalidTag:
            raise FileCryptoError(
                "bad_chunk", f"chunk {self._index + 1} is not authentic (altered, reordered, "
                "duplicated, dropped or added)") from None
        self._index += 1
        return plain


def decrypt(key: bytes, blob: bytes) -> bytes:
    decryptor = Decryptor(key)
    return decryptor.push(blob) + decryptor.finish()


# -- the blob hash ---------------------------------------------------------------------------


class BlobHasher:
    """hex(SHA-256(SHA-256(block_0) ‖ SHA-256(block_1) ‖ …)) over 1 MiB blocks of the blob.

    A hash of block hashes (as Dropbox's content hash) because WebCrypto can only digest a
    whole buffer: the browser hashes each block as it goes and never holds the whole blob.
    """

    def __init__(self, block_bytes: int = BLOCK_BYTES):
        self.block_bytes = block_bytes
        self._outer = hashlib.sha256()
        self._block = hashlib.sha256()
        self._filled = 0
        self.size = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        self.size += len(view)
        while view:
            take = min(len(view), self.block_bytes - self._filled)
            self._block.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block_bytes:
                self._outer.update(self._block.digest())
                self._block, self._filled = hashlib.sha256(), 0

    def copy(self) -> "BlobHasher":
        twin = BlobHasher(self.block_bytes)
        twin._outer, twin._block = self._outer.copy(), self._block.copy()
        twin._filled, twin.size = self._filled, self.size
        return twin

    def hexdigest(self) -> str:
        outer = self._outer.copy()
        if self._filled:
            outer.update(self._block.digest())
        return outer.hexdigest()


def blob_hash(data: bytes) -> str:
    hasher = BlobHasher()
    hasher.update(data)
    return hasher.hexdigest()


# -- the file reference in a message's plaintext (§10.4) ------------------------------------


@dataclass(frozen=True)
class FileRef:
    id: str  # the blob hash: the blob's name on the server, checked after download
    key: bytes
    name: str
    type: str
    size: int  # plaintext bytes
    width: int | None = None
    height: int | None = None

    def to_json(self) -> dict:
        body = {"id": self.id, "key": b64encode(self.key), "name": self.name, "type": self.type,
                "size": self.size}
        if self.width is not None and self.height is not None:
            body.update(width=self.width, height=self.height)
        return body

    @property
    def blob_size(self) -> int:
        return blob_size(self.size)


def parse_file_ref(value) -> FileRef:
    """Check one entry of a plaintext's "files" list; FileCryptoError("bad_reference") otherwise."""

    def bad(why: str):
        return FileCryptoError("bad_reference", f"the file reference {why}")

    if not isinstance(value, dict):
        raise bad("is not an object")
    blob_id, key_b64 = value.get("id"), value.get("key")
    if not isinstance(blob_id, str) or not BLOB_ID.match(blob_id):
        raise bad("has no valid id")
    try:
        key = b64decode(key_b64) if isinstance(key_b64, str) else b""
    except CryptoError:
        key = b""
    if len(key) != KEY_BYTES:
        raise bad("has no valid key")
    name, kind, size = value.get("name"), value.get("type"), value.get("size")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        raise bad("has no valid name")
    if not isinstance(kind, str) or len(kind) > MAX_TYPE_CHARS or not MIME_TYPE.match(kind):
        raise bad("has no valid type")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 2**53 - 1:
        raise bad("has no valid size")
    width, height = value.get("width"), value.get("height")
    if (width is None) != (height is None):
        raise bad("gives only one image dimension")
    for dimension in (width, height):
        if dimension is not None and (isinstance(dimension, bool) or not isinstance(dimension, int)
                                      or not 1 <= dimension <= MAX_DIMENSION):
            raise bad("has an invalid image dimension")
    return FileRef(blob_id, key, name, kind, size, width, height)


def parse_files(body: dict) -> list[FileRef]:
    files = body.get("files", [])
    if not isinstance(files, list) or len(files) > MAX_FILES_PER_MESSAGE:
        raise FileCryptoError("bad_reference", "the message's file list is malformed")
    return [parse_file_ref(entry) for entry in files]

