// DOM only: renders what chat.js reports and turns clicks into callbacks. One module per
// panel; this one finds the page's parts and composes them into the `ui` main.js uses.

import { groupFingerprint } from "../crypto.js";
import { createDialog } from "./dialog.js";
import { createPeople } from "./people.js";
import { createTimeline } from "./timeline.js";

const STATUS_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

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

  return {
    parts,
    ...createPeople(parts),
    ...createTimeline(parts),
    ...createDialog(parts),

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
  };
}
