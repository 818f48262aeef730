// static/js/filecrypto.js against tests/vectors/files.json (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as c from "../../static/js/crypto.js";
import * as f from "../../static/js/filecrypto.js";

const V = JSON.parse(readFileSync(new URL("../vectors/files.json", import.meta.url), "utf8"));
const fromHex = (h) => Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const KEY = fromHex(V.key);
const PREFIX = fromHex(V.prefix);
const CHUNK = V.chunk_bytes;

function synthetic(length) {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += 1) out[i] = (31 * i + 7) % 251;
  return out;
}

function rng(seed) {
  let state = seed >>> 0;
  return (n) => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return 1 + (state % n);
  };
}

async function collect(generator) {
  const parts = [];
  for await (const part of generator) parts.push(part);
  return f.concat(parts);
}

async function pushedInPieces(key, blob, next) {
  const decryptor = await f.Decryptor.create(key);
  const parts = [];
  for (let at = 0; at < blob.length;) {
    const step = next(3 * CHUNK);
    parts.push(...(await decryptor.push(blob.subarray(at, at + step))));
    at += step;
  }
  parts.push(await decryptor.finish());
  return f.concat(parts);
}

test("header layout", () => {
  assert.equal(toHex(f.header(CHUNK, PREFIX)), V.header);
  const parsed = f.parseHeader(fromHex(V.header));
  assert.equal(parsed.chunkBytes, CHUNK);
  assert.deepEqual(parsed.prefix, PREFIX);
  assert.equal(f.HEADER_BYTES, 15);
});

for (const c of V.cases) {
  test(`vector ${c.name}: encrypts byte for byte, hashes and decrypts`, async () => {
    const plaintext = fromHex(c.plaintext);
    const blob = await collect(f.encryptBlob(new Blob([plaintext]), KEY, { chunkBytes: CHUNK, prefix: PREFIX, readBytes: 3 * CHUNK }));
    assert.equal(toHex(blob), c.blob);
    assert.equal(blob.length, c.blob_size);
    assert.equal(f.blobSize(plaintext.length, CHUNK), c.blob_size);
    assert.equal(f.chunkCount(plaintext.length, CHUNK), c.chunks);
    assert.deepEqual(c.nonces, Array.from({ length: c.chunks }, (_, i) => toHex(f.nonce(PREFIX, i, i === c.chunks - 1))));
    assert.equal(await f.blobHash(blob), c.blob_hash);
    assert.deepEqual(await f.decrypt(KEY, blob), plaintext);
    assert.deepEqual(await pushedInPieces(KEY, blob, rng(c.blob_size)), plaintext);
  });
}

for (const bad of V.invalid) {
  test(`tampering detected: ${bad.why}`, async () => {
    await assert.rejects(f.decrypt(KEY, fromHex(bad.blob)), (err) => err instanceof f.FileCryptoError && err.code === bad.code);
  });
}

test("the wrong key opens nothing", async () => {
  await assert.rejects(f.decrypt(new Uint8Array(32), fromHex(V.cases[3].blob)), (err) => err.code === "bad_chunk");
});

for (const h of V.hashes) {
  test(`blob hash of ${h.length} synthetic bytes, in uneven pieces`, async () => {
    const data = synthetic(h.length);
    assert.equal(await f.blobHash(data), h.blob_hash);
    const hasher = new f.BlobHasher();
    const next = rng(h.length + 1);
    for (let at = 0; at < data.length;) {
      const step = next(400000);
      await hasher.update(data.subarray(at, at + step));
      at += step;
    }
    assert.equal(await hasher.hexdigest(), h.blob_hash);
    assert.equal(hasher.size, h.length);
  });
}

test("sizes and the largest file agree with Python", () => {
  for (const s of V.sizes) assert.equal(f.blobSize(s.plaintext, s.chunk_bytes), s.blob);
  assert.equal(f.largestFile(V.largest_file.max_blob_bytes), V.largest_file.plaintext);
  const next = rng(9);
  for (let i = 0; i < 300; i += 1) {
    const limit = f.HEADER_BYTES + f.TAG_BYTES + next(3 * f.CHUNK_BYTES);
    const best = f.largestFile(limit);
    assert.ok(f.blobSize(best) <= limit && limit < f.blobSize(best + 1), String(limit));
  }
});

test("round trips with the real chunk size and a fresh prefix each time", async () => {
  for (const size of [0, 1, f.CHUNK_BYTES - 1, f.CHUNK_BYTES, f.CHUNK_BYTES + 1, 3 * f.CHUNK_BYTES + 17]) {
    const key = f.newFileKey();
    const data = synthetic(size).map((b, i) => b ^ (i >> 8)); // getRandomValues stops at 64 KiB
    const blob = await collect(f.encryptBlob(new Blob([data]), key));
    assert.equal(blob.length, f.blobSize(size));
    assert.deepEqual(await f.decrypt(key, blob), data);
  }
  const a = await collect(f.encryptBlob(new Blob([new Uint8Array(5)]), KEY));
  const b = await collect(f.encryptBlob(new Blob([new Uint8Array(5)]), KEY));
  assert.notDeepEqual(a.subarray(8, 15), b.subarray(8, 15));
});

test("file references: the valid ones parse, every invalid one is refused", () => {
  const refs = V.references;
  const ref = f.parseFileRef(refs.valid);
  assert.deepEqual([ref.name, ref.type, ref.size, ref.width, ref.height], ["holiday photo.png", "image/png", 123456, 640, 480]);
  assert.deepEqual(f.fileRefJson(ref), refs.valid);
  const plain = f.parseFileRef(refs.valid_file);
  assert.equal(plain.width, undefined);
  assert.deepEqual(f.fileRefJson(plain), refs.valid_file);
  for (const bad of refs.invalid) {
    assert.throws(() => f.parseFileRef(bad.ref), (err) => err.code === "bad_reference", bad.why);
  }
  assert.deepEqual(f.parseFiles({ text: "hi" }), []);
  assert.throws(() => f.parseFiles({ text: "", files: Array(17).fill(refs.valid) }));
});

test("a message carries its files inside the padded plaintext, byte for byte as Python", () => {
  const m = V.message_plaintext;
  const padded = c.encodePlaintext(m.text, { files: m.files.map((r) => f.fileRefJson(f.parseFileRef(r))) });
  assert.equal(c.b64encode(padded), m.padded);
  const body = c.decodeBody(c.b64decode(m.padded));
  assert.equal(body.text, m.text);
  assert.deepEqual(f.parseFiles(body).map(f.fileRefJson), m.files);
});
