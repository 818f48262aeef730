// The participant list: names, fingerprints, trust badges and the per-person buttons.

import { groupFingerprint } from "../crypto.js";
import { button, el, wireCopy } from "./dom.js";

export function createPeople(parts) {
  return {
    renderParticipants(list, { onAccept, onVerify }) {
      const items = list.map((p) => {
        const li = el("li", "participant");
        li.dataset.sid = p.sid;
        li.dataset.trust = p.ok ? p.trust : "invalid";
        const name = el("div", "p-name");
        name.append(el("span", "name", p.username));
        if (p.you) name.append(el("span", "badge you", "you"));
        if (p.verified) name.append(el("span", "badge verified", "✓ Verified"));
        const valid = /^[0-9a-f]{64}$/.test(p.fingerprint);
        li.append(name, el("code", "fingerprint", valid ? groupFingerprint(p.fingerprint) : "invalid fingerprint"));
        const actions = el("div", "actions");
        if (valid && !p.you) {
          actions.append(wireCopy(button("Copy", "small quiet", `Copy ${p.username}'s fingerprint`),
            () => groupFingerprint(p.fingerprint)));
        }
        if (!p.ok) {
          li.append(el("p", "p-warning", `⚠ ${p.username}'s keys failed verification (${p.problem}). Nothing is sent to this participant.`));
        } else if (p.trust === "changed") {
          li.append(el("p", "p-warning", p.looksLike
            ? `⚠ Looks like ${p.looksLike}: "${p.username}" is a different identity from the ${p.looksLike} you know. Compare fingerprints; until you accept, your messages are not sent to "${p.username}".`
            : `⚠ Key changed: ${p.username} now uses a different identity than before. Compare fingerprints; until you accept, your messages are not sent to ${p.username}.`));
          const accept = el("button", "small warn", "Accept new key");
          accept.type = "button";
          // Every per-person button names the person: a list of ten "Accept new key" is useless
          // to a screen reader.
          accept.setAttribute("aria-label", `Accept new key from ${p.username}`);
          accept.addEventListener("click", () => onAccept(p));
          actions.prepend(accept);
        } else if (!p.you && !p.verified) {
          const verify = el("button", "small quiet", "Mark verified");
          verify.type = "button";
          verify.setAttribute("aria-label", `Mark ${p.username} verified`);
          verify.addEventListener("click", () => onVerify(p));
          actions.prepend(verify);
        }
        if (actions.childElementCount) li.append(actions);
        return li;
      });
      parts.participants.replaceChildren(...items);
      parts.peopleCount.textContent = String(list.length);
    },
  };
}
