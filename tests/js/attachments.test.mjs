// static/js/attachments.js against an in-memory blob server that follows PROTOCOL.md §10.5,
// and the file messages chat.js sends and receives (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";

import * as a from "../../static/js/attachments.js";
import * as f from "../../static/js/filecrypto.js";
import { FakeServer, until } from "./fake_server.mjs";
import { person } from "./people.mjs";

/** The blob endpoints in memory: names blobs by their hash, checks offsets and the token. */
class FakeBlobs {
  constructor({ token = "t", maxBlob = 10 ** 8, quota = 10 ** 9 } = {}) {
    Object.assign(this, { token, maxBlob, quota, blobs: new Map(), uploads: new Map(), requests: [], next: 1 });
    this.mutate = (bytes) => bytes; // what a malicious server might do on the way out
    this.fetch = (url, init = {}) => this.handle(url, init);
  }

  answer(status, body) {
    return new Response(body === undefined ? null : JSON.stringify(body), { status });
  }

  async handle(url, { method = "GET", headers = {}, body, signal } = {}) {
    this.requests.push({ url, method, size: body?.size ?? body?.length ?? 0 });
    if (signal?.aborted) throw new DOMException("aborted", "AbortError");
    if (headers.Authorization !== `Bearer ${this.token}`) return this.answer(401, { error: "no_capability" });
    if (method === "POST" && url === "/api/blobs") {
      const size = Number(headers["Upload-Length"]);
      if (size > this.maxBlob) return this.answer(413, { error: "too_large", message: "big" });
      const used = [...this.blobs.values()].reduce((n, b) => n + b.length, 0);
      if (used + size > this.quota) return this.answer(507, { error: "quota_exceeded", message: "full" });
      const id = String(this.next++).padStart(32, "0");
      this.uploads.set(id, { size, parts: [], received: 0 });
      return this.answer(201, { upload: id, offset: 0 });
    }
    const part = url.match(/^\/api\/blobs\/uploads\/([0-9a-f]{32})$/);
    if (part) {
      const upload = this.uploads.get(part[1]);
      if (!upload) return this.answer(404, { error: "not_found" });
      if (method === "DELETE") {
        this.uploads.delete(part[1]);
        return this.answer(204);
      }
      if (Number(headers["Upload-Offset"]) !== upload.received) return this.answer(409, { error: "bad_offset" });
      const bytes = new Uint8Array(await body.arrayBuffer());
      upload.parts.push(bytes);
      upload.received += bytes.length;
      if (upload.received < upload.size) return this.answer(200, { offset: upload.received });
      const blob = f.concat(upload.parts);
      const id = await f.blobHash(blob);
      this.blobs.set(id, blob);
      this.uploads.delete(part[1]);
      return this.answer(201, { id, size: blob.length });
    }
    const get = url.match(/^\/api\/blobs\/([0-9a-f]{64})$/);
    if (get && this.blobs.has(get[1])) {
      const bytes = this.mutate(this.blobs.get(get[1]));
      // Delivered in uneven pieces, as a network would.
      const stream = new ReadableStream({
        start(controller) {
          for (let at = 0; at < bytes.length; at += 50_000) controller.enqueue(bytes.slice(at, at + 50_000));
          controller.close();
        },
      });
      return new Response(stream, { status: 200 });
    }
    return this.answer(404, { error: "not_found" });
  }
}

const token = () => "t";
const sample = (n) => Uint8Array.from({ length: n }, (_, i) => (i * 131 + 7) & 0xff);

test("a file goes up in 1 MiB parts, named by its hash, and comes back intact", async () => {
  const server = new FakeBlobs();
  const data = sample(2 * a.PART_BYTES + 12345);
  const progress = [];
  const ref = await a.uploadFile(new File([data], "notes.txt", { type: "text/plain" }),
    { token, fetch: server.fetch, onProgress: (done, total) => progress.push([done, total]) });
  assert.equal(ref.name, "notes.txt");
  assert.equal(ref.type, "text/plain");
  assert.equal(ref.size, data.length);
  assert.equal(ref.key.length, 32);
  assert.ok(server.blobs.has(ref.id));
  const parts = server.requests.filter((r) => r.method === "PATCH").map((r) => r.size);
  assert.deepEqual(parts, [a.PART_BYTES, a.PART_BYTES, f.blobSize(data.length) - 2 * a.PART_BYTES]);
  assert.deepEqual(progress.at(-1), [f.blobSize(data.length), f.blobSize(data.length)]);
  const got = [];
  const blob = await a.downloadFile(ref, { token, fetch: server.fetch, onProgress: (done) => got.push(done) });
  assert.deepEqual(new Uint8Array(await blob.arrayBuffer()), data);
  assert.equal(blob.type, "application/octet-stream"); // never rendered as what the sender claims
  assert.equal(got.at(-1), f.blobSize(data.length));
});

test("an image keeps its type and dimensions; others are octet-stream", async () => {
  const server = new FakeBlobs();
  const ref = await a.uploadFile(new File([sample(100)], "p.png", { type: "image/png" }),
    { token, fetch: server.fetch, dimensions: { width: 3, height: 4 } });
  assert.deepEqual([ref.type, ref.width, ref.height], ["image/png", 3, 4]);
  assert.equal((await a.downloadFile(ref, { token, fetch: server.fetch })).type, "image/png");
  const svg = await a.uploadFile(new File(["<svg/>"], "x.svg", { type: "image/svg+xml" }), { token, fetch: server.fetch });
  assert.equal(a.isInlineImage(svg), false);
  assert.equal((await a.downloadFile(svg, { token, fetch: server.fetch })).type, "application/octet-stream");
});

test("a server that alters, cuts, reorders or swaps the blob gets a warning, never a file", async () => {
  const server = new FakeBlobs();
  const data = sample(5 * f.CHUNK_BYTES + 9);
  const ref = await a.uploadFile(new File([data], "d.bin"), { token, fetch: server.fetch });
  const sealed = f.CHUNK_BYTES + f.TAG_BYTES;
  const split = (b) => [b.subarray(0, f.HEADER_BYTES),
    ...Array.from({ length: Math.ceil((b.length - f.HEADER_BYTES) / sealed) },
      (_, i) => b.subarray(f.HEADER_BYTES + i * sealed, f.HEADER_BYTES + (i + 1) * sealed))];
  const cases = {
    bad_chunk: (b) => { const c = b.slice(); c[100] ^= 1; return c; },
    truncated: (b) => f.concat(split(b).slice(0, -1)),
    swapped: (b) => { const [h, c0, c1, ...rest] = split(b); return f.concat([h, c1, c0, ...rest]); },
  };
  for (const [why, mutate] of Object.entries(cases)) {
    server.mutate = mutate;
    await assert.rejects(a.downloadFile(ref, { token, fetch: server.fetch }), (err) => {
      assert.ok(a.isVerificationFailure(err), why);
      assert.match(err.message, /failed verification and was not opened/);
      return true;
    });
  }
  // Another valid blob under the same key but not the one named: the hash says no.
  const other = await (async () => { const parts = []; for await (const p of f.encryptBlob(new Blob([data]), ref.key)) parts.push(p); return f.concat(parts); })();
  server.mutate = () => other;
  await assert.rejects(a.downloadFile(ref, { token, fetch: server.fetch }), (err) => err.code === "bad_hash");
});

test("cancel stops an upload and frees the server's reservation", async () => {
  const server = new FakeBlobs();
  const controller = new AbortController();
  const upload = a.uploadFile(new File([sample(3 * a.PART_BYTES)], "big.bin"), {
    token, fetch: server.fetch, signal: controller.signal,
    onProgress: (done) => { if (done >= a.PART_BYTES) controller.abort(); },
  });
  await assert.rejects(upload, (err) => err.code === "cancelled");
  await until(() => server.uploads.size === 0, 2000, "the DELETE");
  assert.equal(server.blobs.size, 0);
});

test("limits and quota: a clear message, and nothing uploaded over the limit", async () => {
  const file = new File([sample(2000)], "big file.zip");
  assert.equal(a.limitProblem(file, 1999), "“big file.zip” is 2.0 KiB; files can be at most 2.0 KiB here.");
  assert.equal(a.limitProblem(file, 2000), null);
  assert.match(a.limitProblem(file, null), /does not take files/);
  const server = new FakeBlobs({ quota: 100 });
  await assert.rejects(a.uploadFile(file, { token, fetch: server.fetch }),
    (err) => err.code === "quota_exceeded" && /storage for attachments is full/.test(err.message));
  const refused = new FakeBlobs({ token: "other" });
  await assert.rejects(a.uploadFile(file, { token, fetch: refused.fetch }), (err) => err.code === "no_capability");
});

test("names: kept, cut to 255 code points with their extension, made safe to save", () => {
  assert.equal(a.fileName({ name: "report.pdf" }), "report.pdf");
  const long = `${"é".repeat(300)}.tar.gz`;
  const cut = a.fileName({ name: long });
  assert.equal([...cut].length, 255);
  assert.ok(cut.endsWith(".gz"));
  assert.equal(a.fileName({ name: "" }), "file");
  assert.equal(a.safeFileName("../../etc/passwd"), "__.._etc_passwd");
  assert.equal(a.safeFileName("a\u0000b:c?.txt"), "a_b_c_.txt");
  assert.equal(a.fileType({ type: "Image/PNG" }), "image/png");
  assert.equal(a.fileType({ type: "" }), "application/octet-stream");
  assert.equal(a.fileType({ type: "text/plain;charset=utf-8" }), "text/plain");
  assert.equal(a.describeSize(512), "512 B");
  assert.equal(a.describeSize(25 * 1024 * 1024), "25.0 MiB");
});

test("a message carries its files inside the ciphertext and names their blobs in the clear", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  for (const [p, name] of [[alice, "alice"], [bob, "bob"]]) {
    await p.client.join(name);
    await until(() => p.of("status").at(-1)?.state === "connected");
  }
  await until(() => alice.of("roster").at(-1)?.participants.length === 2);
  assert.deepEqual(alice.of("welcome")[0].attachments, { token: `token-${alice.client.session.sid}`, maxBytes: 26214400 });
  const ref = { id: "ab".repeat(32), key: f.newFileKey(), name: "p.png", type: "image/png", size: 10, width: 2, height: 3 };
  assert.equal(alice.client.send("", { files: [ref], localId: "file-1" }), null);
  await until(() => bob.of("message").length === 1);
  const [message] = bob.of("message");
  assert.equal(message.text, "");
  assert.deepEqual(message.files, [f.fileRefJson(ref)]); // keys as in the plaintext (b64), as history keeps them
  const frame = server.received.find((x) => x.type === "msg");
  assert.deepEqual(frame.attachments, [ref.id]);
  assert.ok(!JSON.stringify(frame).includes("p.png"), "the name travels only inside the ciphertext");
  await until(() => alice.of("outgoing").at(-1)?.state === "delivered");
  assert.ok(alice.of("outgoing").every((o) => o.localId === "file-1" && o.files.length === 1));
});

test("a malformed file reference is a warning, never content", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  for (const [p, name] of [[alice, "alice"], [bob, "bob"]]) {
    await p.client.join(name);
    await until(() => p.of("status").at(-1)?.state === "connected");
  }
  await until(() => alice.of("roster").at(-1)?.participants.length === 2);
  const bad = { id: "not-a-hash", key: f.newFileKey(), name: "x", type: "text/plain", size: 1 };
  alice.client.send("look", { files: [bad] });
  await until(() => bob.of("warning").length === 1);
  assert.match(bob.of("warning")[0].text, /its attachment is malformed/);
  assert.deepEqual(bob.of("message"), []);
});
