// static/js/history/: the records, retention, search, export and the passphrase seal, and the
// History that composes them over the in-memory backend (IndexedDB itself is exercised in
// Chromium by tests/browser/test_history.py).
import { test } from "node:test";
import assert from "node:assert/strict";

import * as r from "../../static/js/history/records.js";
import { escapeHtml, exportFileName, exportHtml, exportJson } from "../../static/js/history/export.js";
import * as s from "../../static/js/history/seal.js";
import { memoryHistoryDb, QuotaError } from "../../static/js/history/db.js";
import { History } from "../../static/js/history/history.js";

const DAY = 24 * 60 * 60 * 1000;
const NOW = Date.UTC(2026, 11, 1, 12, 0, 0);
const FP_A = "a".repeat(64);
const FP_B = "b".repeat(64);
const FAST = 1000; // PBKDF2 iterations for tests of behaviour; one test runs the real count

const incoming = (over = {}) => ({ id: "m1", sid: "s1", username: "bob", fingerprint: FP_B, ts: NOW - 1000,
  text: "hello there", trust: "known", verified: true, ...over });
const outgoing = (over = {}) => ({ localId: "out-1", text: "hi bob", ts: NOW - 500, state: "queued", reason: null,
  withheld: [], ...over });
const me = { username: "alice", fingerprint: FP_A };

// -- records ----------------------------------------------------------------------------------

test("a received message keeps text, sender, fingerprint, trust at the time and time", () => {
  const rec = r.receivedRecord("lobby", incoming({ trust: "changed", verified: false }), NOW);
  assert.deepEqual(rec, { v: 1, kind: "received", room: "lobby", id: "m1", ts: NOW - 1000, sender: "bob",
    fingerprint: FP_B, trust: "changed", verified: false, text: "hello there", attachments: [] });
});

test("odd values from an event never become odd records", () => {
  const rec = r.receivedRecord("lobby", { username: 5, ts: "soon", trust: "owner", verified: "yes", text: null }, NOW);
  assert.equal(rec.sender, "someone");
  assert.equal(rec.ts, NOW);
  assert.equal(rec.trust, "new");
  assert.equal(rec.verified, false);
  assert.equal(rec.text, "");
});

test("attachments are kept as references: id, name, type, size, key; nothing else", () => {
  const files = [{ id: "f".repeat(64), key: "k", name: "plan.pdf", type: "application/pdf", size: 1200,
    bytes: new Uint8Array(3), width: "x" }, { name: "no id" }, null];
  assert.deepEqual(r.attachmentRefs(files), [{ id: "f".repeat(64), name: "plan.pdf", type: "application/pdf",
    size: 1200, key: "k" }]);
  assert.equal(r.receivedRecord("lobby", incoming({ files }), NOW).attachments.length, 1);
});

test("a sent message keeps its delivery state and who it was withheld from", () => {
  const rec = r.sentRecord("lobby", outgoing(), me, NOW);
  assert.equal(rec.kind, "sent");
  assert.equal(rec.sender, "alice");
  assert.equal(rec.trust, "self");
  assert.deepEqual(rec.delivery, { state: "queued", reason: null, withheld: [] });
  const later = r.withDelivery(rec, outgoing({ state: "delivered", reason: "to 1 other", withheld: ["carol"] }));
  assert.deepEqual(later.delivery, { state: "delivered", reason: "to 1 other", withheld: ["carol"] });
  assert.equal(later.text, "hi bob");
});

test("after a reload a message that never got its confirmation reads as not sent", () => {
  for (const state of ["queued", "sending"]) {
    const rec = r.asReloaded(r.sentRecord("lobby", outgoing({ state }), me, NOW));
    assert.equal(rec.delivery.state, "failed");
    assert.equal(rec.delivery.reason, r.UNCONFIRMED_REASON);
  }
  const delivered = r.sentRecord("lobby", outgoing({ state: "delivered" }), me, NOW);
  assert.equal(r.asReloaded(delivered), delivered);
  const received = r.receivedRecord("lobby", incoming(), NOW);
  assert.equal(r.asReloaded(received), received);
});

test("retention: the default is 30 days; 0 keeps nothing; unknown values fall back", () => {
  assert.equal(r.DEFAULT_RETENTION_DAYS, 30);
  assert.ok(r.RETENTION_CHOICES.includes(r.DEFAULT_RETENTION_DAYS));
  assert.equal(r.retentionCutoff(30, NOW), NOW - 30 * DAY);
  assert.equal(r.retentionCutoff(1, NOW), NOW - DAY);
  assert.equal(r.retentionCutoff(0, NOW), null);
  assert.equal(r.retentionDays(12), 30);
  assert.equal(r.retentionDays("7"), 30);
  assert.equal(r.retentionLabel(0), "Don't keep");
  assert.equal(r.retentionLabel(365), "1 year");
});

// -- search -----------------------------------------------------------------------------------

test("search folds case, accents and width", () => {
  assert.deepEqual(r.searchTerms("  Café  ＡＢＣ café "), ["cafe", "abc"]);
  const rec = r.receivedRecord("lobby", incoming({ text: "Meet at the CAFÉ at noon" }), NOW);
  assert.ok(r.matches(rec, r.searchTerms("cafe noon")));
  assert.ok(r.matches(rec, r.searchTerms("BOB cafe")), "the sender's name counts");
  assert.ok(!r.matches(rec, r.searchTerms("cafe midnight")), "every word must be there");
  assert.ok(!r.matches(rec, []), "an empty query finds nothing");
});

test("snippets mark every hit in the original text, even where folding changes lengths", () => {
  const segments = r.snippet("Ligature: ﬁne Café, and cafe again", r.searchTerms("cafe fine"));
  assert.deepEqual(segments.filter((x) => x.hit).map((x) => x.text), ["ﬁ" + "ne", "Café", "cafe"]);
  assert.equal(segments.map((x) => x.text).join(""), "Ligature: ﬁne Café, and cafe again");
});

test("a long message's snippet is cut around the first hit, with ellipses", () => {
  const text = `${"a ".repeat(200)}needle ${"b ".repeat(200)}`;
  const segments = r.snippet(text, ["needle"], 60);
  assert.equal(segments[0].text, "…");
  assert.equal(segments[segments.length - 1].text, "…");
  assert.ok(segments.some((x) => x.hit && x.text === "needle"));
  assert.ok(segments.map((x) => x.text).join("").length < 80);
});

test("snippets never cut an emoji in half", () => {
  const text = `${"😀".repeat(60)}needle${"😀".repeat(60)}`;
  for (const seg of r.snippet(text, ["needle"], 41)) assert.equal(seg.text, seg.text.toWellFormed());
});

test("searchRecords: newest first, limited, with the total", () => {
  const entries = [1, 2, 3].map((n) => ({ seq: n, record: r.receivedRecord("lobby", incoming({ text: `lunch ${n}`, ts: NOW + n }), NOW) }));
  const { results, total } = r.searchRecords(entries, "lunch", 2);
  assert.equal(total, 3);
  assert.deepEqual(results.map((x) => x.seq), [3, 2]);
});

// -- export -----------------------------------------------------------------------------------

test("the JSON export lists exactly the records given, with trust and delivery", () => {
  const records = [r.receivedRecord("lobby", incoming(), NOW), r.sentRecord("lobby", outgoing({ state: "delivered" }), me, NOW)];
  const parsed = JSON.parse(exportJson({ room: "lobby", records, exportedAt: NOW }));
  assert.equal(parsed.format, "securechat-history");
  assert.equal(parsed.room, "lobby");
  assert.equal(parsed.exported_at, new Date(NOW).toISOString());
  assert.deepEqual(parsed.messages.map((m) => [m.direction, m.sender, m.text]),
    [["received", "bob", "hello there"], ["sent", "alice", "hi bob"]]);
  assert.equal(parsed.messages[0].verified, true);
  assert.equal(parsed.messages[1].delivery.state, "delivered");
});

test("exports name attachments but never carry the key that opens them", () => {
  const files = [{ id: "f".repeat(64), key: "SECRETKEY", name: "plan.pdf", type: "application/pdf", size: 2048 }];
  const records = [r.receivedRecord("lobby", incoming({ files }), NOW)];
  const json = exportJson({ room: "lobby", records, exportedAt: NOW });
  const html = exportHtml({ room: "lobby", records, exportedAt: NOW });
  assert.ok(!json.includes("SECRETKEY") && !html.includes("SECRETKEY"));
  assert.ok(json.includes("plan.pdf") && html.includes("plan.pdf (application/pdf, 2.0 KiB)"));
});

test("the HTML export escapes every piece of the conversation", () => {
  const records = [r.receivedRecord("lobby", incoming({ username: "<b>bob</b>", text: `<script>alert("x")</script> & 'q'` }), NOW)];
  const html = exportHtml({ room: "lobby", records, exportedAt: NOW });
  assert.ok(!html.includes("<script>"));
  assert.ok(html.includes("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;"));
  assert.ok(html.includes("&lt;b&gt;bob&lt;/b&gt;"));
  assert.ok(html.includes("default-src 'none'"), "the file itself runs nothing");
  assert.equal(escapeHtml(`<&>"'`), "&lt;&amp;&gt;&quot;&#39;");
});

test("the HTML export says what was not sent and what came from a changed key", () => {
  const records = [
    r.receivedRecord("lobby", incoming({ trust: "changed", verified: false }), NOW),
    r.sentRecord("lobby", outgoing({ state: "failed", reason: "Too many", withheld: ["carol"] }), me, NOW),
  ];
  const html = exportHtml({ room: "lobby", records, exportedAt: NOW });
  assert.match(html, /key changed, not accepted at the time/);
  assert.match(html, /not sent: Too many/);
  assert.match(html, /not sent to carol/);
  assert.match(html, /2 messages this device sent or received/);
});

test("export file names carry the room and the day", () => {
  assert.equal(exportFileName("design-team", "json", NOW), "securechat-design-team-2026-12-01.json");
  assert.equal(exportFileName("../../etc", "html", NOW), "securechat-______etc-2026-12-01.html");
});

// -- seal -------------------------------------------------------------------------------------

test("a record sealed under the lock opens only with its key and its time", async () => {
  const { lock, key } = await s.createLock("correct horse battery", { iterations: FAST });
  assert.equal(key.extractable, false, "the data key can be used, never read");
  assert.deepEqual(key.usages.sort(), ["decrypt", "encrypt"]);
  assert.equal(lock.salt.length, s.SALT_BYTES);
  const rec = r.receivedRecord("lobby", incoming(), NOW);
  const sealed = await s.seal(key, rec, rec.ts);
  assert.ok(!new TextDecoder().decode(sealed.data).includes("hello"));
  assert.deepEqual(await s.unseal(key, sealed, rec.ts), rec);
  await assert.rejects(s.unseal(key, sealed, rec.ts + 1), "the time is bound to the record");
  const other = await s.createLock("correct horse battery", { iterations: FAST });
  await assert.rejects(s.unseal(other.key, sealed, rec.ts), "the same passphrase with another salt is another key");
});

test("a wrong passphrase opens nothing; the right one opens the same key", async () => {
  const { lock, key } = await s.createLock("correct horse battery", { iterations: FAST });
  await assert.rejects(s.openLock(lock, "correct horse batterY"), s.WrongPassphrase);
  const again = await s.openLock(lock, "correct horse battery");
  const sealed = await s.seal(key, { x: 1 }, 5);
  assert.deepEqual(await s.unseal(again, sealed, 5), { x: 1 });
});

test("the passphrase is compared in NFC: é typed either way opens the lock", async () => {
  const { lock } = await s.createLock("caf\u00e9 au lait", { iterations: FAST });
  await s.openLock(lock, "cafe\u0301 au lait");
});

test("changing the passphrase keeps the data key and drops the old passphrase", async () => {
  const { lock, key } = await s.createLock("first passphrase", { iterations: FAST });
  const sealed = await s.seal(key, { x: 2 }, 7);
  const moved = await s.changePassphrase(lock, "first passphrase", "second passphrase");
  assert.notDeepEqual(moved.salt, lock.salt);
  await assert.rejects(s.openLock(moved, "first passphrase"), s.WrongPassphrase);
  assert.deepEqual(await s.unseal(await s.openLock(moved, "second passphrase"), sealed, 7), { x: 2 });
  await assert.rejects(s.changePassphrase(lock, "wrong one!", "x".repeat(9)), s.WrongPassphrase);
});

test("the real lock uses PBKDF2-SHA-256 with 600,000 iterations and a random salt", async () => {
  assert.equal(s.PBKDF2_ITERATIONS, 600000);
  const { lock } = await s.createLock("correct horse battery");
  assert.equal(lock.iterations, 600000);
  assert.equal(lock.kdf, "PBKDF2-SHA-256");
  const { lock: second } = await s.createLock("correct horse battery", { iterations: FAST });
  assert.notDeepEqual(lock.salt, second.salt);
});

test("passphrases shorter than 8 characters are refused with a reason", () => {
  assert.match(s.passphraseProblem("short"), /at least 8/);
  assert.equal(s.passphraseProblem("long enough"), null);
});

// -- History over the in-memory backend -------------------------------------------------------

function memoryKeeper() {
  let held = null;
  return {
    async get(id) { return held?.id === id ? held.key : null; },
    async put(id, key) { held = { id, key }; },
    async forget() { held = null; },
    release() {},
  };
}

async function history({ db: dbOptions, ...options } = {}) {
  let now = NOW;
  const problems = [];
  const h = await new History({ db: memoryHistoryDb(dbOptions), iterations: FAST, now: () => now,
    onProblem: (p) => problems.push(p), ...options }).open();
  return { h, problems, setNow: (t) => { now = t; } };
}

test("received and sent messages come back per room, in the order they happened", async () => {
  const { h } = await history();
  await h.received("lobby", incoming());
  await h.sent("lobby", outgoing(), me);
  await h.received("design", incoming({ text: "other room" }));
  await h.sent("lobby", outgoing({ state: "delivered", reason: "to 1 other" }), me);
  const lobby = await h.load("lobby");
  assert.deepEqual(lobby.map((e) => e.record.text), ["hello there", "hi bob"]);
  assert.equal(lobby[1].record.delivery.state, "delivered", "the update replaced the record, not added one");
  assert.deepEqual((await h.load("design")).map((e) => e.record.text), ["other room"]);
  assert.equal(await h.count(), 3);
});

test("what this page wrote itself can be left out of what it shows as earlier", async () => {
  const { h } = await history();
  await h.db.add({ ts: NOW - 5000, room: "lobby", record: r.receivedRecord("lobby", incoming({ text: "from before" }), NOW) });
  await h.received("lobby", incoming({ text: "live here" }));
  await h.sent("lobby", outgoing({ text: "mine, live" }), me);
  assert.deepEqual((await h.load("lobby")).map((e) => e.record.text), ["from before", "live here", "mine, live"]);
  const earlier = await h.load("lobby", { thisPage: false });
  assert.deepEqual(earlier.map((e) => e.record.text), ["from before"]);
  assert.equal(h.isFromThisPage(earlier[0].seq), false);
  assert.equal(h.isFromThisPage(earlier[0].seq + 1), true);
});

test("retention prunes old records and 'don't keep' keeps nothing", async () => {
  const { h, setNow } = await history();
  await h.received("lobby", incoming({ ts: NOW - 40 * DAY, text: "old" }));
  await h.received("lobby", incoming({ ts: NOW - 2 * DAY, text: "recent" }));
  assert.equal(await h.prune(), 1);
  assert.deepEqual((await h.load("lobby")).map((e) => e.record.text), ["recent"]);
  await h.setRetention(1);
  assert.equal(await h.count(), 0);
  setNow(NOW);
  await h.setRetention(0);
  await h.received("lobby", incoming());
  await h.sent("lobby", outgoing(), me);
  assert.equal(await h.count(), 0, "nothing is written while history is off");
});

test("an open page prunes every hour", async () => {
  const { h, setNow } = await history();
  let tick = null;
  let every = null;
  h.startPruning((fn, ms) => { tick = fn; every = ms; });
  assert.equal(every, 60 * 60 * 1000);
  await h.received("lobby", incoming({ ts: NOW - 29 * DAY }));
  setNow(NOW + 2 * DAY);
  tick();
  await h.count();
  assert.equal(await h.count(), 0);
});

test("clear removes every room's records and ignores later news of messages in flight", async () => {
  const { h } = await history();
  await h.received("lobby", incoming());
  await h.received("design", incoming());
  await h.sent("lobby", outgoing({ state: "sending" }), me);
  await h.clear();
  assert.equal(await h.count(), 0);
  await h.sent("lobby", outgoing({ state: "delivered" }), me);
  assert.equal(await h.count(), 0, "a message cleared while sending is not written back");
  await h.sent("lobby", outgoing({ localId: "out-2", text: "after" }), me);
  assert.equal(await h.count(), 1);
});

test("with a passphrase the stored rows are ciphertext and name no room", async () => {
  const { h } = await history({ keeper: memoryKeeper() });
  await h.received("lobby", incoming({ text: "before the lock" }));
  await h.enableLock("correct horse battery");
  await h.received("lobby", incoming({ id: "m2", text: "after the lock" }));
  const rows = await h.db.all();
  assert.equal(rows.length, 2);
  for (const row of rows) {
    assert.equal(row.room, undefined);
    assert.equal(row.record, undefined);
    assert.ok(row.sealed.data instanceof Uint8Array);
    assert.ok(!JSON.stringify([...row.sealed.data]).includes("lock"));
  }
  assert.deepEqual((await h.load("lobby")).map((e) => e.record.text), ["before the lock", "after the lock"]);
});

test("a new page with the lock set and no key reads nothing until the right passphrase", async () => {
  const { h } = await history();
  await h.received("lobby", incoming({ text: "secret plans" }));
  await h.enableLock("correct horse battery");
  const later = await new History({ db: h.db, iterations: FAST, now: () => NOW }).open();
  assert.equal(later.locked, true);
  assert.deepEqual(await later.load("lobby"), []);
  assert.deepEqual((await later.search("secret")).results, []);
  await assert.rejects(later.unlock("wrong passphrase"), s.WrongPassphrase);
  assert.equal(later.locked, true);
  assert.deepEqual(await later.load("lobby"), []);
  await later.unlock("correct horse battery");
  assert.deepEqual((await later.load("lobby")).map((e) => e.record.text), ["secret plans"]);
});

test("messages that arrive while locked are written, sealed, once unlocked", async () => {
  const { h } = await history();
  await h.enableLock("correct horse battery");
  const later = await new History({ db: h.db, iterations: FAST, now: () => NOW }).open();
  await later.received("lobby", incoming({ text: "while locked" }));
  assert.equal(await later.count(), 0);
  await later.unlock("correct horse battery");
  assert.equal(await later.count(), 1);
  assert.ok((await later.db.all())[0].sealed);
});

test("the session keeper spares a reload the passphrase; lockNow forgets it", async () => {
  const keeper = memoryKeeper();
  const { h } = await history({ keeper });
  await h.enableLock("correct horse battery");
  const reloaded = await new History({ db: h.db, keeper, iterations: FAST, now: () => NOW }).open();
  assert.equal(reloaded.locked, false);
  await reloaded.lockNow();
  const again = await new History({ db: h.db, keeper, iterations: FAST, now: () => NOW }).open();
  assert.equal(again.locked, true);
});

test("removing the passphrase stores the records readable again", async () => {
  const { h } = await history();
  await h.received("lobby", incoming());
  await h.enableLock("correct horse battery");
  await assert.rejects(h.disableLock("not the passphrase"), s.WrongPassphrase);
  assert.equal(h.hasLock, true);
  await h.disableLock("correct horse battery");
  assert.equal(h.hasLock, false);
  const [row] = await h.db.all();
  assert.equal(row.room, "lobby");
  assert.equal(row.record.text, "hello there");
});

test("clearing while locked (a forgotten passphrase) removes the lock too", async () => {
  const { h } = await history();
  await h.received("lobby", incoming());
  await h.enableLock("correct horse battery");
  const later = await new History({ db: h.db, iterations: FAST, now: () => NOW }).open();
  await later.clear();
  assert.equal(later.hasLock, false);
  assert.equal(await later.count(), 0);
  assert.equal(await later.db.getMeta("lock"), null);
});

test("clearing while unlocked keeps the passphrase for what is kept next", async () => {
  const { h } = await history();
  await h.enableLock("correct horse battery");
  await h.clear();
  assert.equal(h.hasLock, true);
  await h.received("lobby", incoming());
  assert.ok((await h.db.all())[0].sealed);
});

test("search spans rooms; reloaded unsent messages read as not sent", async () => {
  const { h } = await history();
  await h.received("lobby", incoming({ text: "the launch is friday" }));
  await h.received("design", incoming({ text: "launch colours" }));
  await h.sent("lobby", outgoing({ text: "launch!", state: "sending" }), me);
  const { results, total } = await h.search("launch");
  assert.equal(total, 3);
  assert.deepEqual(new Set(results.map((x) => x.record.room)), new Set(["lobby", "design"]));
  const reloaded = await new History({ db: h.db, now: () => NOW }).open();
  const sent = (await reloaded.load("lobby")).find((e) => e.record.kind === "sent");
  assert.equal(sent.record.delivery.state, "failed");
  const live = (await h.load("lobby")).find((e) => e.record.kind === "sent");
  assert.equal(live.record.delivery.state, "sending", "this page's own messages in flight stay live");
});

test("exportRoom contains exactly that room's messages", async () => {
  const { h } = await history();
  await h.received("lobby", incoming({ text: "in lobby" }));
  await h.received("design", incoming({ text: "in design" }));
  await h.sent("lobby", outgoing({ text: "mine in lobby", state: "delivered" }), me);
  const out = await h.exportRoom("lobby");
  assert.equal(out.count, 2);
  assert.deepEqual(JSON.parse(out.json).messages.map((m) => m.text), ["in lobby", "mine in lobby"]);
  assert.ok(out.html.includes("in lobby") && !out.html.includes("in design"));
  assert.equal(out.names.json, "securechat-lobby-2026-12-01.json");
});

test("a quota refusal is reported once and chatting code never sees an exception", async () => {
  const { h, problems } = await history({ db: { quotaRows: 1 } });
  await h.received("lobby", incoming({ text: "fits" }));
  await h.received("lobby", incoming({ text: "refused" }));
  await h.received("lobby", incoming({ text: "refused too" }));
  assert.deepEqual(problems.map((p) => p.kind), ["quota"]);
  assert.match(problems[0].message, /refused to store/);
  assert.equal(await h.count(), 1);
  assert.ok(new QuotaError() instanceof Error);
});

test("another tab's announcement re-reads the lock and the settings", async () => {
  const a = new BroadcastChannel("history-test");
  const b = new BroadcastChannel("history-test");
  const keeper = memoryKeeper();
  const db = memoryHistoryDb();
  let changed = 0;
  const one = await new History({ db, keeper, channel: a, iterations: FAST, now: () => NOW }).open();
  const two = await new History({ db, keeper, channel: b, iterations: FAST, now: () => NOW,
    onChange: () => { changed += 1; } }).open();
  await one.enableLock("correct horse battery");
  await one.setRetention(7);
  await new Promise((resolve) => setTimeout(resolve, 50));
  await two.count(); // after the queued refreshes
  assert.ok(changed >= 2);
  assert.equal(two.hasLock, true);
  assert.equal(two.locked, false, "the key came from the session keeper");
  assert.equal(two.retentionDays, 7);
  await two.received("lobby", incoming());
  assert.ok((await db.all())[0].sealed, "the other tab now writes sealed rows");
  await one.lockNow();
  await new Promise((resolve) => setTimeout(resolve, 50));
  await two.count();
  assert.equal(two.locked, true);
  a.close();
  b.close();
});
