// What this device keeps of a conversation, as plain data: the record of a message sent or
// received (with the sender's trust state as it was then), retention, and search. Pure: no
// IndexedDB, no DOM, no clock of its own; node tests drive it directly.

export const RECORD_VERSION = 1;

const DAY_MS = 24 * 60 * 60 * 1000;
/** The retention choices offered, in days; 0 means "don't keep". */
export const RETENTION_CHOICES = [0, 1, 7, 30, 90, 365];
/**
 * A month: long enough to scroll back to last week's decisions after a reload or a restart,
 * short enough that a lost or shared device holds weeks, not years, of conversation.
 * (docs/THREAT-MODEL.md, "History on this device", gives the reasoning.)
 */
export const DEFAULT_RETENTION_DAYS = 30;

// A message still waiting for the server's confirmation when the page closed never gets one.
export const UNCONFIRMED_REASON = "The page closed before the server confirmed it; it may or may not have arrived.";
const FINAL_STATES = new Set(["delivered", "failed"]);
const DELIVERY_STATES = new Set(["queued", "sending", "delivered", "failed"]);
const TRUST_STATES = new Set(["new", "known", "changed", "self"]);

const str = (value, fallback = "") => (typeof value === "string" ? value : fallback);
const time = (value, fallback) => (Number.isSafeInteger(value) ? value : fallback);
const names = (list) => (Array.isArray(list) ? list.filter((n) => typeof n === "string") : []);

/**
 * Attachment references only (blob id, name, type, size, the key that opens the blob):
 * never file bytes. Whatever shape the message carries, unknown fields are dropped.
 */
export function attachmentRefs(list) {
  if (!Array.isArray(list)) return [];
  return list.filter((f) => f && typeof f === "object" && typeof f.id === "string").map((f) => {
    const ref = { id: f.id, name: str(f.name, "file"), type: str(f.type, "application/octet-stream"),
      size: Number.isSafeInteger(f.size) ? f.size : null };
    if (typeof f.key === "string") ref.key = f.key;
    for (const dim of ["width", "height"]) if (Number.isSafeInteger(f[dim])) ref[dim] = f[dim];
    return ref;
  });
}

/** A message chat.js accepted (its `message` event), as kept for `room`. */
export function receivedRecord(room, m, now) {
  return {
    v: RECORD_VERSION, kind: "received", room: String(room),
    id: str(m.id, null), ts: time(m.ts, now),
    sender: str(m.username, "someone"), fingerprint: str(m.fingerprint),
    trust: TRUST_STATES.has(m.trust) ? m.trust : "new", verified: m.verified === true,
    text: str(m.text), attachments: attachmentRefs(m.files ?? m.attachments),
  };
}

/** One of our own messages (chat.js `outgoing` event), sent as `me` {username, fingerprint}. */
export function sentRecord(room, o, me, now) {
  return {
    v: RECORD_VERSION, kind: "sent", room: String(room),
    id: null, localId: str(o.localId, null), ts: time(o.ts, now),
    sender: str(me?.username, "you"), fingerprint: str(me?.fingerprint),
    trust: "self", verified: false,
    text: str(o.text), attachments: attachmentRefs(o.files ?? o.attachments),
    delivery: delivery(o),
  };
}

function delivery(o) {
  return { state: DELIVERY_STATES.has(o.state) ? o.state : "queued",
    reason: str(o.reason, null), withheld: names(o.withheld) };
}

/** The same sent record after a later `outgoing` event for it (delivered, failed, …). */
export function withDelivery(record, o) {
  return { ...record, delivery: delivery(o) };
}

/**
 * A record as it reads after a reload: a message that was still queued or sending is gone
 * from the outbox with the page, so it shows as not sent (with Retry), never "Sending…".
 */
export function asReloaded(record) {
  if (record.kind !== "sent" || FINAL_STATES.has(record.delivery?.state)) return record;
  return { ...record, delivery: { ...record.delivery, state: "failed", reason: UNCONFIRMED_REASON } };
}

// -- retention ----------------------------------------------------------------------------

/** A valid retention in days (one of the choices), or the default. */
export function retentionDays(value) {
  return RETENTION_CHOICES.includes(value) ? value : DEFAULT_RETENTION_DAYS;
}

/** Records with a time before this are deleted; null when nothing may be kept at all. */
export function retentionCutoff(days, now) {
  const kept = retentionDays(days);
  return kept === 0 ? null : now - kept * DAY_MS;
}

export function retentionLabel(days) {
  if (days === 0) return "Don't keep";
  if (days === 1) return "1 day";
  if (days === 365) return "1 year";
  return `${days} days`;
}

// -- search -------------------------------------------------------------------------------

/**
 * How search compares text: compatibility-decomposed, combining marks dropped, lowercased,
 * so "cafe" finds "Café" and "ＡＢＣ" finds "abc". Returns the folded text and, for each of
 * its UTF-16 units, where in `text` the character it came from starts and ends.
 */
export function foldWithMap(text) {
  let folded = "";
  const starts = [];
  const ends = [];
  let index = 0;
  for (const ch of text) {
    const part = ch.normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase();
    folded += part;
    for (let i = 0; i < part.length; i += 1) {
      starts.push(index);
      ends.push(index + ch.length);
    }
    index += ch.length;
  }
  return { folded, starts, ends };
}

export function fold(text) {
  return foldWithMap(text).folded;
}

/** The words of a query, folded, each at most once (empty: no search). */
export function searchTerms(query) {
  const terms = fold(String(query ?? "")).split(/\s+/u).filter(Boolean);
  return [...new Set(terms)].slice(0, 16);
}

/** Every term is in the text, the sender's name or an attachment's name. */
export function matches(record, terms) {
  if (!terms.length) return false;
  const haystack = fold([record.text, record.sender, ...(record.attachments ?? []).map((a) => a.name)].join("\n"));
  return terms.every((term) => haystack.includes(term));
}

/**
 * A short excerpt of `text` around the first hit, as segments {text, hit} for the UI to
 * render (hits as <mark>, everything as text). `width` is roughly the excerpt's length.
 */
export function snippet(text, terms, width = 90) {
  const { folded, starts, ends } = foldWithMap(text);
  const ranges = [];
  for (const term of terms) {
    for (let at = folded.indexOf(term); at !== -1; at = folded.indexOf(term, at + term.length)) {
      ranges.push([starts[at], ends[at + term.length - 1]]);
      if (ranges.length > 200) break;
    }
  }
  ranges.sort((a, b) => a[0] - b[0]);
  const merged = [];
  for (const range of ranges) {
    const last = merged[merged.length - 1];
    if (last && range[0] <= last[1]) last[1] = Math.max(last[1], range[1]);
    else merged.push([...range]);
  }
  let start = 0;
  let end = text.length;
  if (text.length > width) {
    const first = merged[0]?.[0] ?? 0;
    start = Math.max(0, first - Math.floor(width / 3));
    end = Math.min(text.length, start + width);
    start = Math.max(0, Math.min(start, end - width));
    // Never cut an emoji (a surrogate pair) in half.
    if (/[\udc00-\udfff]/.test(text[start] ?? "")) start -= 1;
    if (/[\ud800-\udbff]/.test(text[end - 1] ?? "")) end += 1;
  }
  const segments = [];
  let at = start;
  for (const [from, to] of merged) {
    if (to <= start || from >= end) continue;
    const a = Math.max(from, start);
    const b = Math.min(to, end);
    if (a > at) segments.push({ text: text.slice(at, a), hit: false });
    segments.push({ text: text.slice(a, b), hit: true });
    at = b;
  }
  if (at < end) segments.push({ text: text.slice(at, end), hit: false });
  if (start > 0) segments.unshift({ text: "…", hit: false });
  if (end < text.length) segments.push({ text: "…", hit: false });
  // Line breaks read as spaces in a one-line excerpt (collapsed after cutting: offsets stay right).
  return segments.map((s) => ({ ...s, text: s.text.replace(/\s+/g, " ") })).filter((s) => s.text);
}

/**
 * Search `records` (each {seq, record}) for `query`: newest first, at most `limit`.
 * Returns {results: [{seq, record, segments}], total}.
 */
export function searchRecords(entries, query, limit = 50) {
  const terms = searchTerms(query);
  if (!terms.length) return { results: [], total: 0, terms };
  const hits = entries.filter((e) => matches(e.record, terms))
    .sort((a, b) => b.record.ts - a.record.ts || b.seq - a.seq);
  return {
    total: hits.length,
    terms,
    results: hits.slice(0, limit).map((e) => ({ ...e, segments: snippet(e.record.text, terms) })),
  };
}
