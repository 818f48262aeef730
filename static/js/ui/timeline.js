// The conversation log: day separators, messages grouped by sender, timeline notices, the
// sender's own outgoing messages with a quiet delivery line, the empty state, and the
// New messages button for someone reading older messages.

import { button, dayKey, dayLabel, el, linkify, timeElement, wireCopy } from "./dom.js";

const OUTGOING_TEXT = {
  queued: "Waiting to send",
  sending: "Sending…",
  delivered: "Delivered",
  failed: "Not sent",
};

// Scrolled further than this from the bottom counts as "reading older messages".
const STICKY_PX = 48;
// Consecutive messages of one person this close together share one name.
const GROUP_MS = 5 * 60 * 1000;
// Longer than this (in lines, long lines counted by their wrapped length) starts collapsed.
const COLLAPSE_LINES = 40;
const CHARS_PER_LINE = 60;

function estimatedLines(text) {
  return text.split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / CHARS_PER_LINE)), 0);
}

export function createTimeline(parts, { onUnread = () => {}, roomLink = () => location.href } = {}) {
  const log = parts.messages;
  const outgoing = new Map(); // localId -> article
  let lastDay = null;
  let lastGroup = null; // {who, ts} of the last message, null after anything else
  let unread = 0;
  let alone = true;

  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < STICKY_PX;
  const reading = () => !document.hidden && atBottom();

  function setUnread(n) {
    unread = n;
    parts.jumpNew.hidden = n === 0 || atBottom();
    parts.jumpNew.textContent = n === 1 ? "New messages (1)" : `New messages (${n})`;
    onUnread(n);
  }

  function caughtUp() {
    if (unread && reading()) setUnread(0);
    else parts.jumpNew.hidden = unread === 0 || atBottom();
  }

  log.addEventListener("scroll", caughtUp, { passive: true });
  document.addEventListener("visibilitychange", caughtUp);
  parts.jumpNew.addEventListener("click", () => {
    log.scrollTop = log.scrollHeight;
    setUnread(0);
    log.focus({ preventScroll: true });
  });

  function dayFor(ts) {
    const key = dayKey(ts);
    if (key === lastDay) return;
    lastDay = key;
    lastGroup = null;
    const divider = el("h3", "day-divider");
    divider.append(el("span", "", dayLabel(ts)));
    log.append(divider);
  }

  function append(node, { ts = Date.now(), counts = false } = {}) {
    const follow = atBottom();
    dayFor(ts);
    log.append(node);
    updateEmpty();
    if (follow) log.scrollTop = log.scrollHeight;
    if (counts && !(follow && !document.hidden)) setUnread(unread + 1);
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

  function messageArticle({ username, ts, text, mine, fingerprint }) {
    const article = el("article", mine ? "msg mine" : "msg");
    if (fingerprint) article.dataset.fingerprint = fingerprint;
    const who = mine ? "\u0000me" : `${fingerprint} ${username}`;
    if (lastGroup && lastGroup.who === who && ts - lastGroup.ts < GROUP_MS && dayKey(ts) === lastDay) {
      article.classList.add("grouped");
    }
    lastGroup = { who, ts };
    const head = el("header", "msg-head");
    head.append(el("span", "sender", username), timeElement(ts));
    article.append(head, ...textBlock(text));
    return article;
  }

  function notice(text, className = "log-notice") {
    lastGroup = null;
    const line = el("p", className, text);
    line.setAttribute("role", "note");
    return line;
  }

  // -- the empty state -------------------------------------------------------------------

  function updateEmpty() {
    const empty = log.querySelector("article") === null;
    parts.emptyState.hidden = !empty;
    if (!empty) return;
    parts.emptyTitle.textContent = alone ? "You are the only one here" : "No messages yet";
    parts.emptyBody.textContent = alone
      ? "Share this room's address with the people you want to talk to:"
      : "Say hello. Messages are encrypted on this device before they leave it.";
    parts.emptyShare.hidden = !alone;
    const link = roomLink();
    parts.roomLink.textContent = link;
    parts.roomLink.href = link;
    const host = new URL(link).hostname;
    parts.loopbackHint.hidden = !(host === "localhost" || host === "[::1]" || host.startsWith("127."));
  }
  wireCopy(parts.copyLink, () => parts.roomLink.href);

  return {
    setAlone(value) {
      alone = value;
      updateEmpty();
    },

    showWithheld(names) {
      parts.withheld.hidden = names.length === 0;
      parts.withheld.textContent = names.length
        ? `Not sent to: ${names.join(", ")} (key not accepted or not verifiable).` : "";
    },

    addMessage({ username, fingerprint, ts, text, trust, verified }) {
      dayFor(ts);
      const article = messageArticle({ username, ts, text, fingerprint });
      if (verified) article.querySelector(".msg-head").append(el("span", "badge verified", "✓ Verified"));
      if (trust === "changed") {
        article.classList.remove("grouped");
        article.append(el("p", "msg-warning",
          `⚠ ${username}'s key changed. Compare fingerprints before trusting this message.`));
      }
      append(article, { ts, counts: true });
    },

    /** The key of `fingerprint` was accepted or verified: update its messages in place. */
    applyTrust({ fingerprint, trust }) {
      if (trust === "changed") return;
      for (const article of log.querySelectorAll("article.msg")) {
        if (article.dataset.fingerprint === fingerprint) article.querySelector(".msg-warning")?.remove();
      }
    },

    addWarning(text) {
      append(notice(text, "log-warning"));
    },

    addNotice(text) {
      append(notice(text));
    },

    /** joined / left, between the messages where it happened. */
    addPresence({ change, username }) {
      append(notice(change === "joined" ? `${username} joined` : `${username} left`, "log-notice presence"));
    },

    /** Stays in the timeline after the new key is accepted: it is part of what happened. */
    addKeyChange({ username }) {
      append(notice(`⚠ ${username}'s key changed. Compare fingerprints with ${username} before you trust new messages.`,
        "log-notice key-change"));
    },

    upsertOutgoing({ localId, text, ts, state, reason, withheld = [] }, username, onRetry) {
      let article = outgoing.get(localId);
      if (!article) {
        dayFor(ts);
        article = messageArticle({ username, ts, text, mine: true });
        article.append(el("p", "delivery"));
        outgoing.set(localId, article);
        append(article, { ts });
      }
      article.dataset.state = state;
      const line = article.querySelector(".delivery");
      line.replaceChildren(el("span", "delivery-state", OUTGOING_TEXT[state]));
      if (reason) line.append(el("span", "delivery-reason", ` · ${reason}`));
      if (state === "failed") {
        const retry = button("Retry", "small");
        retry.addEventListener("click", () => onRetry(localId));
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
      if (state === "delivered") outgoing.delete(localId);
    },

    get unread() {
      return unread;
    },
  };
}
