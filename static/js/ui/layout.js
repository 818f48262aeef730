// The page's frame: which layout applies (side column, or phone panels behind People and
// Menu), opening and closing those panels, and the height the conversation may use.

// Keep in step with the @media rule in styles.css that folds the side column away.
export const COMPACT_QUERY = "(max-width: 700px), (max-height: 500px)";
// Phones and tablets without a mouse: Enter adds a line there, as in Signal and WhatsApp.
export const TOUCH_QUERY = "(hover: none) and (pointer: coarse)";

export function createLayout(parts, win = window) {
  const doc = parts.chat.ownerDocument;
  const compact = win.matchMedia(COMPACT_QUERY);
  const touch = win.matchMedia(TOUCH_QUERY);
  const panels = [
    { button: parts.peopleButton, panel: parts.people },
    { button: parts.menuButton, panel: parts.menu },
  ];

  function setOpen(entry, open, { focus = true } = {}) {
    entry.panel.classList.toggle("open", open);
    entry.button.setAttribute("aria-expanded", String(open));
    if (open && focus) {
      entry.panel.querySelector("button:not([hidden]), a[href], input, [tabindex='0']")?.focus();
    }
  }

  function close({ restoreFocus = false } = {}) {
    for (const entry of panels) {
      const wasOpen = entry.panel.classList.contains("open");
      setOpen(entry, false);
      if (wasOpen && restoreFocus) entry.button.focus();
    }
  }

  for (const entry of panels) {
    entry.button.addEventListener("click", () => {
      const open = !entry.panel.classList.contains("open");
      close();
      setOpen(entry, open);
    });
  }
  parts.peopleClose.addEventListener("click", () => close({ restoreFocus: true }));
  doc.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && panels.some((e) => e.panel.classList.contains("open"))) {
      close({ restoreFocus: true });
    }
  });
  // A tap outside an open panel (and outside its button) closes it, as menus do.
  doc.addEventListener("pointerdown", (event) => {
    for (const entry of panels) {
      if (entry.panel.classList.contains("open") && !entry.panel.contains(event.target)
        && !entry.button.contains(event.target)) setOpen(entry, false);
    }
  });
  compact.addEventListener("change", () => close());

  // iOS does not shrink the layout viewport for the on-screen keyboard (and ignores
  // interactive-widget): follow the visual viewport there, so the composer stays in sight.
  const vv = win.visualViewport;
  if (vv) {
    const follow = () => {
      const covered = win.innerHeight - vv.height;
      const keyboard = covered > 80 && Math.abs(vv.scale - 1) < 0.01;
      doc.documentElement.classList.toggle("vv-height", keyboard);
      if (keyboard) {
        doc.documentElement.style.setProperty("--app-height", `${Math.round(vv.height)}px`);
        win.scrollTo(0, 0);
      } else {
        doc.documentElement.style.removeProperty("--app-height");
      }
    };
    vv.addEventListener("resize", follow);
  }

  return {
    layout: {
      get compact() { return compact.matches; },
      get touch() { return touch.matches; },
      /** Close the phone panels (after an action taken in one of them). */
      closePanels: () => close(),
      inChat(on) {
        doc.body.classList.toggle("in-chat", on);
        parts.chatActions.hidden = !on;
        if (!on) close();
      },
    },
  };
}
