// The one modal dialog: a question with Cancel and a confirming button, optionally showing a
// fingerprint (verify) or the old and the new one side by side (a key change).

import { groupFingerprint } from "../crypto.js";

export function createDialog(parts) {
  return {
    /** A modal question; resolves true when the person confirmed, false on Cancel or Escape. */
    confirm({ title, body, fingerprint = null, previous = null, ok }) {
      parts.dialogTitle.textContent = title;
      parts.dialogBody.textContent = body;
      parts.dialogFingerprintBlock.hidden = !fingerprint;
      parts.dialogFingerprint.textContent = fingerprint ? groupFingerprint(fingerprint) : "";
      parts.dialogFingerprintLabel.hidden = !previous;
      parts.dialogPreviousBlock.hidden = !previous;
      parts.dialogPrevious.textContent = previous ? groupFingerprint(previous) : "";
      parts.dialogOk.textContent = ok;
      parts.dialog.returnValue = "";
      parts.dialog.showModal();
      return new Promise((resolve) => {
        parts.dialog.addEventListener("close", () => resolve(parts.dialog.returnValue === "ok"), { once: true });
      });
    },
  };
}
