// The Rooms list (the side column on wide screens, the Menu on phones): the rooms this tab is
// in, the one on screen, unread counts, and New room / Copy invite link / Show QR code. The
// QR code is an image the server draws (GET /r/<name>/qr.svg): no script library, strict CSP.

import { el, wireCopy } from "./dom.js";

const STATE_TEXT = {
  connecting: "connecting",
  reconnecting: "reconnecting",
  offline: "offline",
};

/**
 * `onSelect(name)` when a room is chosen, `onNew()` for New room; `invite()` returns the full
 * invite URL of the room on screen, `qrPath()` the path of its QR code image.
 */
export function createRooms(parts, { onSelect, onNew, invite, qrPath }) {
  let current = null;

  parts.newRoom.addEventListener("click", () => onNew());
  wireCopy(parts.copyInvite, () => invite());
  parts.showQr.addEventListener("click", () => {
    const link = invite();
    parts.qrTitle.textContent = `Invite people to #${current}`;
    parts.qrImage.alt = `QR code of ${link}`;
    parts.qrImage.src = qrPath();
    parts.qrLink.textContent = link;
    parts.qrLink.href = link;
    parts.qrDialog.showModal();
  });

  return {
    rooms: {
      /** `list`: [{name, unread, state}] in the order joined; `active` the room on screen. */
      render(list, active) {
        current = active;
        const items = list.map(({ name, unread, state }) => {
          const li = el("li", "room-entry");
          li.dataset.room = name;
          li.dataset.state = state;
          const pick = el("button", "room-button");
          pick.type = "button";
          pick.append(el("span", "room-label", `#${name}`));
          if (name === active) pick.setAttribute("aria-current", "true");
          const note = STATE_TEXT[state];
          if (note) pick.append(el("span", "room-state", note));
          if (unread > 0) {
            const count = el("span", "unread-count", unread > 99 ? "99+" : String(unread));
            pick.append(count, el("span", "visually-hidden", unread === 1 ? " unread message" : " unread messages"));
          }
          pick.addEventListener("click", () => onSelect(name));
          li.append(pick);
          return li;
        });
        parts.roomList.replaceChildren(...items);
        const total = list.filter((r) => r.name !== active).reduce((n, r) => n + r.unread, 0);
        // On phones the list is behind Menu: the button says when another room has news.
        parts.menuUnread.textContent = total ? String(total > 99 ? "99+" : total) : "";
        parts.menuUnread.hidden = total === 0;
        // The button keeps its name ("Menu"); the count is its description.
        parts.menuUnreadText.textContent = total
          ? `${total} unread message${total === 1 ? "" : "s"} in other rooms` : "";
      },
    },
  };
}
