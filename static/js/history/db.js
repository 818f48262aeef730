// IndexedDB I/O for this device's history, and nothing else: rows in, rows out.
// Its own database, apart from the identity and pins (store.js), so clearing history can
// never touch a key, and either can change its schema alone.
//
// messages: {seq (auto-increment key), ts, room?, record? | sealed?}; `room` and `record` are
//   absent when the row is sealed (the passphrase lock): only the time stays readable, so
//   retention can prune without the passphrase. Indexes: ts, room.
// meta: small named values: "settings" {retentionDays}, "lock" (seal.js), absent when unset.

export const HISTORY_DB = "securechat-history";
const DB_VERSION = 1;

/** The browser refused to store more (QuotaExceededError): the caller says so, chat goes on. */
export class QuotaError extends Error {
  constructor(cause) {
    super("The browser refused to store more history on this device (storage is full or limited).");
    this.name = "QuotaError";
    this.cause = cause;
  }
}

const isQuota = (error) => error?.name === "QuotaExceededError";

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Resolves when the transaction commits; a quota refusal becomes QuotaError. */
function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = (event) => {
      event?.preventDefault?.(); // handled here, not an uncaught error in the console
      const error = tx.error ?? event?.target?.error;
      reject(isQuota(error) ? new QuotaError(error) : error ?? new Error("history transaction aborted"));
    };
  });
}

export async function openHistoryDb(indexedDB = globalThis.indexedDB) {
  const req = indexedDB.open(HISTORY_DB, DB_VERSION);
  req.onupgradeneeded = () => {
    const db = req.result;
    const messages = db.createObjectStore("messages", { keyPath: "seq", autoIncrement: true });
    messages.createIndex("ts", "ts");
    messages.createIndex("room", "room");
    db.createObjectStore("meta");
  };
  const db = await request(req);
  // Another tab upgrading the schema must not wait on this one forever.
  db.onversionchange = () => db.close();

  const read = (store) => db.transaction(store).objectStore(store);

  return {
    persistent: true,
    async add(row) {
      const tx = db.transaction("messages", "readwrite");
      const key = request(tx.objectStore("messages").add(row));
      await done(tx);
      return key;
    },
    put(row) {
      const tx = db.transaction("messages", "readwrite");
      tx.objectStore("messages").put(row);
      return done(tx);
    },
    /** Several rows in one transaction: all of them or none. */
    putAll(rows) {
      const tx = db.transaction("messages", "readwrite");
      const store = tx.objectStore("messages");
      for (const row of rows) store.put(row);
      return done(tx);
    },
    remove(seq) {
      const tx = db.transaction("messages", "readwrite");
      tx.objectStore("messages").delete(seq);
      return done(tx);
    },
    all() {
      return request(read("messages").getAll());
    },
    inRoom(room) {
      return request(read("messages").index("room").getAll(room));
    },
    count() {
      return request(read("messages").count());
    },
    /** Deletes every row with ts < `ts`; resolves to how many went. */
    async deleteBefore(ts) {
      const tx = db.transaction("messages", "readwrite");
      const index = tx.objectStore("messages").index("ts");
      const range = IDBKeyRange.upperBound(ts, true);
      const count = await request(index.count(range));
      const cursor = index.openKeyCursor(range);
      cursor.onsuccess = () => {
        const at = cursor.result;
        if (!at) return;
        tx.objectStore("messages").delete(at.primaryKey);
        at.continue();
      };
      await done(tx);
      return count;
    },
    clearMessages() {
      const tx = db.transaction("messages", "readwrite");
      tx.objectStore("messages").clear();
      return done(tx);
    },
    async getMeta(name) {
      return (await request(read("meta").get(name))) ?? null;
    },
    setMeta(name, value) {
      const tx = db.transaction("meta", "readwrite");
      tx.objectStore("meta").put(value, name);
      return done(tx);
    },
    deleteMeta(name) {
      const tx = db.transaction("meta", "readwrite");
      tx.objectStore("meta").delete(name);
      return done(tx);
    },
    close() {
      db.close();
    },
  };
}

/**
 * The same interface in memory: for node tests, and the page's fallback when the browser
 * refuses IndexedDB (then history lasts as long as the page, and the page says so).
 * Rows are copied in and out with structuredClone, as IndexedDB does.
 */
export function memoryHistoryDb({ quotaRows = Infinity } = {}) {
  const rows = new Map();
  const meta = new Map();
  let next = 1;
  const copy = (value) => structuredClone(value);
  const sorted = () => [...rows.values()].sort((a, b) => a.seq - b.seq).map(copy);
  const room = (candidate) => sorted().filter((row) => row.room === candidate);
  const full = (adding) => rows.size + adding > quotaRows;
  return {
    persistent: false,
    async add(row) {
      if (full(1)) throw new QuotaError(null);
      const seq = next++;
      rows.set(seq, copy({ ...row, seq }));
      return seq;
    },
    async put(row) {
      if (!rows.has(row.seq) && full(1)) throw new QuotaError(null);
      rows.set(row.seq, copy(row));
      next = Math.max(next, row.seq + 1);
    },
    async putAll(list) {
      if (full(list.filter((row) => !rows.has(row.seq)).length)) throw new QuotaError(null);
      for (const row of list) rows.set(row.seq, copy(row));
    },
    async remove(seq) {
      rows.delete(seq);
    },
    async all() {
      return sorted();
    },
    async inRoom(name) {
      return room(name);
    },
    async count() {
      return rows.size;
    },
    async deleteBefore(ts) {
      let count = 0;
      for (const [seq, row] of rows) {
        if (row.ts < ts) {
          rows.delete(seq);
          count += 1;
        }
      }
      return count;
    },
    async clearMessages() {
      rows.clear();
    },
    async getMeta(name) {
      return meta.has(name) ? copy(meta.get(name)) : null;
    },
    async setMeta(name, value) {
      meta.set(name, copy(value));
    },
    async deleteMeta(name) {
      meta.delete(name);
    },
    close() {},
  };
}
