// The controls of this device's history: the state line in the menu, History settings
// (retention, the passphrase lock), the unlock prompt, Export and Clear history on this device.
// Every text says what a choice protects and what it does not (docs/THREAT-MODEL.md).

import { passphraseProblem, WrongPassphrase } from "../history/seal.js";
import { RETENTION_CHOICES, retentionLabel } from "../history/records.js";
import { el } from "./dom.js";

function download(text, type, name) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** Run `task` with `button` busy (PBKDF2 takes a moment on purpose). */
async function busy(button, text, task) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = text;
  try {
    return await task();
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

/**
 * `history`: the History (history/history.js). `confirm`: the page's modal question.
 * `room()`: the room whose history Export takes. Callbacks tell the page what changed:
 * `onUnlocked()` (show the earlier messages), `onLocked()`, `onCleared()`.
 */
export function createHistoryDialogs(parts, { history, confirm, room, onUnlocked, onLocked, onCleared }) {
  for (const days of RETENTION_CHOICES) {
    const option = el("option", "", retentionLabel(days));
    option.value = String(days);
    parts.retention.append(option);
  }

  function stateText() {
    if (!history.persistent) return "This browser refused storage: history lasts only until this page closes.";
    if (!history.keeping) return "History is not kept on this device.";
    const kept = `Kept on this device for ${retentionLabel(history.retentionDays)}`;
    if (history.locked) return `${kept} · locked`;
    if (history.hasLock) return `${kept} · encrypted with your passphrase`;
    return `${kept} · no passphrase`;
  }

  function refresh() {
    parts.historyState.textContent = stateText();
    parts.retention.value = String(history.retentionDays);
    parts.lockNone.hidden = history.hasLock;
    parts.lockOpen.hidden = !history.hasLock || history.locked;
    parts.lockClosed.hidden = !history.locked;
    parts.lockState.textContent = !history.hasLock
      ? "No passphrase: history is as safe as this browser profile. Anyone who can open this browser, or copies its profile folder or a backup of it, can read it."
      : history.locked
        ? "Locked with a passphrase: nothing kept can be read until you enter it."
        : `Encrypted with your passphrase (AES-256-GCM, key from PBKDF2-SHA-256 with 600,000 iterations): a copy of this browser profile does not reveal it. ${history.keeper
          ? "This browser asks for it once per session."
          : "This browser cannot keep it for the session (service workers are off), so the page asks at every load."}`;
    parts.historyLockedNotice.hidden = !history.locked || !history.keeping;
  }

  function problem(text) {
    parts.lockError.textContent = text;
  }

  function clearFields() {
    for (const input of [parts.lockNew, parts.lockRepeat, parts.lockCurrent, parts.lockChangeNew, parts.lockChangeRepeat]) {
      input.value = "";
    }
  }

  function newPassphrase(input, repeat) {
    const text = input.value;
    const bad = passphraseProblem(text);
    if (bad) return { error: bad };
    if (text !== repeat.value) return { error: "The two passphrases differ." };
    return { text };
  }

  // -- unlock ---------------------------------------------------------------------------

  function promptUnlock() {
    parts.unlockError.textContent = "";
    parts.unlockPassphrase.value = "";
    parts.unlockPassphrase.setAttribute("aria-invalid", "false");
    if (!parts.unlockDialog.open) parts.unlockDialog.showModal();
    parts.unlockPassphrase.focus();
  }

  parts.unlockForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await busy(parts.unlockOk, "Unlocking…", () => history.unlock(parts.unlockPassphrase.value));
    } catch (error) {
      parts.unlockError.textContent = error instanceof WrongPassphrase ? error.message
        : `Could not unlock: ${error?.message ?? error}`;
      parts.unlockPassphrase.setAttribute("aria-invalid", "true");
      parts.unlockPassphrase.select();
      return;
    }
    parts.unlockPassphrase.value = "";
    parts.unlockDialog.close();
    refresh();
    onUnlocked();
  });
  parts.unlockLater.addEventListener("click", () => {
    parts.unlockPassphrase.value = "";
    parts.unlockDialog.close();
    refresh();
  });
  parts.historyUnlock.addEventListener("click", promptUnlock);
  parts.lockUnlock.addEventListener("click", () => {
    parts.historyDialog.close();
    promptUnlock();
  });

  // -- settings -------------------------------------------------------------------------

  parts.retention.addEventListener("change", async () => {
    const days = Number(parts.retention.value);
    const shorter = days < history.retentionDays;
    if (shorter) {
      const ok = await confirm({
        title: days === 0 ? "Stop keeping history?" : `Keep only ${retentionLabel(days)}?`,
        body: days === 0
          ? "Every message this device kept, in every room, is deleted now, and none are kept from now on. Other people's devices keep their own copies."
          : `Messages older than ${retentionLabel(days)} are deleted from this device now.`,
        ok: days === 0 ? "Delete and stop keeping" : "Delete older messages",
      });
      if (!ok) {
        refresh();
        return;
      }
    }
    await history.setRetention(days);
    refresh();
    if (shorter) onCleared({ all: days === 0 });
  });

  parts.lockSet.addEventListener("click", async () => {
    const { text, error } = newPassphrase(parts.lockNew, parts.lockRepeat);
    if (error) return problem(error);
    problem("");
    await busy(parts.lockSet, "Encrypting…", () => history.enableLock(text));
    clearFields();
    refresh();
    parts.lockDone.textContent = "History on this device is now encrypted with your passphrase.";
  });

  parts.lockChange.addEventListener("click", async () => {
    const { text, error } = newPassphrase(parts.lockChangeNew, parts.lockChangeRepeat);
    if (error) return problem(error);
    try {
      await busy(parts.lockChange, "Changing…", () => history.changePassphrase(parts.lockCurrent.value, text));
    } catch (err) {
      return problem(err instanceof WrongPassphrase ? "The current passphrase is not right." : String(err?.message ?? err));
    }
    problem("");
    clearFields();
    parts.lockDone.textContent = "Passphrase changed.";
  });

  parts.lockRemove.addEventListener("click", async () => {
    try {
      await busy(parts.lockRemove, "Decrypting…", () => history.disableLock(parts.lockCurrent.value));
    } catch (err) {
      return problem(err instanceof WrongPassphrase ? "Enter the current passphrase to remove it." : String(err?.message ?? err));
    }
    problem("");
    clearFields();
    refresh();
    parts.lockDone.textContent = "Passphrase removed: history is stored unencrypted, as safe as this browser profile.";
  });

  parts.lockNow.addEventListener("click", async () => {
    await history.lockNow();
    refresh();
    parts.historyDialog.close();
    onLocked();
  });

  parts.historyDone.addEventListener("click", () => parts.historyDialog.close());
  parts.historyDialog.addEventListener("close", () => {
    clearFields();
    problem("");
    parts.lockDone.textContent = "";
  });

  // -- export and clear -----------------------------------------------------------------

  async function openExport() {
    const name = room();
    parts.exportTitle.textContent = `Export #${name}`;
    parts.exportBody.textContent = history.locked
      ? "History on this device is locked: unlock it to export."
      : "Preparing…";
    parts.exportHtml.disabled = true;
    parts.exportJson.disabled = true;
    parts.exportDialog.showModal();
    if (history.locked) return;
    const files = await history.exportRoom(name, {
      formatTime: (ts) => new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
      formatDay: (ts) => new Date(ts).toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" }),
    });
    parts.exportBody.textContent = `${files.count === 1 ? "1 message" : `${files.count} messages`} this device kept in #${name}. `
      + "The file is not encrypted: anyone who gets it can read it.";
    parts.exportHtml.disabled = files.count === 0;
    parts.exportJson.disabled = files.count === 0;
    parts.exportHtml.onclick = () => download(files.html, "text/html", files.names.html);
    parts.exportJson.onclick = () => download(files.json, "application/json", files.names.json);
  }
  parts.exportClose.addEventListener("click", () => parts.exportDialog.close());

  async function confirmClear() {
    const ok = await confirm({
      title: "Clear history on this device?",
      body: history.locked
        ? "Every message this device kept, in every room, is deleted, and so is the passphrase that locks them (it was not entered in this session). Other people's devices keep their own copies. This cannot be undone."
        : "Every message this device kept, in every room, is deleted. Other people's devices keep their own copies. This cannot be undone.",
      ok: "Clear history",
    });
    if (!ok) return false;
    await history.clear();
    refresh();
    onCleared({ all: true });
    return true;
  }

  refresh();
  return {
    historyControls: {
      refresh,
      promptUnlock,
      openSettings() {
        refresh();
        parts.historyDialog.showModal();
      },
      openExport,
      confirmClear,
    },
  };
}
