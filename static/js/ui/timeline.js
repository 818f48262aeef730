// The conversation log: messages, warnings, notices and the sender's own outgoing messages.

import { el, timeElement } from "./dom.js";

const OUTGOING_TEXT = {
  queued: "Waiting to send",
  sending: "Sending…",
  delivered: "Delivered",
  failed: "Not sent",
};

// Scrolled further than this from the bottom counts as "reading older messages".
const STICKY_PX = 48;

export function createTimeline(parts) {
  const outgoing = new Map(); // localId -> article

  function append(node) {
    const log = parts.messages;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < STICKY_PX;
    log.append(node);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function messageArticle({ username, ts, text, mine, fingerprint }) {
    const article = el("article", mine ? "msg mine" : "msg");
    if (fingerprint) article.dataset.fingerprint = fingerprint;
    const head = el("header", "msg-head");
    head.append(el("span", "sender", username), timeElement(ts));
    article.append(head, el("p", "text", text));
    return article;
  }

  function keyChangeWarning(username) {
    return el("p", "msg-warning",
      `⚠ ${username}'s key changed. Compare fingerprints before trusting this message.`);
  }

  return {
    showWithheld(names) {
      parts.withheld.hidden = names.length === 0;
      parts.withheld.textContent = names.length
        ? `Not sent to: ${names.join(", ")} (key not accepted or not verifiable).` : "";
    },

    addMessage({ username, fingerprint, ts, text, trust, verified }) {
      const article = messageArticle({ username, ts, text, fingerprint });
      if (verified) article.querySelector(".msg-head").append(el("span", "badge verified", "✓ Verified"));
      if (trust === "changed") article.append(keyChangeWarning(username));
      append(article);
    },

    /** The key of `fingerprint` was accepted or verified: update its messages in place. */
    applyTrust({ fingerprint, trust }) {
      if (trust === "changed") return;
      for (const article of parts.messages.querySelectorAll("article.msg")) {
        if (article.dataset.fingerprint === fingerprint) article.querySelector(".msg-warning")?.remove();
      }
    },

    addWarning(text) {
      const line = el("p", "log-warning", text);
      line.setAttribute("role", "note");
      append(line);
    },

    addNotice(text) {
      append(el("p", "log-notice", text));
    },

    upsertOutgoing({ localId, text, ts, state, reason }, username, onRetry) {
      let article = outgoing.get(localId);
      if (!article) {
        article = messageArticle({ username, ts, text, mine: true });
        article.append(el("p", "delivery"));
        outgoing.set(localId, article);
        append(article);
      }
      article.dataset.state = state;
      const line = article.querySelector(".delivery");
      line.replaceChildren(el("span", "delivery-state", OUTGOING_TEXT[state]));
      if (reason) line.append(el("span", "delivery-reason", ` · ${reason}`));
      if (state === "failed") {
        const retry = el("button", "small", "Retry");
        retry.type = "button";
        retry.addEventListener("click", () => onRetry(localId));
        line.append(retry);
      }
      if (state === "delivered") outgoing.delete(localId);
    },

  };
}
