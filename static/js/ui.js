// DOM only: renders what chat.js reports and turns clicks into callbacks.
// Every piece of text from the network goes through textContent, never innerHTML.

import { groupFingerprint } from "./crypto.js";

const STATUS_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

const OUTGOING_TEXT = {
  queued: "Waiting to send",
  sending: "Sending…",
  delivered: "Delivered",
  failed: "Not sent",
};

// Scrolled further than this from the bottom counts as "reading older messages".
const STICKY_PX = 48;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeElement(ts) {
  const date = new Date(ts);
  const node = el("time", "time", date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  node.dateTime = date.toISOString();
  node.title = date.toLocaleString();
  return node;
}

export function createUi(doc = document) {
  const $ = (id) => doc.getElementById(id);
  const parts = {
    status: $("status"), ownFingerprint: $("own-fingerprint"), newIdentity: $("new-identity"),
    loading: $("loading"), insecure: $("insecure"), secureLink: $("secure-link"), join: $("join"), joinForm: $("join-form"),
    username: $("username"), joinButton: $("join-button"), joinError: $("join-error"),
    chat: $("chat"), participants: $("participants"), leave: $("leave"), messages: $("messages"),
    withheld: $("withheld"), composer: $("composer"), message: $("message"),
    dialog: $("confirm"), dialogTitle: $("confirm-title"), dialogBody: $("confirm-body"),
    dialogFingerprint: $("confirm-fingerprint"), dialogOk: $("confirm-ok"),
  };
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
    parts,

    showInsecure() {
      const url = `https://${location.hostname}:${location.port || "5000"}`;
      parts.secureLink.textContent = url;
      parts.secureLink.href = url;
      parts.insecure.hidden = false;
      parts.join.hidden = true;
      parts.chat.hidden = true;
      this.setStatus("offline", "Encryption unavailable");
    },

    showIdentity(fingerprint) {
      parts.ownFingerprint.textContent = groupFingerprint(fingerprint);
      parts.newIdentity.hidden = false;
    },

    setStatus(state, detail) {
      parts.status.dataset.state = state;
      parts.status.textContent = detail ? `${STATUS_TEXT[state]} · ${detail}` : STATUS_TEXT[state];
    },

    showJoin(error = "") {
      parts.chat.hidden = true;
      parts.join.hidden = false;
      parts.joinButton.disabled = false;
      parts.joinError.textContent = error;
      parts.username.setAttribute("aria-invalid", error ? "true" : "false");
      parts.username.focus();
    },

    joining() {
      parts.joinButton.disabled = true;
      parts.joinError.textContent = "";
    },

    showChat() {
      parts.join.hidden = true;
      parts.chat.hidden = false;
      parts.joinButton.disabled = false;
      parts.message.focus();
    },

    renderParticipants(list, { onAccept, onVerify }) {
      const items = list.map((p) => {
        const li = el("li", "participant");
        li.dataset.sid = p.sid;
        li.dataset.trust = p.ok ? p.trust : "invalid";
        const name = el("div", "p-name");
        name.append(el("span", "name", p.username));
        if (p.you) name.append(el("span", "badge you", "you"));
        if (p.verified) name.append(el("span", "badge verified", "✓ Verified"));
        li.append(name, el("code", "fingerprint", /^[0-9a-f]{64}$/.test(p.fingerprint)
          ? groupFingerprint(p.fingerprint) : "invalid fingerprint"));
        if (!p.ok) {
          li.append(el("p", "p-warning", `⚠ ${p.username}'s keys failed verification (${p.problem}). Nothing is sent to this participant.`));
        } else if (p.trust === "changed") {
          li.append(el("p", "p-warning",
            `⚠ Key changed: ${p.username} now uses a different identity than before. Compare fingerprints; until you accept, your messages are not sent to ${p.username}.`));
          const accept = el("button", "small warn", "Accept new key");
          accept.type = "button";
          accept.addEventListener("click", () => onAccept(p));
          li.append(accept);
        } else if (!p.you && !p.verified) {
          const verify = el("button", "small quiet", "Mark verified");
          verify.type = "button";
          verify.addEventListener("click", () => onVerify(p));
          li.append(verify);
        }
        return li;
      });
      parts.participants.replaceChildren(...items);
    },

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

    /** A modal question; resolves true when the person confirmed. */
    confirm({ title, body, fingerprint = null, ok }) {
      parts.dialogTitle.textContent = title;
      parts.dialogBody.textContent = body;
      parts.dialogFingerprint.hidden = !fingerprint;
      parts.dialogFingerprint.textContent = fingerprint ? groupFingerprint(fingerprint) : "";
      parts.dialogOk.textContent = ok;
      parts.dialog.returnValue = "";
      parts.dialog.showModal();
      return new Promise((resolve) => {
        parts.dialog.addEventListener("close", () => resolve(parts.dialog.returnValue === "ok"), { once: true });
      });
    },
  };
}
