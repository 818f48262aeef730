// One message as the conversation shows it: sender, time, text (links, Show more), the
// trust marks it arrived with, and for our own messages the quiet delivery line. Shared by the
// live timeline (timeline.js) and the messages kept on this device (earlier.js).

import { button, el, linkify, timeElement } from "./dom.js";

const OUTGOING_TEXT = {
  uploading: "Uploading",
  queued: "Waiting to send",
  sending: "Sending…",
  delivered: "Delivered",
  failed: "Not sent",
};

// Consecutive messages of one person this close together share one name.
export const GROUP_MS = 5 * 60 * 1000;
// Longer than this (in lines, long lines counted by their wrapped length) starts collapsed.
const COLLAPSE_LINES = 40;
const CHARS_PER_LINE = 60;
// How long a message found by search stays marked.
const FOUND_MS = 4000;

function estimatedLines(text) {
  return text.split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / CHARS_PER_LINE)), 0);
}

function textBlock(text) {
  const body = el("p", "text");
  body.append(linkify(text));
  if (estimatedLines(text) <= COLLAPSE_LINES) return [body];
  body.classList.add("collapsed");
  const toggle = button("Show more", "small quiet show-more");
  toggle.setAttribute("aria-expanded", "false");
  toggle.addEventListener("click", () => {
    const open = body.classList.toggle("collapsed") === false;
    toggle.textContent = open ? "Show less" : "Show more";
    toggle.setAttribute("aria-expanded", String(open));
  });
  return [body, toggle];
}

/** The article of one message; `grouped` hides the name under the previous one's; `filesNode`
 * shows its attachments (ui/attachments.js), and a message of files alone has no text line. */
export function messageArticle({ username, ts, text, mine, fingerprint, grouped = false, filesNode = null }) {
  const article = el("article", mine ? "msg mine" : "msg");
  if (fingerprint) article.dataset.fingerprint = fingerprint;
  if (grouped) article.classList.add("grouped");
  const head = el("header", "msg-head");
  head.append(el("span", "sender", username), timeElement(ts));
  article.append(head);
  if (filesNode) article.append(filesNode);
  if (text || !filesNode) article.append(...textBlock(text));
  return article;
}

/** The ✓ Verified badge, or the key-change warning, a received message arrived with. */
export function showTrust(article, { username, trust, verified }) {
  if (verified) article.querySelector(".msg-head").append(el("span", "badge verified", "✓ Verified"));
  if (trust === "changed") {
    article.classList.remove("grouped");
    article.append(el("p", "msg-warning",
      `⚠ ${username}'s key changed. Compare fingerprints before trusting this message.`));
  }
}

/** Our own message's delivery: a line while sending or failed (with Retry), a tick once delivered. */
export function showDelivery(article, { state, reason = null, withheld = [] }, onRetry) {
  let line = article.querySelector(".delivery");
  if (!line) {
    line = el("p", "delivery");
    article.append(line);
  }
  article.dataset.state = state;
  line.replaceChildren(el("span", "delivery-state", OUTGOING_TEXT[state]));
  if (reason) line.append(el("span", "delivery-reason", ` · ${reason}`));
  if (state === "failed") {
    const retry = button("Retry", "small");
    retry.addEventListener("click", () => onRetry());
    line.append(retry);
  }
  // Quiet once delivered: a tick with the details, not a line under every message forever.
  line.classList.toggle("visually-hidden", state === "delivered");
  const head = article.querySelector(".msg-head");
  head.querySelector(".tick")?.remove();
  if (state === "delivered") {
    const tick = el("span", "tick", "✓");
    tick.title = reason ? `Delivered · ${reason}` : "Delivered";
    tick.setAttribute("aria-hidden", "true");
    head.append(tick);
  }
  // Who was left out is always said, where the message is: nothing suggests they got it.
  article.querySelector(".not-sent")?.remove();
  if (withheld.length && state !== "queued") {
    article.append(el("p", "not-sent", `Not sent to ${withheld.join(", ")}`));
  }
}

/** Scroll `article` into the middle of the log, mark it for a moment and move focus to it. */
export function highlight(article) {
  article.tabIndex = -1;
  article.scrollIntoView({ block: "center" });
  article.focus({ preventScroll: true });
  for (const other of article.closest("[role=log]")?.querySelectorAll(".found") ?? []) other.classList.remove("found");
  void article.offsetWidth; // restart the animation when the same message is found twice
  article.classList.add("found");
  setTimeout(() => article.classList.remove("found"), FOUND_MS);
}
