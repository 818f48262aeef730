// DOM only: renders what chat.js reports and turns clicks into callbacks. One module per
// panel; this one finds the page's parts and composes them into the `ui` main.js uses.

import { groupFingerprint } from "../crypto.js";
import { createAttention } from "./attention.js";
import { createAttachments } from "./attachments.js";
import { createComposer } from "./composer.js";
import { createDialog } from "./dialog.js";
import { wireCopy } from "./dom.js";
import { createEarlier } from "./earlier.js";
import { createHistoryDialogs } from "./history-dialogs.js";
import { createLayout } from "./layout.js";
import { createPeople } from "./people.js";
import { createSearch } from "./search.js";
import { createRoomViews } from "./room-views.js";
import { createRooms } from "./rooms.js";

const STATUS_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

/** The timeline calls that go to the conversation of the room on screen. */
const TIMELINE_CALLS = ["setAlone", "addMessage", "applyTrust", "addWarning", "addNotice", "addPresence",
  "addKeyChange", "upsertOutgoing", "removeOutgoing"];
// ... and those that go to the page's own room, whose frame holds "Earlier on this device".
const HOME_CALLS = ["reveal", "startAfter"];

/**
 * `prefs`/`savePrefs`: the notification settings, kept by main.js in the store.
 * `rooms`: {invite(name), qrPath(name), onSelect(name), onNew(), onUnread(name, n)} for the
 * Rooms list; without it (the insecure page) there are no rooms to show.
 */
export function createUi(doc = document, { prefs, savePrefs, rooms: roomHooks = null } = {}) {
  const $ = (id) => doc.getElementById(id);
  const parts = {
    status: $("status"), ownFingerprint: $("own-fingerprint"), newIdentity: $("new-identity"),
    loading: $("loading"), insecure: $("insecure"), secureLink: $("secure-link"), join: $("join"), joinForm: $("join-form"),
    username: $("username"), joinButton: $("join-button"), joinError: $("join-error"),
    chat: $("chat"), participants: $("participants"), leave: $("leave"), messages: $("messages"),
    withheld: $("withheld"), verifiedOnly: $("verified-only"), composer: $("composer"), message: $("message"),
    dialog: $("confirm"), dialogTitle: $("confirm-title"), dialogBody: $("confirm-body"),
    dialogFingerprint: $("confirm-fingerprint"), dialogOk: $("confirm-ok"),
    dialogFingerprintBlock: $("confirm-fingerprint-block"), dialogFingerprintLabel: $("confirm-fingerprint-label"),
    dialogPreviousBlock: $("confirm-previous-block"), dialogPrevious: $("confirm-previous"),
    roomName: $("room-name"), chatActions: $("chat-actions"), peopleButton: $("people-button"),
    peopleCount: $("people-count"), menuButton: $("menu-button"), menu: $("menu"), people: $("people"),
    peopleClose: $("people-close"), copyFingerprint: $("copy-fingerprint"),
    composerError: $("composer-error"), charCount: $("char-count"), composerHint: $("composer-hint"),
    sendButton: $("send"),
    jumpNew: $("jump-new"), emptyState: $("empty-state"), emptyTitle: $("empty-title"),
    emptyBody: $("empty-body"), emptyShare: $("empty-share"), roomLink: $("room-link"),
    copyLink: $("copy-link"), loopbackHint: $("loopback-hint"),
    enableNotifications: $("enable-notifications"), notifyOptions: $("notify-options"),
    notifyText: $("notify-text"), notifyState: $("notify-state"),
    dialogChoice: $("confirm-choice"), dialogChoiceBox: $("confirm-choice-box"), dialogChoiceText: $("confirm-choice-text"),
    historySearch: $("history-search"), historyExport: $("history-export"), historySettings: $("history-settings"),
    historyClear: $("history-clear"), historyState: $("history-state"), historyLockedNotice: $("history-locked"),
    historyUnlock: $("history-unlock"),
    searchDialog: $("search-dialog"), searchQuery: $("search-query"), searchStatus: $("search-status"),
    searchResults: $("search-results"), searchClose: $("search-close"), searchUnlock: $("search-unlock"),
    unlockDialog: $("unlock-dialog"), unlockForm: $("unlock-form"), unlockPassphrase: $("unlock-passphrase"),
    unlockError: $("unlock-error"), unlockLater: $("unlock-later"), unlockOk: $("unlock-ok"),
    historyDialog: $("history-dialog"), retention: $("retention"), lockState: $("lock-state"),
    lockNone: $("lock-none"), lockOpen: $("lock-open"), lockClosed: $("lock-closed"), lockNew: $("lock-new"),
    lockRepeat: $("lock-repeat"), lockSet: $("lock-set"), lockCurrent: $("lock-current"),
    lockChangeNew: $("lock-change-new"), lockChangeRepeat: $("lock-change-repeat"), lockChange: $("lock-change"),
    lockRemove: $("lock-remove"), lockNow: $("lock-now"), lockUnlock: $("lock-unlock"), lockError: $("lock-error"),
    lockDone: $("lock-done"), historyDone: $("history-done"),
    exportDialog: $("export-dialog"), exportTitle: $("export-title"), exportBody: $("export-body"),
    exportJson: $("export-json"), exportHtml: $("export-html"), exportClose: $("export-close"),
    attachButton: $("attach"), attachInput: $("attach-input"),
    conversation: doc.querySelector(".conversation"),
    joinTitle: $("join-title"), roomList: $("room-list"), newRoom: $("new-room"), copyInvite: $("copy-invite"), showQr: $("show-qr"),
    menuUnread: $("menu-unread"), menuUnreadText: $("menu-unread-text"), qrDialog: $("qr-dialog"), qrTitle: $("qr-title"), qrImage: $("qr-image"),
    qrLink: $("qr-link"),
  };
  const { layout } = createLayout(parts);
  wireCopy(parts.copyFingerprint, () => parts.ownFingerprint.textContent);

  const { attention } = createAttention(parts, { prefs, savePrefs, doc });
  // The live timelines and "Earlier on this device" show files alike; each caller names its
  // room, whose session fetches them (main.js).
  let renderFiles = null;
  const views = createRoomViews(parts, {
    onUnread: (name, n) => roomHooks?.onUnread(name, n),
    roomLink: (name) => roomHooks?.invite(name) ?? new URL("/", location.href).href,
    renderFiles: (args) => renderFiles?.(args) ?? null,
  });
  const timelineCalls = Object.fromEntries([
    ...TIMELINE_CALLS.map((call) => [call, (...args) => views.active?.timeline[call](...args)]),
    ...HOME_CALLS.map((call) => [call, (...args) => views.all()[0]?.timeline[call](...args)]),
  ]);
  const roomList = roomHooks ? createRooms(parts, {
    onSelect: (name) => {
      layout.closePanels();
      roomHooks.onSelect(name);
    },
    onNew: () => {
      layout.closePanels();
      roomHooks.onNew();
    },
    invite: () => roomHooks.invite(views.active?.name),
    qrPath: () => roomHooks.qrPath(views.active?.name),
  }).rooms : null;

  return {
    parts,
    attention,
    ...createPeople(parts),
    ...timelineCalls,
    roomViews: views,
    roomList,
    /** fn({files, mine, localId, room}) -> the node showing a message's files, in every room. */
    setFileRenderer(fn) {
      renderFiles = fn;
    },
    /** "Earlier on this device" in room `name`'s own conversation (the page's room has ui.earlier). */
    earlierIn(name, { onRetry }) {
      const view = views.view(name);
      view.earlier ??= createEarlier(view.parts, { onRetry,
        renderFiles: (args) => renderFiles?.({ ...args, room: name }) ?? null }).earlier;
      return view.earlier;
    },

    /** Empty every room's conversation on screen (history cleared). */
    clear() {
      for (const view of views.all()) view.timeline.clear();
    },
    get unread() {
      return views.active?.timeline.unread ?? 0;
    },
    /** Who messages in the room on screen are not sent to now: [{username, why}] (or plain
     *  names, reason unknown). */
    showWithheld(entries) {
      const said = entries.map((w) => (typeof w === "string" ? w : `${w.username} (${w.why})`));
      parts.withheld.hidden = said.length === 0;
      parts.withheld.textContent = said.length ? `Not sent to: ${said.join(", ")}.` : "";
    },
    ...createDialog(parts),
    ...createComposer(parts, layout),
    // One composer and drop zone for the tab; a card keeps the log of the room on screen in place.
    ...createAttachments({ ...parts, get messages() { return views.active?.parts.messages ?? parts.messages; } }, doc),
    layout,

    /**
     * This device's history (device-history.js): the earlier messages, Search, Export, History
     * settings, Clear history on this device. `history` is the History; `room()` the room;
     * `onRetry(entry)`, `onOpen(result)`, `onUnlocked()`, `onLocked()`, `onCleared({all})`.
     */
    attachHistory({ history, room, onRetry, onOpen, onUnlocked, onLocked, onCleared }) {
      const controls = createHistoryDialogs(parts, { history, room, onUnlocked, onLocked, onCleared,
        confirm: (question) => this.confirm(question) });
      const search = createSearch(parts, {
        search: async (query) => (history.locked ? { locked: true } : history.search(query)),
        onOpen,
        onUnlock: () => controls.historyControls.promptUnlock(),
      });
      Object.assign(this, createEarlier(parts, { onRetry,
        renderFiles: (args) => renderFiles?.({ ...args, room: room() }) ?? null }),
        search, controls);
      const fromMenu = (action) => () => {
        layout.closePanels();
        action();
      };
      parts.historySearch.addEventListener("click", fromMenu(() => this.search.open()));
      parts.historyExport.addEventListener("click", fromMenu(() => this.historyControls.openExport()));
      parts.historySettings.addEventListener("click", fromMenu(() => this.historyControls.openSettings()));
      parts.historyClear.addEventListener("click", fromMenu(() => this.historyControls.confirmClear()));
    },

    showInsecure() {
      const url = `https://${location.hostname}:${location.port || "5000"}`;
      parts.secureLink.textContent = url;
      parts.secureLink.href = url;
      parts.insecure.hidden = false;
      parts.join.hidden = true;
      parts.chat.hidden = true;
      this.setStatus("offline", "Encryption unavailable");
    },

    showIdentity(fingerprint) {
      parts.ownFingerprint.textContent = groupFingerprint(fingerprint);
      parts.newIdentity.hidden = false;
      parts.copyFingerprint.hidden = false;
    },

    setStatus(state, detail) {
      parts.status.dataset.state = state;
      parts.status.textContent = detail ? `${STATUS_TEXT[state]} · ${detail}` : STATUS_TEXT[state];
      // One line on every screen: the whole text stays readable on hover and to screen readers.
      parts.status.title = parts.status.textContent;
    },

    showJoin(error = "") {
      layout.inChat(false);
      parts.chat.hidden = true;
      parts.join.hidden = false;
      parts.joinButton.disabled = false;
      parts.joinError.textContent = error;
      parts.username.setAttribute("aria-invalid", error ? "true" : "false");
      parts.username.focus();
    },

    joining() {
      parts.joinButton.disabled = true;
      parts.joinError.textContent = "";
    },

    /** Put `name` on screen: its conversation, the header, the title; `several` rooms or one. */
    showRoom(name, { several = false } = {}) {
      views.show(name);
      parts.roomName.textContent = name;
      parts.roomName.hidden = false;
      attention.setRoom(name);
      parts.message.placeholder = `Message #${name}`;
      // One room: "Leave chat", as ever; several: which one this button leaves.
      parts.leave.textContent = several ? `Leave #${name}` : "Leave chat";
    },

    showChat(room) {
      parts.join.hidden = true;
      parts.chat.hidden = false;
      parts.roomName.textContent = room;
      parts.roomName.hidden = !room;
      layout.inChat(true);
      parts.joinButton.disabled = false;
      parts.message.focus();
    },
  };
}
