// The cryptographic framing of protocol v1 (docs/PROTOCOL.md §2–§7) on WebCrypto.
// Pure functions: no DOM, no storage, no network, so Node 20 (globalThis.crypto.subtle) can
// import this file unchanged and check it against tests/vectors/v1.json.

const subtle = globalThis.crypto?.subtle;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export const PROTOCOL_VERSION = 1;
export const SESSION_LABEL = "securechat/v1 session";
export const MESSAGE_LABEL = "securechat/v1 msg";
export const MAX_TEXT_CHARS = 16000;
export const MAX_USERNAME_CODE_POINTS = 32;

const ECDSA_GEN = { name: "ECDSA", namedCurve: "P-256" };
const ECDSA_SIGN = { name: "ECDSA", hash: "SHA-256" };
const RSA_OAEP = { name: "RSA-OAEP", hash: "SHA-256" };
const RSA_MIN_BITS = 2048;
const RSA_MAX_BITS = 4096;

/** A key, signature or ciphertext that protocol v1 does not accept. `reason` is for people. */
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

export function sessionText(room, username, sessionSpkiB64) {
  return textLines(SESSION_LABEL, room, username, sessionSpkiB64);
}

export function signSession(identityPrivateKey, room, username, sessionSpkiB64) {
  return sign(identityPrivateKey, sessionText(room, username, sessionSpkiB64));
}

/**
 * Check a roster participant (§4, §6.2) before anything is wrapped to it: the fingerprint and
 * sid must be the hashes of the keys given, and the identity key must have signed the session
 * key for this room and username. Returns {identityKey, sessionKey} CryptoKeys or throws.
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
  const ok = await verify(identityKey, sessionText(room, p.username, p.session_key), p.session_sig);
  if (!ok) throw new CryptoError("the session key signature does not verify", "bad_signature");
  return { identityKey, sessionKey };
}

// -- messages (§7) ------------------------------------------------------------------------

/** Decimal without sign, leading zeros or exponent; refuses anything that is not one. */
function decimal(n) {
  if (!Number.isSafeInteger(n) || n < 0) throw new CryptoError("not a non-negative integer");
  return String(n);
}

export function messageHeader(room, fingerprint, sid, id, ts, counter, recipients) {
  return [MESSAGE_LABEL, room, fingerprint, sid, id, decimal(ts), decimal(counter),
    recipients.join(",")].join("\n");
}

export function signedText(header, ivB64, ctB64) {
  return textLines(header, ivB64, ctB64);
}

export function encodePlaintext(text) {
  return utf8(JSON.stringify({ text }));
}

export function decodePlaintext(bytes) {
  let body;
  try {
    body = JSON.parse(decoder.decode(bytes));
  } catch {
    throw new CryptoError("the plaintext is not UTF-8 JSON", "bad_plaintext");
  }
  if (!body || typeof body !== "object" || typeof body.text !== "string") {
    throw new CryptoError('the plaintext has no "text" string', "bad_plaintext");
  }
  return body.text;
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

export async function wrapKey(sessionPublicKey, rawKey) {
  return b64encode(await subtle.encrypt({ name: "RSA-OAEP" }, sessionPublicKey, rawKey));
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
  if (raw.length !== 32) throw new CryptoError("the message key is not 32 bytes", "no_decrypt");
  return raw;
}

/**
 * Build a client→server msg frame (§7.3).
 * recipients: [{sid, sessionKey: CryptoKey}] whose session signatures were verified.
 * messageKey/iv overrides exist only so tests can reproduce the vectors.
 */
export async function sealMessage({
  identityPrivateKey, fingerprint, senderSid, room, text, recipients, counter,
  ts = Date.now(), id = randomId(), messageKey = randomBytes(32), iv = randomBytes(12),
}) {
  if (!recipients.length) throw new CryptoError("a message needs at least one recipient");
  const sids = recipients.map((r) => r.sid).sort();
  const header = messageHeader(room, fingerprint, senderSid, id, ts, counter, sids);
  const ct = b64encode(await aesEncrypt(messageKey, iv, encodePlaintext(text), utf8(header)));
  const ivB64 = b64encode(iv);
  const keys = {};
  for (const r of recipients) keys[r.sid] = await wrapKey(r.sessionKey, messageKey);
  const sig = await sign(identityPrivateKey, signedText(header, ivB64, ct));
  return { v: PROTOCOL_VERSION, type: "msg", id, ts, counter, iv: ivB64, ct, sig, keys };
}

export function relayedHeader(frame) {
  const from = frame.from;
  return messageHeader(frame.room, from.fingerprint, from.sid, frame.id, frame.ts, frame.counter,
    frame.recipients);
}

function isSortedUnique(list) {
  return list.every((s, i) => typeof s === "string" && (i === 0 || list[i - 1] < s));
}

/**
 * Verify and decrypt a relayed msg frame (§7.4 steps 2, 3 and 6); returns the text.
 * Roster, replay and clock checks need client state and live in chat.js.
 * Throws CryptoError whose code says which check failed.
 */
export async function openMessage(frame, senderIdentityKey, session) {
  const recipients = frame.recipients;
  if (!Array.isArray(recipients) || !isSortedUnique(recipients)) {
    throw new CryptoError("the recipient list is not sorted and unique", "bad_recipients");
  }
  if (!recipients.includes(session.sid)) {
    throw new CryptoError("the message was not addressed to us", "not_for_us");
  }
  let header;
  try {
    header = relayedHeader(frame);
  } catch {
    throw new CryptoError("the message header is malformed", "bad_frame");
  }
  if (!(await verify(senderIdentityKey, signedText(header, frame.iv, frame.ct), frame.sig))) {
    throw new CryptoError("the message signature does not verify", "bad_signature");
  }
  const messageKey = await unwrapKey(session.privateKey, frame.key);
  let plaintext;
  try {
    plaintext = await aesDecrypt(messageKey, b64decode(frame.iv), b64decode(frame.ct), utf8(header));
  } catch {
    throw new CryptoError("the message does not decrypt", "no_decrypt");
  }
  return decodePlaintext(plaintext);
}
