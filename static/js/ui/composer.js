// The composer: Enter behaviour (sends on desktops, adds a line on touch screens), its
// own error line and a character counter as the limit nears.

import { MAX_TEXT_CHARS } from "../crypto.js";

// The counter shows from this share of the limit on.
const COUNTER_FROM = 0.9;
const autosizeInCss = globalThis.CSS?.supports?.("field-sizing", "content") ?? false;

export function createComposer(parts, layout) {
  const box = parts.message;

  function autosize() {
    if (autosizeInCss) return;
    box.style.height = "auto";
    box.style.height = `${box.scrollHeight + 2}px`;
  }

  function showError(text) {
    parts.composerError.textContent = text ?? "";
    box.setAttribute("aria-invalid", text ? "true" : "false");
  }

  function count() {
    const length = [...box.value].length;
    const near = length >= MAX_TEXT_CHARS * COUNTER_FROM;
    parts.charCount.hidden = !near;
    parts.charCount.dataset.over = String(length > MAX_TEXT_CHARS);
    parts.charCount.textContent = near
      ? `${length.toLocaleString()} / ${MAX_TEXT_CHARS.toLocaleString()} characters` : "";
    if (length <= MAX_TEXT_CHARS && parts.composerError.dataset.kind === "length") {
      parts.composerError.dataset.kind = "";
      showError("");
    }
  }

  // Tapping Send must not take the focus from the box: the on-screen keyboard stays open.
  parts.sendButton.addEventListener("mousedown", (event) => event.preventDefault());
  box.addEventListener("input", () => {
    autosize();
    count();
  });
  box.addEventListener("keydown", (event) => {
    // Never interrupt an IME composition; Shift+Enter is always a newline.
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    if (layout.touch) return; // touch keyboards: Enter adds a line, the Send button sends
    event.preventDefault();
    parts.composer.requestSubmit();
  });

  return {
    composer: {
      /** `send(text)` returns an error text or null; on success the box is emptied. */
      onSend(send) {
        parts.composer.addEventListener("submit", (event) => {
          event.preventDefault();
          const text = box.value;
          const problem = send(text);
          if (problem) {
            parts.composerError.dataset.kind = [...text].length > MAX_TEXT_CHARS ? "length" : "";
            showError(problem);
            return;
          }
          showError("");
          if (text.trim()) {
            box.value = "";
            autosize();
            count();
          }
          box.focus();
        });
      },
      showError,
    },
  };
}
