// The cryptographic framing of protocol v2 (docs/PROTOCOL.md §2–§7) on WebCrypto.
// Pure functions: no DOM, no storage, no network, so Node 20 (globalThis.crypto.subtle) can
// import this file unchanged and check it against tests/vectors/v2.json.

const subtle = globalThis.crypto?.subtle;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export const PROTOCOL_VERSION = 2;
export const SESSION_LABEL = "securechat/v2 session";
export const MESSAGE_LABEL = "securechat/v2 msg";
export const LEAF_LABEL = "securechat/v2 leaf";
export const MAX_RECIPIENTS = 256;
export const PAD_BUCKETS = Array.from({ length: 9 }, (_, i) => 256 << i); // 256 B .. 64 KiB
// Client security limits (§6.3): our own constants; a server's welcome may only tighten them.
export const MAX_CLOCK_SKEW_MS = 300000;
export const SESSION_MAX_AGE_MS = 2 * 3600000;
export const SESSION_ROTATE_MS = 3600000;
const NODE_BYTES = 16;
export const MAX_TEXT_CHARS = 16000;
export const MAX_USERNAME_CODE_POINTS = 32;

const ECDSA_GEN = { name: "ECDSA", namedCurve: "P-256" };
const ECDSA_SIGN = { name: "ECDSA", hash: "SHA-256" };
const RSA_OAEP = { name: "RSA-OAEP", hash: "SHA-256" };
const RSA_MIN_BITS = 2048;
const RSA_MAX_BITS = 4096;

/** A key, signature or ciphertext that protocol v2 does not accept. `reason` is for people. */
export class CryptoError extends Error {
  constructor(reason, code = "crypto") {
    super(reason);
    this.name = "CryptoError";
    this.code = code;
  }
}

export function hasWebCrypto() {
  return Boolean(subtle);
}

// -- encodings --------------------------------------------------------------------------

export function b64encode(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  // Chunked so a 64 KiB ciphertext does not exceed the engine's argument-count limit.
  let binary = "";
  for (let i = 0; i < view.length; i += 0x8000) {
    binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Canonical padded base64 (§2) only: atob alone would accept missing padding and spaces. */
export function b64decode(text) {
  if (typeof text !== "string") throw new CryptoError("not valid base64");
  let binary;
  try {
    binary = atob(text);
  } catch {
    throw new CryptoError("not valid base64");
  }
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (b64encode(bytes) !== text) throw new CryptoError("not canonical base64");
  return bytes;
}

export function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function utf8(text) {
  return encoder.encode(text);
}

export function textLines(...fields) {
  return utf8(fields.join("\n"));
}

export function randomBytes(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

export function randomId() {
  return hex(randomBytes(16));
}

// -- usernames (§5) ----------------------------------------------------------------------

// Cc control, Cf format (ZWJ, bidi overrides), Cs surrogate, Co private use, Cn unassigned,
// Zl/Zp line/paragraph separators: the categories the server rejects.
const FORBIDDEN_USERNAME_CHARS = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]/u;

/** What the client sends for what the person typed: trimmed, then NFC. */
export function normalizeUsername(raw) {
  return String(raw).trim().normalize("NFC");
}

/** Why `name` breaks §5, or null when the server should accept it. */
export function usernameProblem(name) {
  if (typeof name !== "string") return "The username must be text.";
  const length = [...name].length;
  if (length < 1) return "Please choose a username.";
  if (length > MAX_USERNAME_CODE_POINTS) return "Usernames can have at most 32 characters.";
  if (name !== name.trim()) return "Usernames cannot start or end with a space.";
  if (FORBIDDEN_USERNAME_CHARS.test(name)) {
    return "Usernames cannot contain control, formatting or invisible characters.";
  }
  if (name !== name.normalize("NFC")) return "The username is not in Unicode NFC form.";
  return null;
}


// -- identities and sessions (§3, §4) ---------------------------------------------------

export async function sha256Hex(bytes) {
  return hex(await subtle.digest("SHA-256", bytes));
}

export async function fingerprintOf(spkiBytes) {
  return sha256Hex(spkiBytes);
}

export async function sessionIdOf(spkiBytes) {
  return (await sha256Hex(spkiBytes)).slice(0, 32);
}

/** The form people compare: 16 groups of four lowercase hex digits. */
export function groupFingerprint(fingerprint) {
  return fingerprint.match(/.{1,4}/g).join(" ");
}

/** A new identity: the private key can sign but can never be exported, even by this page. */
export async function generateIdentity() {
  const pair = await subtle.generateKey(ECDSA_GEN, false, ["sign", "verify"]);
  const spki = new Uint8Array(await subtle.exportKey("spki", pair.publicKey));
  return {
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
    spki: b64encode(spki),
    fingerprint: await fingerprintOf(spki),
  };
}

/** A fresh per-join RSA-OAEP key pair; only its public half is exportable. */
export async function generateSession() {
  const pair = await subtle.generateKey(
    { ...RSA_OAEP, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) },
    false,
    ["encrypt", "decrypt"],
  );
  const spki = new Uint8Array(await subtle.exportKey("spki", pair.publicKey));
  return {
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
    spki: b64encode(spki),
    sid: await sessionIdOf(spki),
  };
}

export async function importIdentityPublicKey(spkiB64) {
  try {
    return await subtle.importKey("spki", b64decode(spkiB64), ECDSA_GEN, true, ["verify"]);
  } catch (err) {
    throw new CryptoError("the identity key is not an ECDSA P-256 public key", "bad_key");
  }
}

export async function importSessionPublicKey(spkiB64) {
  let key;
  try {
    key = await subtle.importKey("spki", b64decode(spkiB64), RSA_OAEP, true, ["encrypt"]);
  } catch (err) {
    throw new CryptoError("the session key is not an RSA-OAEP public key", "bad_key");
  }
  const { modulusLength, publicExponent } = key.algorithm;
  if (modulusLength < RSA_MIN_BITS || modulusLength > RSA_MAX_BITS || modulusLength % 8) {
    throw new CryptoError(`the session key has ${modulusLength} bits`, "bad_key");
  }
  if (hex(publicExponent).replace(/^0+/, "") !== "10001") {
    throw new CryptoError("the session key's exponent is not 65537", "bad_key");
  }
  return key;
}

/** Import a PKCS#8 private key (tests and tools only; the page never holds key bytes). */
export async function importPkcs8(pkcs8B64, kind) {
  const der = b64decode(pkcs8B64);
  if (kind === "identity") return subtle.importKey("pkcs8", der, ECDSA_GEN, false, ["sign"]);
  return subtle.importKey("pkcs8", der, RSA_OAEP, false, ["decrypt"]);
}

export async function sign(privateKey, data) {
  // WebCrypto's ECDSA output is already the 64-byte IEEE P1363 r‖s form §3 asks for.
  return b64encode(await subtle.sign(ECDSA_SIGN, privateKey, data));
}

export async function verify(publicKey, data, sigB64) {
  let raw;
  try {
    raw = b64decode(sigB64);
  } catch {
    return false;
  }
  if (raw.length !== 64) return false;
  return subtle.verify(ECDSA_SIGN, publicKey, raw, data);
}

export function sessionText(room, username, sessionSpkiB64, issued, challenge, stream) {
  return textLines(SESSION_LABEL, room, username, sessionSpkiB64, decimal(issued), challenge, stream);
}

export function signSession(identityPrivateKey, room, username, sessionSpkiB64, issued, challenge, stream) {
  return sign(identityPrivateKey, sessionText(room, username, sessionSpkiB64, issued, challenge, stream));
}

/** Why a session statement is not fresh (§4), or null. */
export function sessionAgeProblem(issued, now, maxAge = SESSION_MAX_AGE_MS, skew = MAX_CLOCK_SKEW_MS) {
  if (!Number.isSafeInteger(issued)) return "its session statement has no valid time";
  if (issued > now + skew) return "its session statement is dated in the future";
  if (issued < now - maxAge) return "its session key is older than the maximum session age";
  return null;
}

/**
 * Check a roster participant (§4, §6.2) before anything is wrapped to it: the fingerprint and
 * sid must be the hashes of the keys given, and the identity key must have signed the session
 * statement for this room and username. Returns {identityKey, sessionKey} CryptoKeys or throws.
 */
export async function verifyParticipant(room, p) {
  const identityKey = await importIdentityPublicKey(p.identity_key);
  const sessionKey = await importSessionPublicKey(p.session_key);
  if ((await fingerprintOf(b64decode(p.identity_key))) !== p.fingerprint) {
    throw new CryptoError("the fingerprint does not match the identity key", "bad_fingerprint");
  }
  if ((await sessionIdOf(b64decode(p.session_key))) !== p.sid) {
    throw new CryptoError("the session id does not match the session key", "bad_sid");
  }
  if (!/^[0-9a-f]{32}$/.test(p.challenge ?? "") || !/^[0-9a-f]{32}$/.test(p.stream ?? "")) {
    throw new CryptoError("the session statement is malformed", "bad_signature");
  }
  let text;
  try {
    text = sessionText(room, p.username, p.session_key, p.issued, p.challenge, p.stream);
  } catch {
    throw new CryptoError("the session statement is malformed", "bad_signature");
  }
  if (!(await verify(identityKey, text, p.session_sig))) {
    throw new CryptoError("the session key signature does not verify", "bad_signature");
  }
  return { identityKey, sessionKey };
}

// -- messages (§7) ------------------------------------------------------------------------

/** Decimal without sign, leading zeros or exponent; refuses anything that is not one. */
function decimal(n) {
  if (!Number.isSafeInteger(n) || n < 0) throw new CryptoError("not a non-negative integer");
  return String(n);
}

async function sha256(bytes) {
  return new Uint8Array(await subtle.digest("SHA-256", bytes));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** `to`: b64 SHA-256 of the sorted recipient sids joined with "," (§7.2). */
export async function recipientsCommitment(sids) {
  return b64encode(await sha256(utf8([...sids].sort().join(","))));
}

/** `kc`: binds the header to one message key (§7.2). */
export async function keyCommitment(messageKey) {
  return hex(await sha256(concat(utf8("securechat/v2 key\n"), messageKey)));
}

export async function leafHash(id, sid, seq) {
  return (await sha256(concat(new Uint8Array([0]), textLines(LEAF_LABEL, id, sid, decimal(seq))))).slice(0, NODE_BYTES);
}

async function nodeHash(left, right) {
  return (await sha256(concat(new Uint8Array([1]), left, right))).slice(0, NODE_BYTES);
}

function split(n) {
  let k = 1;
  while (k << 1 < n) k <<= 1;
  return k;
}

export async function merkleRoot(leaves) {
  if (leaves.length === 1) return leaves[0];
  const k = split(leaves.length);
  return nodeHash(await merkleRoot(leaves.slice(0, k)), await merkleRoot(leaves.slice(k)));
}

/** RFC 6962 §2.1.1 audit path, the sibling nearest the leaf first. */
export async function merklePath(index, leaves) {
  if (leaves.length === 1) return [];
  const k = split(leaves.length);
  if (index < k) return [...(await merklePath(index, leaves.slice(0, k))), await merkleRoot(leaves.slice(k))];
  return [...(await merklePath(index - k, leaves.slice(k))), await merkleRoot(leaves.slice(0, k))];
}

function pathLength(index, n) {
  let depth = 0;
  while (n > 1) {
    const k = split(n);
    if (index < k) n = k;
    else [index, n] = [index - k, n - k];
    depth += 1;
  }
  return depth;
}

export async function rootFromPath(index, n, leaf, path) {
  if (n === 1) {
    if (path.length) throw new CryptoError("the Merkle path is too long", "bad_path");
    return leaf;
  }
  if (!path.length) throw new CryptoError("the Merkle path is too short", "bad_path");
  const k = split(n);
  const rest = path.slice(0, -1);
  const sibling = path.at(-1);
  if (index < k) return nodeHash(await rootFromPath(index, k, leaf, rest), sibling);
  return nodeHash(sibling, await rootFromPath(index - k, n - k, leaf, rest));
}

export function messageHeader(room, fingerprint, sid, id, ts, n, to, root, kc) {
  return [MESSAGE_LABEL, room, fingerprint, sid, id, decimal(ts), decimal(n), to, root, kc].join("\n");
}

export function signedText(header, ivB64, ctB64) {
  return textLines(header, ivB64, ctB64);
}

/** §7.1: 0x80 then zeros up to the smallest bucket that holds it. */
export function pad(bytes) {
  const bucket = PAD_BUCKETS.find((b) => bytes.length + 1 <= b);
  if (!bucket) throw new CryptoError("the message is too long", "too_long");
  const out = new Uint8Array(bucket);
  out.set(bytes);
  out[bytes.length] = 0x80;
  return out;
}

export function unpad(bytes) {
  if (!PAD_BUCKETS.includes(bytes.length)) throw new CryptoError("the plaintext is not padded", "bad_plaintext");
  let end = bytes.length;
  while (end > 0 && bytes[end - 1] === 0) end -= 1;
  if (end === 0 || bytes[end - 1] !== 0x80) throw new CryptoError("the plaintext padding is malformed", "bad_plaintext");
  return bytes.subarray(0, end - 1);
}

/** §7.1: {"text": ...}, plus optional fields such as an attachment's "files" (§10.4), padded. */
export function encodePlaintext(text, extra = null) {
  // "text" first, as Python writes it, and never replaced by an extra field.
  return pad(utf8(JSON.stringify(Object.assign({ text }, extra ?? {}, { text }))));
}

export function decodePlaintext(bytes) {
  return decodeBody(bytes).text;
}

/** The whole plaintext object; it must at least hold a "text" string. */
export function decodeBody(bytes) {
  let body;
  try {
    body = JSON.parse(decoder.decode(unpad(bytes)));
  } catch {
    throw new CryptoError("the plaintext is not UTF-8 JSON", "bad_plaintext");
  }
  if (!body || typeof body !== "object" || typeof body.text !== "string") {
    throw new CryptoError('the plaintext has no "text" string', "bad_plaintext");
  }
  return body;
}

export async function aesEncrypt(rawKey, iv, plaintext, aad) {
  const key = await subtle.importKey("raw", rawKey, "AES-GCM", false, ["encrypt"]);
  return new Uint8Array(
    await subtle.encrypt({ name: "AES-GCM", iv, additionalData: aad, tagLength: 128 }, key, plaintext),
  );
}

export async function aesDecrypt(rawKey, iv, ct, aad) {
  const key = await subtle.importKey("raw", rawKey, "AES-GCM", false, ["decrypt"]);
  return new Uint8Array(
    await subtle.decrypt({ name: "AES-GCM", iv, additionalData: aad, tagLength: 128 }, key, ct),
  );
}

/** What is RSA-OAEP-wrapped to one recipient (§7.3): key ‖ n ‖ index ‖ seq ‖ path. */
export function keyPayload(messageKey, n, index, seq, path) {
  const fixed = new Uint8Array(12);
  const view = new DataView(fixed.buffer);
  view.setUint16(0, n);
  view.setUint16(2, index);
  view.setBigUint64(4, BigInt(seq));
  return concat(messageKey, fixed, ...path);
}

export function parseKeyPayload(raw) {
  if (raw.length < 44 || (raw.length - 44) % NODE_BYTES) {
    throw new CryptoError("the wrapped key payload has the wrong length", "no_decrypt");
  }
  const view = new DataView(raw.buffer, raw.byteOffset, raw.length);
  const n = view.getUint16(32);
  const index = view.getUint16(34);
  const seq = Number(view.getBigUint64(36));
  const path = [];
  for (let i = 44; i < raw.length; i += NODE_BYTES) path.push(raw.slice(i, i + NODE_BYTES));
  if (n < 1 || n > MAX_RECIPIENTS || index >= n || seq < 1 || !Number.isSafeInteger(seq)
    || path.length !== pathLength(index, n)) {
    throw new CryptoError("the wrapped key payload is malformed", "no_decrypt");
  }
  return { messageKey: raw.slice(0, 32), n, index, seq, path };
}

export async function wrapKey(sessionPublicKey, payload) {
  return b64encode(await subtle.encrypt({ name: "RSA-OAEP" }, sessionPublicKey, payload));
}

export async function unwrapKey(sessionPrivateKey, wrappedB64) {
  let raw;
  try {
    raw = new Uint8Array(
      await subtle.decrypt({ name: "RSA-OAEP" }, sessionPrivateKey, b64decode(wrappedB64)),
    );
  } catch {
    throw new CryptoError("the message key does not unwrap with our session key", "no_decrypt");
  }
  return parseKeyPayload(raw);
}

/**
 * Build a client→server msg frame (§7.3).
 * recipients: [{sid, sessionKey: CryptoKey, seq}] whose session statements were verified;
 * seq is that recipient's next sequence number from this sender.
 * messageKey/iv overrides exist only so tests can reproduce the vectors. `extra` adds plaintext
 * fields (§7.1); `attachments` lists the blob ids the message refers to, in the clear (§10.3).
 */
export async function sealMessage({
  identityPrivateKey, fingerprint, senderSid, room, text, recipients,
  ts = Date.now(), id = randomId(), messageKey = randomBytes(32), iv = randomBytes(12),
  extra = null, attachments = null,
}) {
  if (!recipients.length || recipients.length > MAX_RECIPIENTS) {
    throw new CryptoError(`a message has 1 to ${MAX_RECIPIENTS} recipients`);
  }
  const ordered = [...recipients].sort((a, b) => (a.sid < b.sid ? -1 : 1));
  const leaves = await Promise.all(ordered.map((r) => leafHash(id, r.sid, r.seq)));
  const n = ordered.length;
  const to = await recipientsCommitment(ordered.map((r) => r.sid));
  const header = messageHeader(room, fingerprint, senderSid, id, ts, n, to,
    hex(await merkleRoot(leaves)), await keyCommitment(messageKey));
  const ct = b64encode(await aesEncrypt(messageKey, iv, encodePlaintext(text, extra), utf8(header)));
  const ivB64 = b64encode(iv);
  const keys = {};
  for (const [i, r] of ordered.entries()) {
    keys[r.sid] = await wrapKey(r.sessionKey, keyPayload(messageKey, n, i, r.seq, await merklePath(i, leaves)));
  }
  const sig = await sign(identityPrivateKey, signedText(header, ivB64, ct));
  const frame = { v: PROTOCOL_VERSION, type: "msg", id, ts, iv: ivB64, ct, to, sig, keys };
  if (attachments?.length) frame.attachments = [...attachments];
  return frame;
}

/**
 * Verify and decrypt a relayed msg frame (§7.4 steps 2-5); returns {text, seq, n, to, body}
 * (body: the whole plaintext object, text plus e.g. "files").
 * Roster, sequence and clock checks need client state and live in chat.js.
 * Throws CryptoError whose code says which check failed.
 */
export async function openMessage(frame, room, sender, session) {
  const payload = await unwrapKey(session.privateKey, frame.key);
  let header;
  try {
    const leaf = await leafHash(frame.id, session.sid, payload.seq);
    const root = await rootFromPath(payload.index, payload.n, leaf, payload.path);
    header = messageHeader(room, sender.fingerprint, frame.from, frame.id, frame.ts, payload.n, frame.to,
      hex(root), await keyCommitment(payload.messageKey));
  } catch {
    throw new CryptoError("the message header is malformed", "bad_frame");
  }
  if (!(await verify(sender.identityKey, signedText(header, frame.iv, frame.ct), frame.sig))) {
    // A wrong signature, or a key, sequence number or path that is not the one the sender signed.
    throw new CryptoError("the message signature does not verify", "bad_signature");
  }
  let plaintext;
  try {
    plaintext = await aesDecrypt(payload.messageKey, b64decode(frame.iv), b64decode(frame.ct), utf8(header));
  } catch {
    throw new CryptoError("the message does not decrypt", "no_decrypt");
  }
  const body = decodeBody(plaintext);
  return { text: body.text, seq: payload.seq, n: payload.n, to: frame.to, body };
}
