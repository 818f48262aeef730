// The one modal dialog: a question with Cancel and a confirming button.

import { groupFingerprint } from "../crypto.js";

export function createDialog(parts) {
  return {
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
