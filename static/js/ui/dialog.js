// The one modal dialog: a question with Cancel and a confirming button, optionally showing a
// fingerprint (verify) or the old and the new one side by side (a key change), optionally with
// one checkbox (New identity: keep this device's history?).

import { groupFingerprint } from "../crypto.js";

export function createDialog(parts) {
  return {
    /**
     * A modal question; resolves true when the person confirmed, false on Cancel or Escape.
     * With `choice` ({label, checked}) it resolves {ok, checked} instead.
     */
    confirm({ title, body, fingerprint = null, previous = null, ok, choice = null }) {
      parts.dialogTitle.textContent = title;
      parts.dialogBody.textContent = body;
      parts.dialogFingerprintBlock.hidden = !fingerprint;
      parts.dialogFingerprint.textContent = fingerprint ? groupFingerprint(fingerprint) : "";
      parts.dialogFingerprintLabel.hidden = !previous;
      parts.dialogPreviousBlock.hidden = !previous;
      parts.dialogPrevious.textContent = previous ? groupFingerprint(previous) : "";
      parts.dialogOk.textContent = ok;
      parts.dialogChoice.hidden = !choice;
      parts.dialogChoiceText.textContent = choice?.label ?? "";
      parts.dialogChoiceBox.checked = Boolean(choice?.checked);
      parts.dialog.returnValue = "";
      parts.dialog.showModal();
      return new Promise((resolve) => {
        parts.dialog.addEventListener("close", () => {
          const confirmed = parts.dialog.returnValue === "ok";
          resolve(choice ? { ok: confirmed, checked: parts.dialogChoiceBox.checked } : confirmed);
        }, { once: true });
      });
    },
  };
}
