// Getting attention when the page is not being read: the unread count in the tab title and
// in the favicon, and opt-in notifications (sender only, unless the person chooses the text).
// The title and every notification name the room ("#design").

const TITLE = "securechat";
const BADGE_MAX = 99;

/** The favicon with a count drawn on it, as a data: URL (the CSP allows data: images). */
async function badgedIcon(baseHref, count) {
  const image = new Image();
  image.src = baseHref;
  await image.decode();
  const size = 32;
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  const g = canvas.getContext("2d");
  g.drawImage(image, 0, 0, size, size);
  const text = count > BADGE_MAX ? `${BADGE_MAX}+` : String(count);
  const r = text.length > 1 ? 11 : 9;
  g.fillStyle = "#c0392b";
  g.beginPath();
  g.arc(size - r, r, r, 0, Math.PI * 2);
  g.fill();
  g.fillStyle = "#ffffff";
  g.font = `bold ${text.length > 2 ? 10 : 14}px system-ui, sans-serif`;
  g.textAlign = "center";
  g.textBaseline = "middle";
  g.fillText(text, size - r, r + 1);
  return canvas.toDataURL("image/png");
}

export function createAttention(parts, { prefs = {}, savePrefs = () => {}, doc = document } = {}) {
  const icon = doc.querySelector("link[rel=icon]");
  const baseIcon = icon?.href ?? null;
  let shown = 0; // the count currently in the favicon
  let room = null; // the room on screen
  let unread = 0;

  function renderTitle() {
    const count = unread ? `(${unread > BADGE_MAX ? `${BADGE_MAX}+` : unread}) ` : "";
    doc.title = `${count}${room ? `#${room} · ` : ""}${TITLE}`;
  }
  const settings = { notify: false, text: false, ...prefs };
  const supported = typeof globalThis.Notification === "function";

  async function setIcon(count) {
    if (!icon || count === shown) return;
    shown = count;
    try {
      const href = count ? await badgedIcon(baseIcon, count) : baseIcon;
      if (shown === count) icon.href = href;
    } catch {
      icon.href = baseIcon; // no canvas: the title still carries the count
    }
  }

  function renderNotifyControls() {
    const button = parts.enableNotifications;
    const permission = supported ? Notification.permission : "unsupported";
    const on = settings.notify && permission === "granted";
    button.hidden = permission === "unsupported" || permission === "denied";
    button.textContent = on ? "Turn off notifications" : "Enable notifications";
    button.setAttribute("aria-pressed", String(on));
    parts.notifyOptions.hidden = !on;
    parts.notifyText.checked = settings.text;
    parts.notifyState.textContent = permission === "unsupported"
      ? "This browser cannot show notifications for this page."
      : permission === "denied"
        ? "Notifications are blocked for this site: allow them in the browser's site settings, then reload."
        : on ? "Notifications are on while this page is open in the background." : "";
  }

  parts.enableNotifications.addEventListener("click", async () => {
    if (settings.notify && Notification.permission === "granted") {
      settings.notify = false;
    } else {
      const permission = Notification.permission === "granted"
        ? "granted" : await Notification.requestPermission();
      settings.notify = permission === "granted";
    }
    savePrefs({ ...settings });
    renderNotifyControls();
  });
  parts.notifyText.addEventListener("change", () => {
    settings.text = parts.notifyText.checked;
    savePrefs({ ...settings });
  });
  if (parts.enableNotifications) renderNotifyControls();

  return {
    attention: {
      /** Unread messages in every room (tab hidden, scrolled up, another room on screen):
       *  "(3) #design · securechat" and a badge. */
      setUnread(count) {
        unread = count;
        renderTitle();
        setIcon(count);
      },

      /** The room on screen, named in the title. */
      setRoom(name) {
        room = name || null;
        renderTitle();
      },

      /** A message arrived; tell the OS only when opted in and the page is not in front.
       *  `onOpen` runs when the person clicks the notification (show that room). */
      notify({ username, text, room: where, onOpen = () => {} }) {
        if (!settings.notify || !supported || Notification.permission !== "granted") return;
        if (!doc.hidden && doc.hasFocus()) return;
        const body = settings.text ? text.slice(0, 200) : `securechat · #${where}`;
        try {
          const note = new Notification(`New message from ${username} in #${where}`,
            { body, tag: `securechat-${where}`, icon: baseIcon });
          note.addEventListener("click", () => {
            globalThis.focus();
            onOpen();
            note.close();
          });
        } catch {
          // Some phone browsers only notify through a service worker; the title still counts.
        }
      },
    },
  };
}
