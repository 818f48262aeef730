// Wiring for this device's history: what chat.js reports goes into history/, and the page's
// history controls (ui/earlier.js, ui/search.js, ui/history-dialogs.js) act on it.
// main.js calls this once; it holds no DOM of its own.

import { memoryHistoryDb, openHistoryDb } from "./history/db.js";
import { History } from "./history/history.js";
import { sessionKeeper } from "./history/session-key.js";

const CHANNEL = "securechat-history";
const NOT_STORED = "This browser refused local storage: history on this device lasts only until you close the page.";

/** The page for `room`: "/" serves the default room, "/r/<name>" the others (issue 16). */
function roomPath(room, here, defaultPath) {
  return room === here ? defaultPath : `/r/${encodeURIComponent(room)}`;
}

/**
 * Open the history for the page of `room` and attach its controls to `ui` (ui/index.js).
 * `identity()` returns {username, fingerprint} of whoever sends now; `send(text)` sends a
 * message again (chat.js ChatClient.send: an error text or null).
 */
export async function openDeviceHistory({ ui, room, identity, send }) {
  let db;
  let warning = null;
  try {
    db = await openHistoryDb();
  } catch {
    db = memoryHistoryDb();
    warning = NOT_STORED;
  }
  // The service worker that keeps an unlocked key for the session is only waited for when a
  // passphrase is set; otherwise it registers in the background.
  const keeper = sessionKeeper().catch(() => null);
  const locked = db.persistent && (await db.getMeta("lock")) !== null;
  const kept = new History({
    db,
    keeper: locked ? await keeper : null,
    channel: typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL) : null,
    onChange: () => changed(),
    onProblem: ({ kind, message }) => ui.addWarning(kind === "quota"
      ? `${message} New messages are not kept here until there is room again; the chat itself goes on.`
      : message),
  });
  await kept.open();
  if (!locked) keeper.then((k) => { kept.keeper = k; });
  kept.startPruning();

  let shown = false; // the earlier messages are on screen

  async function showEarlier() {
    ui.earlier.clear();
    shown = false;
    if (kept.locked || !kept.keeping) return;
    // What this page wrote itself is already on screen as live messages.
    const last = ui.earlier.show(await kept.load(room, { thisPage: false }));
    if (last !== null) ui.startAfter(last);
    shown = true;
  }

  function changed() {
    ui.historyControls.refresh();
    // Locked, unlocked, pruned or cleared in another tab: show what this tab may show now.
    showEarlier();
  }

  /** Deleted here or in another tab: the conversation on screen goes too. */
  function cleared({ all }) {
    if (!all) {
      showEarlier();
      return;
    }
    ui.earlier.clear();
    shown = false;
    ui.clear();
    ui.addNotice("History on this device cleared.");
  }

  /** Scroll to a search result; in another room, open that room's page at it. */
  function open(result) {
    const { seq, record } = result;
    if (record.room === room) {
      if (ui.earlier.reveal(seq)) return;
      if (kept.isFromThisPage(seq) && ui.reveal({ id: record.id, localId: record.localId })) return;
      showEarlier().then(() => ui.earlier.reveal(seq));
      return;
    }
    location.assign(`${roomPath(record.room, room, location.pathname)}#history=${seq}`);
  }

  ui.attachHistory({
    history: kept,
    room: () => room,
    onOpen: open,
    onUnlocked: showEarlier,
    onLocked: showEarlier,
    onCleared: cleared,
    onRetry: ({ seq, record }) => {
      const problem = send(record.text);
      if (problem) {
        ui.composer.showError(problem);
        return;
      }
      kept.forget(seq);
      ui.earlier.remove(seq);
    },
  });

  return {
    history: kept,
    warning,
    showEarlier,
    /** The page was opened from a search result in another room's page: `#history=<seq>`. */
    revealFromAddress() {
      const match = /^#history=(\d+)$/.exec(location.hash);
      if (!match) return;
      history.replaceState(null, "", location.pathname + location.search);
      ui.earlier.reveal(Number(match[1]));
    },
    received: (message) => kept.received(room, message),
    sent: (record) => kept.sent(room, record, identity()),
    /** New identity without keeping history. */
    async clear() {
      await kept.clear();
      ui.historyControls.refresh();
      cleared({ all: true });
    },
  };
}
