// A room's history as files the person takes away: JSON for programs, a self-contained HTML
// page for people. Built in the browser from this device's records; pure (no DOM, no I/O).
// Attachments are listed by reference (name, type, size, blob id) without the key that
// opens them: an export is meant to be read and shared, and a key in it would outlive the file.

export const EXPORT_FORMAT = "securechat-history";
export const EXPORT_VERSION = 1;

const TRUST_WORDS = { new: "first seen", known: "known key", changed: "key changed", self: "you" };

function exportedMessage(record) {
  const out = {
    time: new Date(record.ts).toISOString(),
    ts: record.ts,
    direction: record.kind,
    sender: record.sender,
    fingerprint: record.fingerprint,
    trust: record.trust,
    verified: record.verified,
    text: record.text,
    attachments: (record.attachments ?? []).map(({ id, name, type, size }) => ({ id, name, type, size })),
  };
  if (record.id) out.id = record.id;
  if (record.delivery) out.delivery = { ...record.delivery };
  return out;
}

/** The JSON export of `records` (this room's, oldest first). */
export function exportJson({ room, records, exportedAt }) {
  return `${JSON.stringify({
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    room,
    exported_at: new Date(exportedAt).toISOString(),
    about: "The messages this device sent and received in this room while it kept history. "
      + "Trust and delivery are as they were at the time; nobody else's device is included.",
    messages: records.map(exportedMessage),
  }, null, 2)}\n`;
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

function grouped(fingerprint) {
  return /^[0-9a-f]{64}$/.test(fingerprint) ? fingerprint.match(/.{4}/g).join(" ") : fingerprint;
}

function sizeText(size) {
  if (!Number.isSafeInteger(size)) return "";
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

const STYLE = `
body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #1d232b; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
.about { color: #56606c; margin-top: 0; }
h2 { font-size: .85rem; text-transform: uppercase; letter-spacing: .05em; color: #56606c; margin: 1.6rem 0 .4rem; }
article { border-top: 1px solid #e2e6ea; padding: .45rem 0; }
.head { display: flex; gap: .6rem; align-items: baseline; flex-wrap: wrap; }
.sender { font-weight: 600; }
time { color: #56606c; font-size: .85rem; }
.fp { font: .72rem/1.3 ui-monospace, monospace; color: #56606c; }
.badge { font-size: .75rem; border-radius: .6rem; padding: 0 .45rem; background: #e8eef6; }
.badge.warn { background: #fde8d8; color: #8a3b00; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: .2rem 0 0; }
.files { margin: .2rem 0 0; padding-left: 1.2rem; color: #3a4450; }
@media (prefers-color-scheme: dark) {
  body { background: #14181d; color: #e4e8ec; } article { border-color: #2a3139; }
  .about, h2, time, .fp { color: #9aa5b1; } .badge { background: #24303d; }
  .badge.warn { background: #4a2a12; color: #ffd2b0; } .files { color: #c0c8d0; }
}`;

/**
 * A readable, self-contained HTML page of `records` (oldest first). Every piece of text
 * from the conversation is escaped: nothing in a message is ever markup here either.
 * `formatTime(ts)` / `formatDay(ts)` let the page use the reader's locale; they default to
 * ISO (UTC) so the output is the same everywhere.
 */
export function exportHtml({ room, records, exportedAt,
  formatTime = (ts) => new Date(ts).toISOString().slice(11, 16) + " UTC",
  formatDay = (ts) => new Date(ts).toISOString().slice(0, 10) }) {
  const lines = [];
  let day = null;
  for (const r of records) {
    const thisDay = formatDay(r.ts);
    if (thisDay !== day) {
      day = thisDay;
      lines.push(`<h2>${escapeHtml(day)}</h2>`);
    }
    const badges = [];
    if (r.kind === "sent") {
      const state = r.delivery?.state;
      if (state !== "delivered") badges.push(`<span class="badge warn">not sent${r.delivery?.reason ? `: ${escapeHtml(r.delivery.reason)}` : ""}</span>`);
      if (r.delivery?.withheld?.length) badges.push(`<span class="badge warn">not sent to ${escapeHtml(r.delivery.withheld.join(", "))}</span>`);
    } else {
      if (r.verified) badges.push('<span class="badge">✓ verified</span>');
      if (r.trust === "changed") badges.push('<span class="badge warn">⚠ key changed, not accepted at the time</span>');
      else if (!r.verified && TRUST_WORDS[r.trust]) badges.push(`<span class="badge">${TRUST_WORDS[r.trust]}</span>`);
    }
    const files = (r.attachments ?? []).map((a) => `<li>${escapeHtml(a.name)} (${escapeHtml(a.type)}${a.size === null ? "" : `, ${sizeText(a.size)}`})</li>`);
    lines.push([
      `<article class="${r.kind}">`,
      `<div class="head"><span class="sender">${escapeHtml(r.sender)}</span>`
        + `<time datetime="${new Date(r.ts).toISOString()}">${escapeHtml(formatTime(r.ts))}</time>${badges.join("")}</div>`,
      r.fingerprint ? `<div class="fp">${escapeHtml(grouped(r.fingerprint))}</div>` : "",
      r.text ? `<p class="text">${escapeHtml(r.text)}</p>` : "",
      files.length ? `<ul class="files">${files.join("")}</ul>` : "",
      "</article>",
    ].filter(Boolean).join("\n"));
  }
  const count = `${records.length} message${records.length === 1 ? "" : "s"}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>#${escapeHtml(room)} · securechat history</title>
<style>${STYLE}
</style>
</head>
<body>
<h1>#${escapeHtml(room)}</h1>
<p class="about">securechat history exported from one device on ${escapeHtml(new Date(exportedAt).toISOString().slice(0, 16).replace("T", " "))} UTC: ${count} this device sent or received. Trust and delivery are as they were at the time.</p>
${lines.join("\n")}
</body>
</html>
`;
}

/** "securechat-lobby-2026-12-01.json": room names are already safe in a file name (§ rooms). */
export function exportFileName(room, extension, exportedAt) {
  const safe = String(room).replace(/[^a-z0-9-]/gi, "_").slice(0, 40) || "room";
  return `securechat-${safe}-${new Date(exportedAt).toISOString().slice(0, 10)}.${extension}`;
}
