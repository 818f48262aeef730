// static/js/crypto.js against tests/vectors/v1.json (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as c from "../../static/js/crypto.js";

const V = JSON.parse(readFileSync(new URL("../vectors/v1.json", import.meta.url), "utf8"));
const M = V.message;

const vectorParticipant = () => ({
  sid: V.session.sid,
  username: V.session.username,
  fingerprint: V.identity.fingerprint,
  identity_key: V.identity.spki,
  session_key: V.session.spki,
  session_sig: V.session.sig,
  joined: 1,
});

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
  const text = c.sessionText(V.session.room, V.session.username, V.session.spki);
  assert.equal(new TextDecoder().decode(text), V.session.text);
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  assert.equal(await c.verify(idKey, text, V.session.sig), true);
});

test("the vector participant verifies; the invalid session signatures do not", async () => {
  const keys = await c.verifyParticipant("lobby", vectorParticipant());
  assert.equal(keys.sessionKey.algorithm.modulusLength, 2048);
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  for (const bad of V.invalid.session_signatures) {
    const text = c.sessionText(bad.room ?? V.session.room, bad.username ?? V.session.username,
      V.session.spki);
    assert.equal(await c.verify(idKey, text, bad.sig), false, bad.why);
    await assert.rejects(
      c.verifyParticipant(bad.room ?? "lobby", { ...vectorParticipant(), username: bad.username ?? "alice" }),
      (e) => e.code === "bad_signature", bad.why);
  }
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
  const sig = await c.signSession(id.privateKey, "lobby", "zoë", "AAAA");
  assert.equal(c.b64decode(sig).length, 64);
  assert.equal(await c.verify(id.publicKey, c.sessionText("lobby", "zoë", "AAAA"), sig), true);
  assert.equal(await c.verify(id.publicKey, c.sessionText("lobby", "zoe", "AAAA"), sig), false);
  assert.equal(await c.verify(id.publicKey, data, "AAAA"), false); // not 64 bytes
  assert.equal(await c.verify(id.publicKey, data, "not base64!"), false);
  await assert.rejects(crypto.subtle.exportKey("pkcs8", id.privateKey)); // non-extractable
});

test("the header built from fields equals the vector header", () => {
  const header = c.messageHeader(M.room, M.sender_fingerprint, M.sender_sid, M.id, M.ts, M.counter,
    M.recipients);
  assert.equal(header, M.header);
  assert.equal(c.relayedHeader(M.frame_in), M.header);
  assert.equal(new TextDecoder().decode(c.signedText(header, M.iv, M.ct)), M.signed_text);
  assert.throws(() => c.messageHeader(M.room, "f", "s", "i", -1, 1, []));
  assert.throws(() => c.messageHeader(M.room, "f", "s", "i", 1.5, 1, []));
});

test("plaintext JSON and AES-GCM with the vector key/iv give the vector ct exactly", async () => {
  const plaintext = c.encodePlaintext(M.text);
  assert.equal(c.b64encode(plaintext), M.plaintext);
  const ct = await c.aesEncrypt(c.b64decode(M.aes_key), c.b64decode(M.iv), plaintext, c.utf8(M.header));
  assert.equal(c.b64encode(ct), M.ct);
  const back = await c.aesDecrypt(c.b64decode(M.aes_key), c.b64decode(M.iv), ct, c.utf8(M.header));
  assert.equal(c.decodePlaintext(back), M.text);
});

test("sealMessage with the vector inputs reproduces ct and a verifiable sig", async () => {
  const identityPrivateKey = await c.importPkcs8(V.identity.pkcs8, "identity");
  const recipients = [
    { sid: M.other_recipient.sid, sessionKey: await c.importSessionPublicKey(M.other_recipient.spki) },
    { sid: V.session.sid, sessionKey: await c.importSessionPublicKey(V.session.spki) },
  ];
  const frame = await c.sealMessage({
    identityPrivateKey, fingerprint: V.identity.fingerprint, senderSid: V.session.sid, room: M.room,
    text: M.text, recipients, counter: M.counter, ts: M.ts, id: M.id,
    messageKey: c.b64decode(M.aes_key), iv: c.b64decode(M.iv),
  });
  assert.equal(frame.ct, M.ct);
  assert.equal(frame.iv, M.iv);
  assert.deepEqual(Object.keys(frame.keys).sort(), M.recipients);
  assert.deepEqual(Object.keys(frame).sort(), Object.keys(M.frame_out).sort());
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  assert.equal(await c.verify(idKey, c.signedText(M.header, frame.iv, frame.ct), frame.sig), true);
  // Each wrapped key unwraps to the message key with the matching private key.
  const bob = await c.importPkcs8(M.other_recipient.pkcs8, "session");
  assert.equal(c.b64encode(await c.unwrapKey(bob, frame.keys[M.other_recipient.sid])), M.aes_key);
});

test("the vector sig verifies and frame_in.key unwraps with other_recipient's key", async () => {
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  assert.equal(await c.verify(idKey, c.utf8(M.signed_text), M.sig), true);
  const bob = await c.importPkcs8(M.other_recipient.pkcs8, "session");
  assert.equal(c.b64encode(await c.unwrapKey(bob, M.frame_in.key)), M.aes_key);
  const alice = await c.importPkcs8(V.session.pkcs8, "session");
  await assert.rejects(c.unwrapKey(alice, M.frame_in.key), (e) => e.code === "no_decrypt");
});

test("openMessage opens frame_in end to end", async () => {
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  const session = { sid: M.other_recipient.sid, privateKey: await c.importPkcs8(M.other_recipient.pkcs8, "session") };
  assert.equal(await c.openMessage(M.frame_in, idKey, session), M.text);
});

test("openMessage refuses tampered, misaddressed and unsorted frames", async () => {
  const idKey = await c.importIdentityPublicKey(V.identity.spki);
  const bob = { sid: M.other_recipient.sid, privateKey: await c.importPkcs8(M.other_recipient.pkcs8, "session") };
  for (const bad of V.invalid.message_signatures) {
    const frame = { ...M.frame_in, ...bad };
    delete frame.why;
    await assert.rejects(c.openMessage(frame, idKey, bob), (e) => e.code === "bad_signature", bad.why);
  }
  const other = { sid: "f".repeat(32), privateKey: bob.privateKey };
  await assert.rejects(c.openMessage(M.frame_in, idKey, other), (e) => e.code === "not_for_us");
  const unsorted = { ...M.frame_in, recipients: [...M.recipients].reverse() };
  await assert.rejects(c.openMessage(unsorted, idKey, bob), (e) => e.code === "bad_recipients");
  const dup = { ...M.frame_in, recipients: [M.recipients[0], M.recipients[0]] };
  await assert.rejects(c.openMessage(dup, idKey, bob), (e) => e.code === "bad_recipients");
  // A valid signature but a key wrapped for someone else: does not decrypt.
  const wrongKey = { ...M.frame_in, key: M.frame_out.keys[V.session.sid] };
  await assert.rejects(c.openMessage(wrongKey, idKey, bob), (e) => e.code === "no_decrypt");
  // Another identity's key: the signature fails.
  const mallory = await c.generateIdentity();
  await assert.rejects(c.openMessage(M.frame_in, mallory.publicKey, bob), (e) => e.code === "bad_signature");
});

test("username rules match PROTOCOL.md §5", () => {
  for (const bad of V.invalid.usernames) {
    assert.notEqual(c.usernameProblem(bad.username), null, bad.why);
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
  const wrapped = await c.wrapKey(pub, new Uint8Array(32).fill(7));
  assert.deepEqual(await c.unwrapKey(s.privateKey, wrapped), new Uint8Array(32).fill(7));
  await assert.rejects(c.importSessionPublicKey(V.identity.spki), (e) => e.code === "bad_key");
});
