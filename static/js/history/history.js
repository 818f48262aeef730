// This device's history: what chat.js reports (messages received, our own messages and their
// delivery) kept per room, read back after a reload, searched, exported, pruned and cleared,
// optionally sealed under a passphrase. No DOM: the page (main.js, ui/) listens and renders.
//
// Writes run one at a time in arrival order. While a passphrase lock is set but not yet
// opened in this browser session, writes wait in memory (bounded) and go to disk, sealed,
// once it is unlocked; if the page closes first they are lost, and the page says so.

import { QuotaError } from "./db.js";
import { exportFileName, exportHtml, exportJson } from "./export.js";
import { asReloaded, receivedRecord, retentionCutoff, retentionDays, searchRecords, sentRecord,
  withDelivery } from "./records.js";
import { changePassphrase, createLock, openLock, PBKDF2_ITERATIONS, seal, unseal } from "./seal.js";

const MAX_PENDING = 5000;
const PRUNE_EVERY_MS = 60 * 60 * 1000;

/**
 * `keeper`: where the unlocked data key waits for the rest of the browser session
 *   ({get(lockId), put(lockId, key), forget()}, session-key.js), or null.
 * `channel`: a BroadcastChannel to the other tabs of this page (settings, lock, clear).
 * `onChange()`: settings, lock or contents changed (here or in another tab).
 * `onProblem({kind, message})`: a write failed ("quota" or "error"); chatting goes on.
 */
export class History {
  constructor({ db, keeper = null, channel = null, now = Date.now, iterations = PBKDF2_ITERATIONS,
    onChange = () => {}, onProblem = () => {} }) {
    Object.assign(this, { db, keeper, channel, now, iterations, onChange, onProblem });
    this.settings = { retentionDays: retentionDays(undefined) };
    this.lock = null;
    this.key = null;
    this.pending = [];
    this.droppedWhileLocked = 0;
    this.sentByLocalId = new Map(); // this page's own messages: localId -> {seq, record, dead}
    this.writtenHere = new Set(); // seqs this page added: already on its screen, live
    this.chain = Promise.resolve();
    this.quotaRefused = false;
    if (channel) channel.onmessage = (event) => this.enqueue(() => this.refresh(event.data?.type ?? "changed"));
  }

  /** Read settings and lock; take the session's key if another page already unlocked it. */
  async open() {
    await this.refresh(null);
    await this.prune();
    return this;
  }

  /** Re-read what is stored; `why` is another tab's announcement, or null at start. */
  async refresh(why) {
    if (why === "locked") {
      // Locked in another tab: this one forgets the key too, and does not hand it back.
      this.key = null;
      this.keeper?.release?.();
    }
    const settings = await this.db.getMeta("settings");
    this.settings = { retentionDays: retentionDays(settings?.retentionDays) };
    const lock = await this.db.getMeta("lock");
    if (lock?.id !== this.lock?.id) this.key = null;
    this.lock = lock;
    if (lock && !this.key) this.key = (await this.keeper?.get(lock.id)) ?? null;
    if (!lock) this.key = null;
    if (this.settings.retentionDays === 0) this.pending = [];
    if (this.lock && this.key) await this.afterUnlock();
    if (why) this.onChange();
  }

  // -- state ----------------------------------------------------------------------------

  get keeping() {
    return this.settings.retentionDays !== 0;
  }

  get retentionDays() {
    return this.settings.retentionDays;
  }

  /** A passphrase is set. */
  get hasLock() {
    return this.lock !== null;
  }

  /** A passphrase is set and not entered in this browser session: nothing can be read. */
  get locked() {
    return this.lock !== null && this.key === null;
  }

  /** Only for this page (the browser refused IndexedDB). */
  get persistent() {
    return this.db.persistent;
  }

  // -- writing --------------------------------------------------------------------------

  enqueue(task) {
    const run = this.chain.then(task);
    this.chain = run.catch(() => {});
    return run;
  }

  /** Run `op` now, or when the lock is opened; problems are reported, never thrown. */
  write(op) {
    if (!this.keeping) return Promise.resolve();
    return this.enqueue(async () => {
      if (!this.keeping) return;
      if (this.locked) {
        if (this.pending.length < MAX_PENDING) this.pending.push(op);
        else this.droppedWhileLocked += 1;
        return;
      }
      await this.guard(op);
    });
  }

  async guard(op) {
    try {
      await op();
      this.quotaRefused = false;
    } catch (error) {
      if (error instanceof QuotaError) {
        // Once per refusal, not once per message: the page shows one calm line.
        if (!this.quotaRefused) this.onProblem({ kind: "quota", message: error.message });
        this.quotaRefused = true;
      } else {
        this.onProblem({ kind: "error", message: `History could not be saved: ${error?.message ?? error}` });
      }
    }
  }

  async rowFor(record, seq) {
    const row = this.lock
      ? { ts: record.ts, sealed: await seal(this.key, record, record.ts) }
      : { ts: record.ts, room: record.room, record };
    if (seq !== undefined) row.seq = seq;
    return row;
  }

  /** A message chat.js accepted, received in `room`. */
  received(room, message) {
    const record = receivedRecord(room, message, this.now());
    return this.write(async () => {
      this.writtenHere.add(await this.db.add(await this.rowFor(record)));
    });
  }

  /** One of our own messages (an `outgoing` event): the first event adds it, later ones update it. */
  sent(room, outgoing, me) {
    let entry = this.sentByLocalId.get(outgoing.localId);
    if (entry?.dead) return Promise.resolve();
    if (!entry) {
      if (!this.keeping) return Promise.resolve();
      entry = { seq: null, record: sentRecord(room, outgoing, me, this.now()), dead: false };
      this.sentByLocalId.set(outgoing.localId, entry);
    } else {
      entry.record = withDelivery(entry.record, outgoing);
    }
    const target = entry;
    return this.write(async () => {
      if (target.dead) return;
      if (target.seq === null) {
        target.seq = await this.db.add(await this.rowFor(target.record));
        this.writtenHere.add(target.seq);
      }
      else await this.db.put(await this.rowFor(target.record, target.seq));
    });
  }

  /** Delete one record (a reloaded unsent message the person sends again). */
  forget(seq) {
    return this.enqueue(() => this.guard(() => this.db.remove(seq)));
  }

  // -- reading --------------------------------------------------------------------------

  /** Rows back to {seq, record}; a row that does not open (damaged) is skipped and counted. */
  async entries(rows) {
    const out = [];
    let damaged = 0;
    for (const row of rows) {
      if (!row.sealed) {
        if (row.record) out.push({ seq: row.seq, record: row.record });
        continue;
      }
      if (!this.key) continue;
      try {
        out.push({ seq: row.seq, record: await unseal(this.key, row.sealed, row.ts) });
      } catch {
        damaged += 1;
      }
    }
    this.damaged = damaged;
    return out;
  }

  async allEntries() {
    if (this.locked) return [];
    return this.entries(await this.db.all());
  }

  /** This page wrote record `seq` (it is on this page's screen as a live message). */
  isFromThisPage(seq) {
    return this.writtenHere.has(seq);
  }

  /**
   * `room`'s records in the order they happened here, as they read after a reload.
   * `thisPage: false` leaves out what this page wrote itself (already on its screen).
   */
  load(room, { thisPage = true } = {}) {
    return this.enqueue(async () => {
      if (this.locked) return [];
      // Sealed rows do not name their room on disk: open them all, keep this room's.
      const rows = this.lock ? await this.db.all() : await this.db.inRoom(room);
      const live = new Set([...this.sentByLocalId.values()].map((e) => e.seq));
      return (await this.entries(rows))
        .filter((e) => e.record.room === room && (thisPage || !this.writtenHere.has(e.seq)))
        .map((e) => (live.has(e.seq) ? e : { ...e, record: asReloaded(e.record) }));
    });
  }

  /** Across every room on this device: {results: [{seq, record, segments}], total, terms}. */
  search(query, limit = 50) {
    return this.enqueue(async () => searchRecords(await this.allEntries(), query, limit));
  }

  /** {json, html, count, names: {json, html}} of `room`'s history, oldest first. */
  async exportRoom(room, { exportedAt = this.now(), formatTime, formatDay } = {}) {
    const records = (await this.load(room)).map((e) => e.record);
    return {
      count: records.length,
      json: exportJson({ room, records, exportedAt }),
      html: exportHtml({ room, records, exportedAt, formatTime, formatDay }),
      names: { json: exportFileName(room, "json", exportedAt), html: exportFileName(room, "html", exportedAt) },
    };
  }

  count() {
    return this.enqueue(() => this.db.count());
  }

  // -- retention and clearing -----------------------------------------------------------

  /** Delete what is older than the retention allows; how many went. */
  prune() {
    return this.enqueue(async () => {
      const cutoff = retentionCutoff(this.settings.retentionDays, this.now());
      if (cutoff === null) {
        await this.db.clearMessages();
        return 0;
      }
      return this.db.deleteBefore(cutoff);
    });
  }

  /** Prune now and then while the page stays open (a tab can stay open for weeks). */
  startPruning(setTimer = (fn, ms) => setInterval(fn, ms)) {
    return setTimer(() => this.prune().catch(() => {}), PRUNE_EVERY_MS);
  }

  /** Keep `days` days (0: keep nothing, and delete what is kept). */
  async setRetention(days) {
    await this.enqueue(async () => {
      this.settings = { retentionDays: retentionDays(days) };
      await this.db.setMeta("settings", this.settings);
      if (days === 0) this.forgetPage();
    });
    await this.prune();
    this.announce();
  }

  /**
   * Delete every message kept on this device (all rooms). The passphrase stays set for what
   * is kept from now on, unless it was never opened in this session: then it goes too (that
   * is how someone who forgot it starts over).
   */
  async clear() {
    await this.enqueue(async () => {
      this.forgetPage();
      await this.db.clearMessages();
      if (this.locked) await this.dropLock();
    });
    this.announce();
  }

  /** Our own messages still being sent are not written back after a clear. */
  forgetPage() {
    this.pending = [];
    for (const entry of this.sentByLocalId.values()) entry.dead = true;
  }

  // -- the passphrase lock --------------------------------------------------------------

  /** Set a passphrase: everything kept is sealed under it, and everything kept from now on. */
  async enableLock(passphrase) {
    await this.enqueue(async () => {
      if (this.lock) throw new Error("A passphrase is already set.");
      const { lock, key } = await createLock(passphrase, { iterations: this.iterations });
      // The lock first: a crash before the rows are sealed leaves plain rows that the next
      // unlock seals (afterUnlock); never sealed rows without their lock.
      await this.db.setMeta("lock", lock);
      this.lock = lock;
      this.key = key;
      await this.keeper?.put(lock.id, key);
      await this.sealPlainRows();
    });
    this.announce();
  }

  /** Open the lock for this browser session; throws WrongPassphrase. */
  async unlock(passphrase) {
    await this.enqueue(async () => {
      if (!this.lock) return;
      const key = await openLock(this.lock, passphrase);
      this.key = key;
      await this.keeper?.put(this.lock.id, key);
      await this.afterUnlock();
    });
    this.announce();
  }

  async afterUnlock() {
    await this.sealPlainRows();
    const waiting = this.pending;
    this.pending = [];
    for (const op of waiting) await this.guard(op);
  }

  /** Rows written in plain (another tab, before it heard of the lock): seal them now. */
  async sealPlainRows() {
    const plain = (await this.db.all()).filter((row) => !row.sealed && row.record);
    if (!plain.length) return;
    const sealed = [];
    for (const row of plain) sealed.push(await this.rowFor(row.record, row.seq));
    await this.guard(() => this.db.putAll(sealed));
  }

  /** Remove the passphrase (it is asked again: WrongPassphrase): records are stored readable again. */
  async disableLock(passphrase) {
    await this.enqueue(async () => {
      if (!this.lock) return;
      await openLock(this.lock, passphrase);
      if (!this.key) throw new Error("Unlock the history first.");
      const rows = await this.db.all();
      const entries = await this.entries(rows);
      await this.db.putAll(entries.map(({ seq, record }) => ({ seq, ts: record.ts, room: record.room, record })));
      // A damaged row cannot be opened now or ever: it does not outlive its lock.
      const opened = new Set(entries.map((e) => e.seq));
      for (const row of rows) if (!opened.has(row.seq)) await this.db.remove(row.seq);
      await this.dropLock();
    });
    this.announce();
  }

  async dropLock() {
    await this.db.deleteMeta("lock");
    this.lock = null;
    this.key = null;
    await this.keeper?.forget();
  }

  async changePassphrase(oldPassphrase, newPassphrase) {
    await this.enqueue(async () => {
      const lock = await changePassphrase(this.lock, oldPassphrase, newPassphrase, { iterations: this.iterations });
      await this.db.setMeta("lock", lock);
      this.lock = lock;
    });
    this.announce();
  }

  /** Forget the key in this browser session: the page asks for the passphrase again. */
  async lockNow() {
    await this.enqueue(async () => {
      this.key = null;
      await this.keeper?.forget();
    });
    this.announce("locked");
  }

  announce(type = "changed") {
    this.channel?.postMessage({ type });
  }
}
