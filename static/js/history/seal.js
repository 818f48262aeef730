// The optional passphrase lock on this device's history, with WebCrypto only.
//
// passphrase --PBKDF2-SHA-256 (600,000 iterations, 16-byte random salt)--> wrapping key
//   (AES-KW-256, non-extractable), which wraps one random data key (AES-GCM-256). Records are
//   sealed under the data key with a fresh 96-bit IV each, the record's time as associated
//   data. The data key is unwrapped as non-extractable: once unlocked, this page can use it
//   but never read it. Changing the passphrase rewraps the data key; records stay as they are.
// A wrong passphrase fails AES-KW's integrity check: nothing is decrypted with a wrong key.
// No DOM and no storage here: node tests run it as the browser does.

// OWASP Password Storage Cheat Sheet (2023-): PBKDF2-HMAC-SHA256, 600,000 iterations.
export const PBKDF2_ITERATIONS = 600000;
export const SALT_BYTES = 16;
export const MIN_PASSPHRASE_CHARS = 8;
const LOCK_VERSION = 1;
const AAD_LABEL = "securechat history v1\n";

export class WrongPassphrase extends Error {
  constructor() {
    super("That passphrase does not open this history.");
    this.name = "WrongPassphrase";
  }
}

const subtle = () => globalThis.crypto.subtle;
const encoder = new TextEncoder();

/** The same passphrase typed on another keyboard or input method gives the same key. */
export function normalizePassphrase(passphrase) {
  return String(passphrase).normalize("NFC");
}

export function passphraseProblem(passphrase) {
  const length = [...normalizePassphrase(passphrase)].length;
  if (length < MIN_PASSPHRASE_CHARS) {
    return `Use at least ${MIN_PASSPHRASE_CHARS} characters; a few unrelated words are easy to remember and hard to guess.`;
  }
  return null;
}

async function wrappingKey(passphrase, salt, iterations) {
  const material = await subtle().importKey("raw", encoder.encode(normalizePassphrase(passphrase)),
    "PBKDF2", false, ["deriveKey"]);
  return subtle().deriveKey({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, material,
    { name: "AES-KW", length: 256 }, false, ["wrapKey", "unwrapKey"]);
}

function randomHex(bytes) {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function wrap(dataKey, passphrase, iterations) {
  const salt = crypto.getRandomValues(new Uint8Array(SALT_BYTES));
  const kek = await wrappingKey(passphrase, salt, iterations);
  const wrapped = new Uint8Array(await subtle().wrapKey("raw", dataKey, kek, "AES-KW"));
  return { salt, wrapped, kek };
}

async function unwrapWith(kek, wrapped, extractable) {
  try {
    return await subtle().unwrapKey("raw", wrapped, kek, "AES-KW", { name: "AES-GCM", length: 256 },
      extractable, ["encrypt", "decrypt"]);
  } catch {
    throw new WrongPassphrase();
  }
}

async function unwrap(lock, passphrase, extractable) {
  return unwrapWith(await wrappingKey(passphrase, lock.salt, lock.iterations), lock.wrapped, extractable);
}

/**
 * A new lock: {lock, key}. `lock` is what is stored (kdf parameters, salt, wrapped data key,
 * an id that names this lock); `key` is the non-extractable data key for this session.
 */
export async function createLock(passphrase, { iterations = PBKDF2_ITERATIONS } = {}) {
  // Extractable only for the moment it takes to wrap it; the session uses the unwrapped copy.
  const fresh = await subtle().generateKey({ name: "AES-GCM", length: 256 }, true, ["encrypt", "decrypt"]);
  const { salt, wrapped, kek } = await wrap(fresh, passphrase, iterations);
  const lock = { v: LOCK_VERSION, kdf: "PBKDF2-SHA-256", iterations, id: randomHex(16), salt, wrapped };
  // The derivation is the slow part on purpose: its result opens the session's copy too.
  return { lock, key: await unwrapWith(kek, wrapped, false) };
}

/** The data key of `lock` (non-extractable), or WrongPassphrase. */
export function openLock(lock, passphrase) {
  return unwrap(lock, passphrase, false);
}

/** The same data key under a new passphrase (and a new salt): records need no re-encryption. */
export async function changePassphrase(lock, oldPassphrase, newPassphrase, { iterations = lock.iterations } = {}) {
  const dataKey = await unwrap(lock, oldPassphrase, true);
  const { salt, wrapped } = await wrap(dataKey, newPassphrase, iterations);
  return { ...lock, iterations, salt, wrapped };
}

function aad(ts) {
  return encoder.encode(`${AAD_LABEL}${ts}`);
}

/** A record sealed for storage: {iv, data}, bound to the time `ts` stored beside it. */
export async function seal(key, record, ts) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const data = await subtle().encrypt({ name: "AES-GCM", iv, additionalData: aad(ts) }, key,
    encoder.encode(JSON.stringify(record)));
  return { iv, data: new Uint8Array(data) };
}

/** The record back; throws when the key, the time or the bytes are not the ones sealed. */
export async function unseal(key, sealed, ts) {
  const plain = await subtle().decrypt({ name: "AES-GCM", iv: sealed.iv, additionalData: aad(ts) }, key, sealed.data);
  return JSON.parse(new TextDecoder().decode(plain));
}
