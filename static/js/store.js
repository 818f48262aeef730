// Persistent client state in IndexedDB: the identity key pair, TOFU pins and verifications.
// CryptoKey objects are structured-cloneable, so the non-extractable private key is stored
// as the key object itself; its bytes never exist anywhere this page can read them.
//
// Pins and verifications are keyed on a name's confusable skeleton (names.js, PROTOCOL.md §5),
// never on the exact string: "аlice" with a Cyrillic а finds alice's pin. Version 1 keyed
// pins on the lowercased name and verifications on the fingerprint alone; opening the database
// moves both to the version 2 keys.

import { nameKeys } from "./names.js";

const DB_NAME = "securechat";
const DB_VERSION = 2;
const STORES = ["identity", "pins", "verified", "settings"];

/** The "verified" key: a verification is of (name skeleton, fingerprint), not of a key alone. */
function verifiedKey(keys, fingerprint) {
  return `${keys[0]}\n${fingerprint}`;
}

function migrateFromV1(tx) {
  const pins = tx.objectStore("pins");
  pins.getAll().onsuccess = (event) => {
    pins.clear();
    for (const pin of event.target.result) {
      const keys = nameKeys(pin.username);
      pins.put({ ...pin, shape: keys[1] }, keys[0]);
    }
  };
  const verified = tx.objectStore("verified");
  const cursor = verified.openCursor();
  const moved = [];
  cursor.onsuccess = (event) => {
    const at = event.target.result;
    if (at) {
      if (/^[0-9a-f]{64}$/.test(at.key)) moved.push([at.key, at.value]);
      at.continue();
      return;
    }
    for (const [fingerprint, value] of moved) {
      verified.delete(fingerprint);
      verified.put(value, verifiedKey(nameKeys(value.username), fingerprint));
    }
  };
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb(indexedDB) {
  const req = indexedDB.open(DB_NAME, DB_VERSION);
  req.onupgradeneeded = (event) => {
    for (const name of STORES) {
      if (!req.result.objectStoreNames.contains(name)) req.result.createObjectStore(name);
    }
    if (event.oldVersion === 1) migrateFromV1(req.transaction);
  };
  return request(req);
}

/** The same small key-value interface over IndexedDB or, for tests, a Map. */
class Store {
  constructor(backend) {
    this.backend = backend;
  }

  getIdentity() {
    return this.backend.get("identity", "self");
  }

  setIdentity(identity) {
    return this.backend.put("identity", "self", identity);
  }

  /** The pin of exactly this name (its lowercased skeleton): {username, fingerprint, since, shape}. */
  getPin(username) {
    return this.backend.get("pins", nameKeys(username)[0]);
  }

  /** Pins of other names that look like `username` only as typed (e.g. a capital Cyrillic Н). */
  async pinsLike(username) {
    const [fold, shape] = nameKeys(username);
    return (await this.backend.all("pins")).filter(([key, pin]) => key !== fold && pin.shape === shape)
      .map(([, pin]) => pin);
  }

  setPin(username, { fingerprint, since }) {
    const [fold, shape] = nameKeys(username);
    return this.backend.put("pins", fold, { username, fingerprint, since, shape });
  }

  async isVerified(username, fingerprint) {
    return Boolean(await this.backend.get("verified", verifiedKey(nameKeys(username), fingerprint)));
  }

  setVerified(username, fingerprint) {
    return this.backend.put("verified", verifiedKey(nameKeys(username), fingerprint),
      { username, since: Date.now() });
  }

  getSetting(name) {
    return this.backend.get("settings", name);
  }

  setSetting(name, value) {
    return this.backend.put("settings", name, value);
  }
}

export async function openStore(indexedDB = globalThis.indexedDB) {
  const db = await openDb(indexedDB);
  return new Store({
    async get(store, key) {
      const value = await request(db.transaction(store).objectStore(store).get(key));
      return value ?? null;
    },
    async all(store) {
      const tx = db.transaction(store);
      const [keys, values] = await Promise.all([request(tx.objectStore(store).getAllKeys()),
        request(tx.objectStore(store).getAll())]);
      return keys.map((key, i) => [key, values[i]]);
    },
    put(store, key, value) {
      const tx = db.transaction(store, "readwrite");
      tx.objectStore(store).put(value, key);
      return new Promise((resolve, reject) => {
        tx.oncomplete = () => resolve();
        tx.onerror = tx.onabort = () => reject(tx.error);
      });
    },
  });
}

/** Same interface in memory: for node tests, and a fallback when IndexedDB is refused
 *  (some private-browsing modes); the page then warns that nothing survives a reload. */
export function memoryStore() {
  const maps = Object.fromEntries(STORES.map((s) => [s, new Map()]));
  return new Store({
    async get(store, key) {
      return maps[store].get(key) ?? null;
    },
    async all(store) {
      return [...maps[store].entries()];
    },
    async put(store, key, value) {
      maps[store].set(key, value);
    },
  });
}
