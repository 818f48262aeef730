// static/js/crypto.js against tests/vectors/v2.json (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as c from "../../static/js/crypto.js";
import { scriptProblem } from "../../static/js/names.js";

const V = JSON.parse(readFileSync(new URL("../vectors/v2.json", import.meta.url), "utf8"));
const M = V.message;

const vectorParticipant = () => ({
  sid: V.session.sid,
  username: V.session.username,
  fingerprint: V.identity.fingerprint,
  identity_key: V.identity.spki,
  session_key: V.session.spki,
  issued: V.session.issued,
  challenge: V.session.challenge,
  stream: V.session.stream,
  session_sig: V.session.sig,
  joined: 1,
});
const S = V.session;
const sessionText = (o = {}) => c.sessionText(o.room ?? S.room, o.username ?? S.username, S.spki,
  o.issued ?? S.issued, o.challenge ?? S.challenge, S.stream);

test("fingerprint is SHA-256 of the identity SPKI, grouped 16×4", async () => {
  const fp = await c.fingerprintOf(c.b64decode(V.identity.spki));
  assert.equal(fp, V.identity.fingerprint);
  assert.equal(c.groupFingerprint(fp), V.identity.fingerprint_grouped);
  assert.match(c.groupFingerprint(fp), /^([0-9a-f]{4} ){15}[0-9a-f]{4}$/);
});

test("sid is the first 32 hex of SHA-256 of the session SPKI", async () => {
  assert.equal(await c.sessionIdOf(c.b64decode(V.session.spki)), V.session.sid);
  assert.equal(await c.sessionIdOf(c.b64decode(M.other_recipient.spki)), M.other_recipient.sid);
});

test("base64 is canonical and padded", () => {
  const bytes = new Uint8Array([0xff, 0x00, 0x10]);
  assert.equal(c.b64encode(bytes), "/wAQ");
  assert.deepEqual(c.b64decode("/wAQ"), bytes);
  assert.throws(() => c.b64decode("/wA"), c.CryptoError); // missing padding
  assert.throws(() => c.b64decode("AB=="), c.CryptoError); // non-zero padding bits
  assert.throws(() => c.b64decode("/w AQ"), c.CryptoError);
  assert.throws(() => c.b64decode("-_8="), c.CryptoError); // url-safe alphabet
  const big = Uint8Array.from({ length: 70000 }, (_, i) => (i * 7919) & 0xff);
  assert.deepEqual(c.b64decode(c.b64encode(big)), big);
});

test("session text equals the vector and the vector session signature verifies", async () => {
  const text = sessionText();
  assert.equal(new TextDecoder().decode(text), V.session.text);
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  assert.equal(await c.verify(idKey, text, V.session.sig), true);
});

test("the vector participant verifies; the invalid session signatures do not", async () => {
  const keys = await c.verifyParticipant("lobby", vectorParticipant());
  assert.equal(keys.sessionKey.algorithm.modulusLength, 2048);
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  for (const bad of V.invalid.session_signatures) {
    assert.equal(await c.verify(idKey, sessionText(bad), bad.sig), false, bad.why);
    const { room = "lobby", why, sig, ...fields } = bad;
    await assert.rejects(c.verifyParticipant(room, { ...vectorParticipant(), ...fields }),
      (e) => e.code === "bad_signature", why);
  }
});

test("session freshness is the client's own rule", () => {
  assert.equal(c.sessionAgeProblem(S.issued, S.issued), null);
  assert.match(c.sessionAgeProblem(S.issued - c.SESSION_MAX_AGE_MS - 1, S.issued), /older/);
  assert.match(c.sessionAgeProblem(S.issued + c.MAX_CLOCK_SKEW_MS + 1, S.issued), /future/);
});

test("a participant whose fingerprint or sid does not match its keys is refused", async () => {
  await assert.rejects(c.verifyParticipant("lobby", { ...vectorParticipant(), fingerprint: "0".repeat(64) }),
    (e) => e.code === "bad_fingerprint");
  await assert.rejects(c.verifyParticipant("lobby", { ...vectorParticipant(), sid: M.other_recipient.sid }),
    (e) => e.code === "bad_sid");
  // The session key offered as identity key: wrong algorithm.
  await assert.rejects(c.verifyParticipant("lobby", { ...vectorParticipant(), identity_key: V.session.spki }),
    (e) => e.code === "bad_key");
});

test("sign+verify roundtrip with a fresh non-extractable identity", async () => {
  const id = await c.generateIdentity();
  assert.equal(id.privateKey.extractable, false);
  assert.match(id.fingerprint, /^[0-9a-f]{64}$/);
  assert.equal(await c.fingerprintOf(c.b64decode(id.spki)), id.fingerprint);
  const data = c.utf8("hello");
  const st = (name) => c.sessionText("lobby", name, "AAAA", 5, "0".repeat(32), "1".repeat(32));
  const sig = await c.signSession(id.privateKey, "lobby", "zoë", "AAAA", 5, "0".repeat(32), "1".repeat(32));
  assert.equal(c.b64decode(sig).length, 64);
  assert.equal(await c.verify(id.publicKey, st("zoë"), sig), true);
  assert.equal(await c.verify(id.publicKey, st("zoe"), sig), false);
  assert.equal(await c.verify(id.publicKey, data, "AAAA"), false); // not 64 bytes
  assert.equal(await c.verify(id.publicKey, data, "not base64!"), false);
  await assert.rejects(crypto.subtle.exportKey("pkcs8", id.privateKey)); // non-extractable
});

const fromHex = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));

async function importSession(entry) {
  return c.importPkcs8(entry.pkcs8, "session");
}

test("leaves, root, paths, commitments and header equal the vectors", async () => {
  const leaves = await Promise.all(M.recipients.map((r) => c.leafHash(M.id, r.sid, r.seq)));
  assert.deepEqual(leaves.map(c.hex), M.leaves);
  assert.equal(c.hex(await c.merkleRoot(leaves)), M.root);
  for (const [i, path] of M.paths.entries()) assert.deepEqual((await c.merklePath(i, leaves)).map(c.hex), path);
  assert.equal(await c.recipientsCommitment(M.recipients.map((r) => r.sid).reverse()), M.to);
  assert.equal(await c.keyCommitment(c.b64decode(M.aes_key)), M.kc);
  const header = c.messageHeader(M.room, M.sender_fingerprint, M.sender_sid, M.id, M.ts, M.recipients.length,
    M.to, M.root, M.kc);
  assert.equal(header, M.header);
  assert.throws(() => c.messageHeader(M.room, M.sender_fingerprint, M.sender_sid, M.id, -1, 3, M.to, M.root, M.kc));
});

test("Merkle trees of every shape match Python; paths lead back to the root", async () => {
  for (const t of V.merkle) {
    const leaves = await Promise.all(Array.from({ length: t.n },
      (_, i) => c.leafHash(M.id, i.toString(16).padStart(32, "0"), i + 1)));
    assert.equal(c.hex(await c.merkleRoot(leaves)), t.root);
    for (const [i, path] of t.paths.entries()) {
      assert.equal(c.hex(await c.rootFromPath(i, t.n, leaves[i], path.map(fromHex))), t.root);
    }
  }
});

test("padding buckets match Python", () => {
  for (const p of V.padding) {
    const padded = c.pad(new Uint8Array(p.length));
    assert.equal(padded.length, p.padded);
    assert.equal(c.unpad(padded).length, p.length);
  }
  assert.throws(() => c.pad(new Uint8Array(65536)), c.CryptoError);
});

test("padded plaintext JSON and AES-GCM with the vector key/iv give the vector ct exactly", async () => {
  const plaintext = c.encodePlaintext(M.text);
  assert.equal(c.b64encode(plaintext), M.plaintext);
  const ct = await c.aesEncrypt(c.b64decode(M.aes_key), c.b64decode(M.iv), plaintext, c.utf8(M.header));
  assert.equal(c.b64encode(ct), M.ct);
  assert.equal(c.decodePlaintext(plaintext), M.text);
});

test("sealMessage with the vector inputs reproduces ct, to and a verifiable sig", async () => {
  const identityPrivateKey = await c.importPkcs8(V.identity.pkcs8, "identity");
  const pubs = { [M.sender_sid]: V.session.spki, [M.other_recipient.sid]: M.other_recipient.spki,
    [M.third_recipient.sid]: M.third_recipient.spki };
  const recipients = await Promise.all(M.recipients.map(async (r) => ({ sid: r.sid, seq: r.seq,
    sessionKey: await c.importSessionPublicKey(pubs[r.sid]) })));
  const frame = await c.sealMessage({ identityPrivateKey, fingerprint: M.sender_fingerprint, senderSid: M.sender_sid,
    room: M.room, text: M.text, recipients, ts: M.ts, id: M.id, messageKey: c.b64decode(M.aes_key),
    iv: c.b64decode(M.iv) });
  assert.equal(frame.ct, M.ct);
  assert.equal(frame.to, M.to);
  assert.deepEqual(Object.keys(frame).sort(), Object.keys(M.frame_out).sort());
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  assert.equal(await c.verify(idKey, c.utf8(M.signed_text), frame.sig), true);
  const bob = await importSession(M.other_recipient);
  const payload = await c.unwrapKey(bob, frame.keys[M.other_recipient.sid]);
  assert.equal(c.b64encode(c.keyPayload(payload.messageKey, payload.n, payload.index, payload.seq, payload.path)),
    M.bob_key_payload);
});

test("the Python-made wrapped key carries key, position, sequence number and path", async () => {
  const payload = await c.unwrapKey(await importSession(M.other_recipient), M.frame_in.key);
  assert.equal(c.b64encode(c.keyPayload(payload.messageKey, payload.n, payload.index, payload.seq, payload.path)),
    M.bob_key_payload);
  assert.equal(payload.seq, 3);
  assert.equal(payload.n, 3);
});

const sender = async () => ({ fingerprint: V.identity.fingerprint, identityKey: await c.importIdentityPublicKey(V.identity.spki) });

test("openMessage opens frame_in end to end, for bob and for carol with their own seq", async () => {
  const bob = { sid: M.other_recipient.sid, privateKey: await importSession(M.other_recipient) };
  const opened = await c.openMessage(M.frame_in, M.room, await sender(), bob);
  assert.deepEqual(opened, { text: M.text, seq: 3, n: 3, to: M.to, body: { text: M.text } });
  const carol = { sid: M.third_recipient.sid, privateKey: await importSession(M.third_recipient) };
  const forCarol = { ...M.frame_in, key: M.frame_out.keys[M.third_recipient.sid] };
  assert.equal((await c.openMessage(forCarol, M.room, await sender(), carol)).seq, 12);
});

test("openMessage refuses tampered frames, swapped keys and another message key", async () => {
  const bob = { sid: M.other_recipient.sid, privateKey: await importSession(M.other_recipient) };
  for (const bad of V.invalid.message_signatures) {
    const { why, ...fields } = bad;
    await assert.rejects(c.openMessage({ ...M.frame_in, ...fields }, M.room, await sender(), bob),
      (e) => e.code === "bad_signature", why);
  }
  await assert.rejects(c.openMessage({ ...M.frame_in, key: M.frame_out.keys[M.third_recipient.sid] }, M.room,
    await sender(), bob), (e) => e.code === "no_decrypt");
  await assert.rejects(c.openMessage(M.frame_in, "another-room", await sender(), bob), (e) => e.code === "bad_signature");
  // Attack 7: the same signature with a different message key for bob (key commitment).
  const payload = await c.unwrapKey(bob.privateKey, M.frame_in.key);
  const bobPublic = await c.importSessionPublicKey(M.other_recipient.spki);
  const forged = await c.wrapKey(bobPublic, c.keyPayload(new Uint8Array(32), payload.n, payload.index, payload.seq, payload.path));
  await assert.rejects(c.openMessage({ ...M.frame_in, key: forged }, M.room, await sender(), bob),
    (e) => e.code === "bad_signature");
  const mallory = await c.generateIdentity();
  await assert.rejects(c.openMessage(M.frame_in, M.room, { fingerprint: V.identity.fingerprint, identityKey: mallory.publicKey }, bob),
    (e) => e.code === "bad_signature");
});

test("username rules match PROTOCOL.md §5", () => {
  for (const bad of V.invalid.usernames) {
    assert.notEqual(c.usernameProblem(bad.username) ?? scriptProblem(bad.username), null, bad.why);
  }
  for (const good of V.invalid.valid_usernames) {
    assert.equal(c.usernameProblem(good), null, good);
  }
  assert.notEqual(c.usernameProblem("a\u{E000}"), null); // private use
  assert.notEqual(c.usernameProblem("a\uD800"), null); // lone surrogate
  assert.notEqual(c.usernameProblem("a\u2029b"), null); // paragraph separator
  assert.notEqual(c.usernameProblem("a\u{10FFFF}"), null); // unassigned (noncharacter)
  assert.equal(c.usernameProblem("😀".repeat(32)), null); // 32 code points, 64 UTF-16 units
  assert.notEqual(c.usernameProblem("😀".repeat(33)), null);
  assert.equal(c.normalizeUsername("  Cafe\u0301 "), "Caf\u00e9");
  assert.equal(c.usernameProblem(c.normalizeUsername("  Cafe\u0301 ")), null);
});

test("session keys are fresh RSA-OAEP-2048 with a non-extractable private half", async () => {
  const s = await c.generateSession();
  assert.equal(s.privateKey.extractable, false);
  assert.match(s.sid, /^[0-9a-f]{32}$/);
  const pub = await c.importSessionPublicKey(s.spki);
  const wrapped = await c.wrapKey(pub, c.keyPayload(new Uint8Array(32).fill(7), 1, 0, 1, []));
  assert.deepEqual((await c.unwrapKey(s.privateKey, wrapped)).messageKey, new Uint8Array(32).fill(7));
  await assert.rejects(c.importSessionPublicKey(V.identity.spki), (e) => e.code === "bad_key");
});
