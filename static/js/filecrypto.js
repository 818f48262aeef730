// Encrypted attachments (docs/PROTOCOL.md §10) on WebCrypto: the chunked STREAM blob format,
// the blob hash, and the file reference carried in a message's plaintext.
// Pure: no DOM, no network, so Node 20 imports it unchanged and checks tests/vectors/files.json.

import { b64decode, b64encode, CryptoError, hex, randomBytes } from "./crypto.js";

const subtle = globalThis.crypto?.subtle;

export const MAGIC = new Uint8Array([0x53, 0x43, 0x46, 0x31]); // "SCF1"
export const PREFIX_BYTES = 7;
export const HEADER_BYTES = MAGIC.length + 4 + PREFIX_BYTES;
export const TAG_BYTES = 16;
export const KEY_BYTES = 32;
export const CHUNK_BYTES = 64 * 1024;
export const MIN_CHUNK_BYTES = 16;
export const MAX_CHUNK_BYTES = 1024 * 1024;
export const MAX_CHUNKS = 2 ** 32;
export const BLOCK_BYTES = 1024 * 1024;
export const MAX_NAME_CHARS = 255;
export const MAX_TYPE_CHARS = 127;
export const MAX_DIMENSION = 65535;
export const MAX_FILES_PER_MESSAGE = 16;
const BLOB_ID = /^[0-9a-f]{64}$/;
const MIME_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]*\/[a-z0-9][a-z0-9!#$&^_.+-]*$/;

/**
 * A blob that does not decrypt as §10 says. code: bad_header (not ours, bad chunk size),
 * truncated (chunks missing at the end), bad_chunk (altered, reordered, duplicated, dropped or
 * added chunks), bad_reference (a malformed file reference), bad_hash (not the blob named).
 */
export class FileCryptoError extends CryptoError {
  constructor(code, reason) {
    super(reason, code);
    this.name = "FileCryptoError";
  }
}

// -- sizes ----------------------------------------------------------------------------------

export function chunkCount(plaintextSize, chunkBytes = CHUNK_BYTES) {
  return Math.max(1, Math.ceil(plaintextSize / chunkBytes));
}

export function blobSize(plaintextSize, chunkBytes = CHUNK_BYTES) {
  return HEADER_BYTES + plaintextSize + TAG_BYTES * chunkCount(plaintextSize, chunkBytes);
}

/** The largest plaintext whose blob fits in maxBlobBytes (the inverse of blobSize). */
export function largestFile(maxBlobBytes, chunkBytes = CHUNK_BYTES) {
  const room = maxBlobBytes - HEADER_BYTES;
  if (room < TAG_BYTES) return -1;
  const full = Math.floor(room / (chunkBytes + TAG_BYTES));
  const rest = room - full * (chunkBytes + TAG_BYTES);
  return full * chunkBytes + Math.max(0, rest - TAG_BYTES);
}

// -- the format -------------------------------------------------------------------------------

export function header(chunkBytes, prefix) {
  if (!(chunkBytes >= MIN_CHUNK_BYTES && chunkBytes <= MAX_CHUNK_BYTES)) {
    throw new RangeError(`chunk size must be ${MIN_CHUNK_BYTES}..${MAX_CHUNK_BYTES} bytes`);
  }
  if (prefix.length !== PREFIX_BYTES) throw new RangeError("the nonce prefix must be 7 bytes");
  const out = new Uint8Array(HEADER_BYTES);
  out.set(MAGIC, 0);
  new DataView(out.buffer).setUint32(4, chunkBytes, false);
  out.set(prefix, 8);
  return out;
}

export function parseHeader(bytes) {
  if (bytes.length < HEADER_BYTES || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new FileCryptoError("bad_header", "not a securechat encrypted file");
  }
  const chunkBytes = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES).getUint32(4, false);
  if (chunkBytes < MIN_CHUNK_BYTES || chunkBytes > MAX_CHUNK_BYTES) {
    throw new FileCryptoError("bad_header", `unsupported chunk size ${chunkBytes}`);
  }
  return { chunkBytes, prefix: bytes.slice(8, HEADER_BYTES) };
}

/** prefix (7 bytes) ‖ index (u32, big-endian) ‖ 0x01 for the last chunk, else 0x00. */
export function nonce(prefix, index, last) {
  if (!(Number.isSafeInteger(index) && index >= 0 && index < MAX_CHUNKS)) {
    throw new FileCryptoError("bad_chunk", "the file has more chunks than the format allows");
  }
  const out = new Uint8Array(12);
  out.set(prefix, 0);
  new DataView(out.buffer).setUint32(7, index, false);
  out[11] = last ? 1 : 0;
  return out;
}

export function newFileKey() {
  return randomBytes(KEY_BYTES);
}

async function importKey(rawKey, usage) {
  if (!(rawKey instanceof Uint8Array) || rawKey.length !== KEY_BYTES) {
    throw new FileCryptoError("bad_header", "a file key is 32 bytes");
  }
  return subtle.importKey("raw", rawKey, "AES-GCM", false, [usage]);
}

/** Seals one file chunk by chunk: `header` first, then every sealed chunk in order. */
export class Encryptor {
  static async create(rawKey, { chunkBytes = CHUNK_BYTES, prefix = randomBytes(PREFIX_BYTES) } = {}) {
    const encryptor = new Encryptor();
    encryptor.key = await importKey(rawKey, "encrypt");
    encryptor.chunkBytes = chunkBytes;
    encryptor.prefix = prefix;
    encryptor.header = header(chunkBytes, prefix);
    encryptor.index = 0;
    encryptor.done = false;
    return encryptor;
  }

  async seal(chunk, last) {
    if (this.done) throw new Error("the last chunk was already sealed");
    if (chunk.length > this.chunkBytes || (!last && chunk.length !== this.chunkBytes)) {
      throw new RangeError("every chunk but the last is exactly chunkBytes long");
    }
    const iv = nonce(this.prefix, this.index, last);
    const sealed = new Uint8Array(await subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: this.header, tagLength: 128 }, this.key, chunk));
    this.index += 1;
    this.done = last;
    return sealed;
  }
}

/**
 * The blob of a File/Blob, yielded header first and then one sealed chunk at a time. Only
 * `readBytes` of the file are read at once, so a large file is never held whole.
 */
export async function* encryptBlob(file, rawKey, { chunkBytes = CHUNK_BYTES, prefix,
  readBytes = 16 * chunkBytes } = {}) {
  const encryptor = await Encryptor.create(rawKey, { chunkBytes, prefix });
  yield encryptor.header;
  const size = file.size;
  const chunks = chunkCount(size, chunkBytes);
  const perRead = Math.max(1, Math.floor(readBytes / chunkBytes));
  for (let first = 0; first < chunks; first += perRead) {
    const start = first * chunkBytes;
    const data = new Uint8Array(await file.slice(start, Math.min(size, start + perRead * chunkBytes)).arrayBuffer());
    for (let i = first; i < Math.min(chunks, first + perRead); i += 1) {
      const offset = (i - first) * chunkBytes;
      yield await encryptor.seal(data.subarray(offset, offset + chunkBytes), i === chunks - 1);
    }
  }
}

/** Bytes pushed in pieces, taken out in exact sizes without re-copying what stays. */
class ByteQueue {
  constructor() {
    this.pieces = [];
    this.length = 0;
  }

  push(bytes) {
    if (bytes.length) this.pieces.push(bytes);
    this.length += bytes.length;
  }

  take(n) {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const piece = this.pieces[0];
      const use = Math.min(piece.length, n - filled);
      out.set(piece.subarray(0, use), filled);
      filled += use;
      if (use === piece.length) this.pieces.shift();
      else this.pieces[0] = piece.subarray(use);
    }
    this.length -= n;
    return out;
  }

  /** Do the bytes so far agree with the start of `prefix`? */
  startsLike(prefix) {
    let i = 0;
    for (const piece of this.pieces) {
      for (const byte of piece) {
        if (i >= prefix.length) return true;
        if (byte !== prefix[i]) return false;
        i += 1;
      }
    }
    return true;
  }
}

/**
 * Opens a blob pushed in pieces of any size; a chunk is released once it is authentic. The
 * last-chunk flag is what makes truncation detectable, so a chunk is only decrypted once bytes
 * after it show it is not the last; the final one waits for finish().
 */
export class Decryptor {
  static async create(rawKey) {
    const decryptor = new Decryptor();
    decryptor.key = await importKey(rawKey, "decrypt");
    decryptor.queue = new ByteQueue();
    decryptor.header = null;
    decryptor.chunkBytes = 0;
    decryptor.prefix = null;
    decryptor.index = 0;
    return decryptor;
  }

  /** Plaintext of every chunk now known not to be the last: an array of Uint8Arrays. */
  async push(bytes) {
    this.queue.push(bytes);
    if (this.header === null) {
      if (this.queue.length < HEADER_BYTES) {
        if (!this.queue.startsLike(MAGIC)) throw new FileCryptoError("bad_header", "not a securechat encrypted file");
        return [];
      }
      this.header = this.queue.take(HEADER_BYTES);
      ({ chunkBytes: this.chunkBytes, prefix: this.prefix } = parseHeader(this.header));
    }
    const sealed = this.chunkBytes + TAG_BYTES;
    const out = [];
    while (this.queue.length > sealed) out.push(await this.open(this.queue.take(sealed), false));
    return out;
  }

  /** The final chunk's plaintext; throws unless the blob ended exactly after it. */
  async finish() {
    if (this.header === null) {
      throw new FileCryptoError(this.queue.length ? "bad_header" : "truncated", "the file ends inside its header");
    }
    const final = this.queue.take(this.queue.length);
    if (final.length < TAG_BYTES) throw new FileCryptoError("truncated", "the file ends inside a chunk");
    try {
      return await this.open(final, true);
    } catch (err) {
      // Only to say why: a complete non-final chunk here means chunks were cut off.
      if (final.length === this.chunkBytes + TAG_BYTES && (await this.opens(final, false))) {
        throw new FileCryptoError("truncated", `the file was cut off after chunk ${this.index + 1}`);
      }
      throw err;
    }
  }

  async opens(sealed, last) {
    try {
      await subtle.decrypt({ name: "AES-GCM", iv: nonce(this.prefix, this.index, last),
        additionalData: this.header, tagLength: 128 }, this.key, sealed);
      return true;
    } catch {
      return false;
    }
  }

  async open(sealed, last) {
    let plain;
    try {
      plain = await subtle.decrypt({ name: "AES-GCM", iv: nonce(this.prefix, this.index, last),
        additionalData: this.header, tagLength: 128 }, this.key, sealed);
    } catch {
      throw new FileCryptoError("bad_chunk",
        `chunk ${this.index + 1} is not authentic (altered, reordered, duplicated, dropped or added)`);
    }
    this.index += 1;
    return new Uint8Array(plain);
  }
}

export async function decrypt(rawKey, blob) {
  const decryptor = await Decryptor.create(rawKey);
  const parts = await decryptor.push(blob);
  parts.push(await decryptor.finish());
  return concat(parts);
}

export function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

// -- the blob hash ---------------------------------------------------------------------------

/**
 * hex(SHA-256(SHA-256(block_0) ‖ SHA-256(block_1) ‖ …)) over 1 MiB blocks of the blob: WebCrypto
 * only digests whole buffers, so each block is hashed as it completes and at most one block is
 * held.
 */
export class BlobHasher {
  constructor(blockBytes = BLOCK_BYTES) {
    this.blockBytes = blockBytes;
    this.block = new Uint8Array(blockBytes);
    this.filled = 0;
    this.digests = [];
    this.size = 0;
  }

  async update(bytes) {
    this.size += bytes.length;
    let offset = 0;
    while (offset < bytes.length) {
      const take = Math.min(bytes.length - offset, this.blockBytes - this.filled);
      this.block.set(bytes.subarray(offset, offset + take), this.filled);
      this.filled += take;
      offset += take;
      if (this.filled === this.blockBytes) {
        this.digests.push(new Uint8Array(await subtle.digest("SHA-256", this.block)));
        this.filled = 0;
      }
    }
  }

  async hexdigest() {
    const digests = [...this.digests];
    if (this.filled) digests.push(new Uint8Array(await subtle.digest("SHA-256", this.block.subarray(0, this.filled))));
    return hex(await subtle.digest("SHA-256", concat(digests)));
  }
}

export async function blobHash(bytes) {
  const hasher = new BlobHasher();
  await hasher.update(bytes);
  return hasher.hexdigest();
}

// -- the file reference in a message's plaintext (§10.4) -------------------------------------

/** A file reference as the plaintext carries it (key as b64); takes the key as bytes or b64. */
export function fileRefJson({ id, key, name, type, size, width, height }) {
  const ref = { id, key: typeof key === "string" ? key : b64encode(key), name, type, size };
  if (Number.isSafeInteger(width) && Number.isSafeInteger(height)) Object.assign(ref, { width, height });
  return ref;
}

/** Check one entry of a plaintext's "files" list; throws FileCryptoError("bad_reference"). */
export function parseFileRef(value) {
  const bad = (why) => new FileCryptoError("bad_reference", `the file reference ${why}`);
  if (!value || typeof value !== "object" || Array.isArray(value)) throw bad("is not an object");
  if (typeof value.id !== "string" || !BLOB_ID.test(value.id)) throw bad("has no valid id");
  let key = null;
  try {
    key = b64decode(value.key);
  } catch {
    key = null;
  }
  if (!key || key.length !== KEY_BYTES) throw bad("has no valid key");
  const { name, type, size, width, height } = value;
  // Counted in code points, as Python's len() does.
  if (typeof name !== "string" || !name.length || [...name].length > MAX_NAME_CHARS) throw bad("has no valid name");
  if (typeof type !== "string" || type.length > MAX_TYPE_CHARS || !MIME_TYPE.test(type)) throw bad("has no valid type");
  if (!Number.isSafeInteger(size) || size < 0) throw bad("has no valid size");
  if ((width === undefined) !== (height === undefined)) throw bad("gives only one image dimension");
  for (const d of [width, height]) {
    if (d !== undefined && !(Number.isSafeInteger(d) && d >= 1 && d <= MAX_DIMENSION)) {
      throw bad("has an invalid image dimension");
    }
  }
  const ref = { id: value.id, key, name, type, size };
  if (width !== undefined) Object.assign(ref, { width, height });
  return ref;
}

export function parseFiles(body) {
  const files = body?.files ?? [];
  if (!Array.isArray(files) || files.length > MAX_FILES_PER_MESSAGE) {
    throw new FileCryptoError("bad_reference", "the message's file list is malformed");
  }
  return files.map(parseFileRef);
}
