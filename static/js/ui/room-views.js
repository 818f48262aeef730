// One conversation per room in the tab: each room has its own log, empty state and New
// messages button (a copy of the page's .log-frame), and only the room on screen is shown.
// Switching rooms only hides and shows these frames: nothing reloads, and the rooms in the
// background keep receiving (their messages count as unread until the room is shown).

import { createTimeline } from "./timeline.js";

// The parts of a .log-frame a timeline uses, found by class in every copy (copies carry no ids).
const FRAME_PARTS = {
  messages: ".messages", jumpNew: ".jump", emptyState: ".empty-state", emptyTitle: ".empty-title",
  emptyBody: ".empty-body", emptyShare: ".empty-share", roomLink: ".room-link", copyLink: ".copy-link",
  loopbackHint: ".loopback-hint",
};

/** `onUnread(name, n)`: a room's unread count changed; `roomLink(name)`: its invite URL;
 *  `renderFiles({files, mine, localId, room})`: the cards of a message's files in that room. */
export function createRoomViews(parts, { onUnread = () => {}, roomLink, renderFiles = () => null }) {
  const first = parts.messages.closest(".log-frame");
  // Copied before anything is rendered into the page's own frame.
  const pristine = first.cloneNode(true);
  for (const node of [pristine, ...pristine.querySelectorAll("[id]")]) node.removeAttribute("id");
  const views = new Map();
  let active = null;

  function frameFor() {
    if (![...views.values()].some((v) => v.frame === first)) return first;
    const frame = pristine.cloneNode(true);
    frame.hidden = true;
    [...views.values()].at(-1).frame.after(frame);
    return frame;
  }

  function view(name) {
    let existing = views.get(name);
    if (existing) return existing;
    const frame = frameFor();
    frame.dataset.room = name;
    const roomParts = { ...parts };
    for (const [key, selector] of Object.entries(FRAME_PARTS)) roomParts[key] = frame.querySelector(selector);
    existing = {
      name,
      frame,
      parts: roomParts,
      timeline: createTimeline(roomParts, {
        onUnread: (n) => onUnread(name, n),
        roomLink: () => roomLink(name),
        shown: () => active === name,
      }),
    };
    existing.timeline.setFileRenderer((args) => renderFiles({ ...args, room: name }));
    views.set(name, existing);
    if (active === null) active = name;
    return existing;
  }

  return {
    view,
    get active() {
      return active === null ? null : views.get(active);
    },
    all: () => [...views.values()],
    /** Put `name`'s conversation on screen (making its view if needed). */
    show(name) {
      const shown = view(name);
      active = name;
      for (const v of views.values()) v.frame.hidden = v !== shown;
      shown.timeline.shownAgain();
      return shown;
    },
  };
}
