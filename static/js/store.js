// Persistent client state in IndexedDB: the identity key pair, TOFU pins and verifications.
// CryptoKey objects are structured-cloneable, so the non-extractable private key is stored
// as the key object itself; its bytes never exist anywhere this page can read them.

const DB_NAME = "securechat";
const DB_VERSION = 1;
const STORES = ["identity", "pins", "verified", "settings"];

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb(indexedDB) {
  const req = indexedDB.open(DB_NAME, DB_VERSION);
  req.onupgradeneeded = () => {
    for (const name of STORES) {
      if (!req.result.objectStoreNames.contains(name)) req.result.createObjectStore(name);
    }
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

  /** pin: {username, fingerprint, since} keyed by the username comparison key. */
  getPin(key) {
    return this.backend.get("pins", key);
  }

  setPin(key, pin) {
    return this.backend.put("pins", key, pin);
  }

  async isVerified(fingerprint) {
    return Boolean(await this.backend.get("verified", fingerprint));
  }

  setVerified(fingerprint, username) {
    return this.backend.put("verified", fingerprint, { username, since: Date.now() });
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
    async put(store, key, value) {
      maps[store].set(key, value);
    },
  });
}
