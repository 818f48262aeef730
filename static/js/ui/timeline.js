// The conversation log: day separators, messages grouped by sender, timeline notices, the
// sender's own outgoing messages with a quiet delivery line, the empty state, and the
// New messages button for someone reading older messages.

import { dayKey, dayLabel, el, wireCopy } from "./dom.js";
import { GROUP_MS, highlight, messageArticle as buildArticle, showDelivery, showTrust } from "./message.js";

// Scrolled further than this from the bottom counts as "reading older messages".
const STICKY_PX = 48;

/**
 * One room's conversation in `parts.messages` (and that room's empty state and New messages
 * button). `shown()` says whether it is the room on screen: a room in the background counts
 * every message as unread, and keeps its place (the bottom, or where the person was reading)
 * for when it is shown again (shownAgain()).
 */
export function createTimeline(parts, { onUnread = () => {}, roomLink = () => location.href,
  shown = () => true } = {}) {
  const log = parts.messages;
  const outgoing = new Map(); // localId -> article
  // Builds the cards of a message's files (ui/attachments.js, wired by main.js).
  let renderFiles = null;
  let lastDay = null;
  let lastGroup = null; // {who, ts} of the last message, null after anything else
  let unread = 0;
  let alone = true;
  let following = true; // at the bottom when last seen: new messages keep it there

  const atBottom = () => (shown() ? log.scrollHeight - log.scrollTop - log.clientHeight < STICKY_PX : following);
  const reading = () => shown() && !document.hidden && atBottom();

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

  log.addEventListener("scroll", () => {
    if (shown()) following = atBottom();
    caughtUp();
  }, { passive: true });
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
    if (counts && !(follow && shown() && !document.hidden)) setUnread(unread + 1);
  }

  function messageArticle({ username, ts, text, mine, fingerprint, files = [], localId = null }) {
    const who = mine ? "\u0000me" : `${fingerprint} ${username}`;
    const grouped = Boolean(lastGroup && lastGroup.who === who && ts - lastGroup.ts < GROUP_MS && dayKey(ts) === lastDay);
    lastGroup = { who, ts };
    const filesNode = filesNodeFor({ files, mine, localId });
    return buildArticle({ username, ts, text, mine, fingerprint, grouped, filesNode });
  }

  function filesNodeFor({ files, mine = false, localId = null }) {
    return files?.length && renderFiles ? renderFiles({ files, mine, localId }) : null;
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

    /** fn({files, mine, localId}) -> the node showing a message's files. */
    setFileRenderer(fn) {
      renderFiles = fn;
    },

    addMessage({ id, username, fingerprint, ts, text, files, trust, verified, late, before }) {
      // A message that arrived late goes where it was sent (chat.js orders by sequence number).
      const later = typeof before === "string"
        ? [...log.querySelectorAll("article.msg")].find((a) => a.dataset.msgId === before) : null;
      if (!later) dayFor(ts);
      const node = later
        ? buildArticle({ username, ts, text, fingerprint, filesNode: filesNodeFor({ files }) })
        : messageArticle({ username, ts, text, fingerprint, files });
      if (typeof id === "string") node.dataset.msgId = id;
      showTrust(node, { username, trust, verified });
      if (late) node.append(el("p", "msg-late", "Arrived late"));
      if (later) {
        later.before(node);
        updateEmpty();
      } else append(node, { ts, counts: true });
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
    addKeyChange({ username, looksLike }) {
      append(notice(looksLike
        ? `⚠ "${username}" looks like ${looksLike} but is a different identity. Compare fingerprints before you trust its messages.`
        : `⚠ ${username}'s key changed. Compare fingerprints with ${username} before you trust new messages.`,
      "log-notice key-change"));
    },

    upsertOutgoing({ localId, text, files, ts, state, reason, withheld = [] }, username, onRetry) {
      let node = outgoing.get(localId);
      if (!node) {
        dayFor(ts);
        node = messageArticle({ username, ts, text, mine: true, files, localId });
        node.dataset.localId = localId;
        outgoing.set(localId, node);
        append(node, { ts });
      }
      showDelivery(node, { state, reason, withheld }, () => onRetry(localId));
      if (state === "delivered") outgoing.delete(localId);
    },

    /** Take back an outgoing message that was never sent (a cancelled upload). */
    removeOutgoing(localId) {
      outgoing.get(localId)?.remove();
      outgoing.delete(localId);
      updateEmpty();
    },

    /** Scroll to a message of this page (by its id, or our own by its localId); false if absent. */
    reveal({ id, localId }) {
      const node = [...log.querySelectorAll("article.msg")].find((a) => (id && a.dataset.msgId === id)
        || (localId && a.dataset.localId === localId));
      if (!node) return false;
      highlight(node);
      return true;
    },

    /**
     * Earlier messages of the day `ts` are above (ui/earlier.js): the live part does not repeat
     * that day's separator. Nothing changes once live messages are on screen.
     */
    startAfter(ts) {
      if (lastDay === null) lastDay = dayKey(ts);
    },

    /** Empty the conversation on screen (history cleared); messages still sending stay tracked. */
    clear() {
      log.replaceChildren();
      lastDay = null;
      lastGroup = null;
      setUnread(0);
      updateEmpty();
    },

    get unread() {
      return unread;
    },

    /** This room is on screen again: back to the bottom if it was there, and caught up. */
    shownAgain() {
      if (following) log.scrollTop = log.scrollHeight;
      updateEmpty();
      caughtUp();
    },
  };
}
