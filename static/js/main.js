// Entry point: checks the environment, then wires one chat session per room to the page.
//
// The tab can be in several rooms (rooms/tab.js): each has its own ChatClient and connection,
// and its own conversation on the page (ui/room-views.js); the Rooms list switches between
// them without reloading, the header, title and notifications name the room on screen.

import { downloadFile, fileName, fileType, imageSize, limitProblem, uploadFile } from "./attachments.js";
import { hasWebCrypto, normalizeUsername, usernameProblem } from "./crypto.js";
import { fileRefJson } from "./filecrypto.js";
import { ChatClient } from "./chat.js";
import { openDeviceHistory } from "./device-history.js";
import { inviteUrl, isRoomName, newRoomName, roomFromPath, roomPath } from "./rooms/names.js";
import { RoomsTab } from "./rooms/tab.js";
import { memoryStore, openStore } from "./store.js";
import { createUi } from "./ui/index.js";

const JOIN_ERRORS = {
  username_taken: "Someone with a different identity is using that username. Choose another.",
  bad_username: "The server refused that username.",
  room_full: "The room is full.",
};

async function main() {
  // Without a secure context the browser hides crypto.subtle: say why instead of breaking.
  if (!globalThis.isSecureContext || !hasWebCrypto()) {
    const ui = createUi(document);
    ui.parts.loading.hidden = true;
    ui.showInsecure();
    return;
  }

  let store;
  let storeWarning = null;
  try {
    store = await openStore();
  } catch {
    store = memoryStore();
    storeWarning = "This browser refused local storage: your identity and trusted keys will be forgotten when you close the page.";
  }

  const html = document.documentElement;
  const defaultRoom = isRoomName(html.dataset.defaultRoom) ? html.dataset.defaultRoom : "lobby";
  const pageRoom = isRoomName(html.dataset.room) ? html.dataset.room : defaultRoom;
  // Opened on the server's own machine, invites name its LAN address (the server says which).
  const inviteOrigin = html.dataset.inviteOrigin || location.origin;
  const invite = (name) => inviteUrl(inviteOrigin, name, defaultRoom);

  const prefs = (await store.getSetting("notifications")) ?? {};
  const ui = createUi(document, {
    prefs,
    savePrefs: (p) => store.setSetting("notifications", p),
    rooms: {
      invite,
      qrPath: (name) => `/r/${name}/qr.svg`,
      onSelect: (name) => show(name),
      onNew: () => openRoom(newRoomName(), { made: true }),
      onUnread: () => renderRooms(),
    },
  });
  const { parts } = ui;
  parts.loading.hidden = true; // the scripts run: the "could not load" hint goes
  ui.attention.setRoom(pageRoom);
  ui.roomViews.view(pageRoom); // the page's own room gets the page's own conversation frame

  let username = "";
  let inChat = false;
  // Holds the identity for every room (rooms load it from the store when they join); never connects.
  const keeper = new ChatClient({ store, room: pageRoom, emit: (type, detail) => {
    if (type === "identity") ui.showIdentity(detail.fingerprint);
  } });

  const tab = new RoomsTab({ store, create: makeRoom, onChange: () => renderRooms() });

  const device = await openDeviceHistory({
    ui,
    room: pageRoom,
    identity: () => ({ username, fingerprint: keeper.identity?.fingerprint ?? "" }),
    send: (text) => {
      const room = tab.get(pageRoom);
      return room ? room.client.send(text) : `You are not in #${pageRoom} right now.`;
    },
  });
  let revealed = false;
  const kept = {
    received: (name, m) => (name === pageRoom ? device.received(m) : device.history.received(name, m)),
    sent: (name, record) => (name === pageRoom ? device.sent(record)
      : device.history.sent(name, record, { username, fingerprint: keeper.identity?.fingerprint ?? "" })),
  };

  /** A room other than the page's shows what this device kept of it too (the page's own
   *  room has device-history.js's "Earlier on this device"). */
  async function showKept(room) {
    const { history } = device;
    if (room.name === pageRoom || room.keptShown || history.locked || !history.keeping) return;
    room.keptShown = true;
    const earlier = ui.earlierIn(room.name, {
      onRetry: ({ seq, record }) => {
        const problem = room.client.send(record.text);
        if (problem) {
          ui.composer.showError(problem);
          return;
        }
        history.forget(seq);
        earlier.remove(seq);
      },
    });
    const last = earlier.show(await history.load(room.name, { thisPage: false }));
    if (last !== null) room.view.timeline.startAfter(last);
  }

  function makeRoom(name) {
    const room = { name, view: ui.roomViews.view(name), roster: [], status: { state: "connecting" } };
    showKept(room);
    // The default room's connection names no room (/ws, /stream): what every older page sent.
    room.client = new ChatClient({ store, room: name, socketRoom: name === defaultRoom ? null : name,
      emit: (type, detail) => onEvent(room, type, detail) });
    return room;
  }

  const isActive = (room) => tab.active === room.name && tab.get(room.name) === room;

  function onEvent(room, type, detail) {
    const { timeline } = room.view;
    switch (type) {
      case "identity":
        ui.showIdentity(detail.fingerprint);
        break;
      case "status":
        room.status = detail;
        if (isActive(room)) ui.setStatus(detail.state, detail.detail);
        renderRooms();
        break;
      case "welcome":
        username = detail.you.username;
        room.attachments = Boolean(detail.attachments);
        if (isActive(room)) ui.attachments.enable(room.attachments);
        if (detail.attachments) capabilityArrived(room);
        tab.joined(room.name);
        if (!inChat && tab.active === room.name) enterChat();
        if (!revealed && room.name === pageRoom) {
          revealed = true;
          device.revealFromAddress();
        }
        break;
      case "roster":
        room.roster = detail.participants;
        timeline.setAlone(detail.participants.filter((p) => !p.you).length === 0);
        if (isActive(room)) renderPeople(room);
        break;
      case "message":
        timeline.addMessage(detail);
        kept.received(room.name, detail);
        ui.attention.notify({ username: detail.username, text: detail.text, room: room.name,
          onOpen: () => show(room.name) });
        break;
      case "presence":
        timeline.addPresence(detail);
        break;
      case "key-changed":
        timeline.addKeyChange(detail);
        break;
      case "warning":
        timeline.addWarning(detail.text);
        break;
      case "notice":
        // A message that did not arrive is something the server did (or lost): said as a warning.
        if (detail.kind === "missed") timeline.addWarning(detail.text);
        else timeline.addNotice(detail.text);
        break;
      case "mode":
        room.verifiedOnly = detail.verifiedOnly;
        if (isActive(room) && ui.parts.verifiedOnly) ui.parts.verifiedOnly.checked = detail.verifiedOnly;
        if (isActive(room)) ui.showWithheld(room.client.withheldReasons());
        break;
      case "outgoing":
        timeline.upsertOutgoing(detail, username, (id) => retry(room, id));
        kept.sent(room.name, detail);
        break;
      case "trust":
        timeline.applyTrust(detail);
        break;
      case "join-failed":
        joinFailed(room, JOIN_ERRORS[detail.code] ?? detail.message);
        break;
      case "ended":
        if (detail.why === "replaced") replaced(room, detail.message);
        break;
      default:
        break;
    }
  }

  function renderPeople(room) {
    ui.renderParticipants(room.roster, { onAccept: (p) => onAccept(room, p), onVerify: (p) => onVerify(room, p) });
    ui.showWithheld(room.client.withheldReasons());
  }

  function renderRooms() {
    const list = tab.names().map((name) => {
      const room = tab.get(name);
      return { name, unread: room.view.timeline.unread, state: room.status.state };
    });
    ui.roomList.render(list, tab.active);
    ui.attention.setUnread(list.reduce((n, r) => n + r.unread, 0));
  }

  /** Put a room of this tab on screen; `push` records it in the address bar (Back returns). */
  function show(name, { push = true, replace = false } = {}) {
    const room = tab.get(name);
    if (!room) return;
    tab.select(name);
    ui.showRoom(name, { several: tab.names().length > 1 });
    ui.setStatus(room.status.state, room.status.detail);
    renderPeople(room);
    ui.attachments.enable(Boolean(room.attachments));
    if (ui.parts.verifiedOnly) ui.parts.verifiedOnly.checked = Boolean(room.verifiedOnly);
    renderRooms();
    const path = roomPath(name, defaultRoom);
    if (location.pathname !== path) {
      if (replace) history.replaceState({ room: name }, "", path);
      else if (push) history.pushState({ room: name }, "", path);
    }
  }

  function enterChat() {
    inChat = true;
    ui.showChat(tab.active);
    show(tab.active, { replace: true });
  }

  /** Join `rooms` (the remembered ones and this page's) as `rawName`, showing `target`. */
  async function enterRooms(rawName, rooms, target) {
    const name = normalizeUsername(rawName);
    const problem = usernameProblem(name);
    if (problem) return problem;
    await keeper.ensureIdentity(); // once, before any room joins with it
    tab.enter(name, [...rooms, target], target);
    return null;
  }

  /** One more room in this tab (New room, a room link, Back/Forward), put on screen. */
  function openRoom(name, { made = false, push = true } = {}) {
    if (!tab.username || !isRoomName(name)) return;
    const room = tab.add(name);
    show(name, { push });
    if (made) {
      room.view.timeline.addNotice(`You made #${name}. Only people with its link can find it: `
        + "share it with Copy invite link or Show QR code.");
    }
  }

  /** The join form, for the room the address bar names. */
  function showJoin(text) {
    inChat = false;
    parts.joinTitle.textContent = `Join #${roomFromPath(location.pathname, defaultRoom) ?? pageRoom}`;
    ui.showJoin(text);
  }

  function joinFailed(room, text) {
    const wasActive = tab.active === room.name;
    tab.failed(room.name, text);
    if (tab.names().length === 0) {
      showJoin(text);
      return;
    }
    if (!inChat) enterChat();
    else if (wasActive) show(tab.active, { replace: true });
    ui.roomViews.active?.timeline.addWarning(`Could not join #${room.name}: ${text}`);
  }

  function replaced(room, message) {
    const wasActive = tab.active === room.name;
    room.view.timeline.addWarning(message);
    tab.ended(room.name);
    if (tab.names().length === 0) {
      showJoin(message);
      return;
    }
    if (wasActive) show(tab.active, { replace: true });
    ui.roomViews.active?.timeline.addWarning(`#${room.name} was opened again with the same identity in another `
      + "tab or window, which took it over there. It will not reconnect here by itself.");
  }

  /** Trust is per person, not per room: what you accept or verify in one room holds in all. */
  async function everywhere(p, act) {
    for (const name of tab.names()) {
      const { client } = tab.get(name);
      for (const entry of [...client.roster.values()]) {
        if (entry.fingerprint === p.fingerprint && entry.username === p.username) await act(client, entry.sid);
      }
    }
  }

  async function onAccept(room, p) {
    const ok = await ui.confirm({
      title: `Accept ${p.username}'s new key?`,
      body: `${p.username} now uses a different identity key than the one this browser knew. A new device, a cleared browser or "New identity" does that, and so would someone else using the name. Compare the new fingerprint with ${p.username} in person or on a call you trust. Accepting makes this browser trust the new key: your messages are encrypted to it and the warning goes (the note in the conversation stays). Cancel keeps the warning and keeps your messages from ${p.username}'s new key.`,
      previous: p.previous,
      fingerprint: p.fingerprint,
      ok: "Accept new key",
    });
    if (!ok) return;
    await everywhere(p, (client, sid) => client.acceptKey(sid));
    room.view.timeline.addNotice(`You accepted ${p.username}'s new key.`);
  }

  async function onVerify(room, p) {
    const ok = await ui.confirm({
      title: `Verify ${p.username}`,
      body: `Compare this fingerprint with the one ${p.username} sees under "Your fingerprint" on their own screen, in person or on a call you trust. Confirm only if every group matches.`,
      fingerprint: p.fingerprint,
      ok: "They match",
    });
    if (ok) await everywhere(p, (client, sid) => client.markVerified(sid));
  }

  parts.verifiedOnly?.addEventListener("change", () => {
    tab.get(tab.active)?.client.setVerifiedOnly(parts.verifiedOnly.checked);
  });
  parts.joinForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    ui.joining();
    const target = roomFromPath(location.pathname, defaultRoom) ?? pageRoom;
    const { rooms } = await tab.remembered();
    const problem = await enterRooms(parts.username.value, rooms, target);
    if (problem) showJoin(problem);
  });

  ui.composer.onSend((text) => {
    const room = tab.get(tab.active);
    return room ? room.client.send(text) : "Join a room first.";
  });

  // -- files: each one is uploaded encrypted, then sent as a message that carries its key ---
  // Every room has its own session, so its own capability (from its welcome): a file goes up
  // through the room it is sent in, and comes down through the room it was received in.
  const uploads = new Map(); // localId -> {room (name), file, descriptor, dimensions, ts, controller}
  let nextUpload = 1;
  let uploadChain = Promise.resolve(); // one at a time, in the order they were chosen
  // Transfers need their room's capability: before that room's (re)join has its welcome there
  // is none, so they wait for it (a reload shows kept files before it has re-joined).
  const capabilityWaiters = new Map(); // room name -> [resolve(room)]
  const cancelled = () => Object.assign(new Error("Cancelled."), { code: "cancelled" });

  /** Resolves with room `name` of this tab once it holds a capability. */
  function capability(name, signal) {
    const room = tab.get(name);
    if (room?.client.attachments) return Promise.resolve(room);
    if (signal?.aborted) return Promise.reject(cancelled());
    return new Promise((resolve, reject) => {
      if (!capabilityWaiters.has(name)) capabilityWaiters.set(name, []);
      capabilityWaiters.get(name).push(resolve);
      signal?.addEventListener("abort", () => reject(cancelled()));
    });
  }

  function capabilityArrived(room) {
    for (const waiting of capabilityWaiters.get(room.name)?.splice(0) ?? []) waiting(room);
  }

  ui.attachments.setFetcher(async (ref, { room: name, ...options }) => {
    const room = await capability(name ?? tab.active, options.signal);
    return downloadFile(ref, { token: () => room.client.attachments?.token ?? "", ...options });
  });
  ui.setFileRenderer(({ files, mine, localId, room }) => {
    const upload = mine ? uploads.get(localId) : null;
    return upload ? ui.attachments.uploadCard(localId, upload.file, upload.descriptor)
      : ui.attachments.render(files, { room });
  });
  ui.attachments.onFiles((files) => {
    const room = tab.get(tab.active);
    if (!room) return;
    for (const file of files) sendFile(room, file);
  });

  function retry(room, localId) {
    if (uploads.has(localId)) startUpload(localId);
    else room?.client.retry(localId);
  }

  async function sendFile(room, file) {
    const problem = limitProblem(file, room.client.attachments?.maxBytes);
    if (problem) {
      ui.composer.showError(problem);
      return;
    }
    ui.composer.showError("");
    const localId = `file-${nextUpload++}`;
    const dimensions = await imageSize(file);
    const descriptor = { name: fileName(file), type: fileType(file), size: file.size, ...(dimensions ?? {}) };
    uploads.set(localId, { room: room.name, file, descriptor, dimensions, ts: Date.now(), controller: null });
    startUpload(localId);
  }

  function startUpload(localId) {
    const upload = uploads.get(localId);
    upload.controller = new AbortController();
    const { signal } = upload.controller;
    const timeline = () => ui.roomViews.view(upload.room).timeline;
    const show = (state, reason = null) => timeline().upsertOutgoing({ localId, text: "", files: [upload.descriptor],
      ts: upload.ts, state, reason }, username, (id) => retry(tab.get(upload.room), id));
    show("uploading");
    ui.attachments.uploadStart(localId, () => upload.controller.abort());
    uploadChain = uploadChain.then(async () => {
      try {
        const room = await capability(upload.room, signal);
        const token = () => room.client.attachments?.token ?? "";
        const ref = await uploadFile(upload.file, { token, signal, dimensions: upload.dimensions,
          onProgress: (done, total) => ui.attachments.uploadProgress(localId, done, total) });
        ui.attachments.uploadDone(localId);
        uploads.delete(localId);
        room.client.send("", { files: [fileRefJson(ref)], localId });
      } catch (err) {
        if (err?.code === "cancelled") {
          uploads.delete(localId);
          ui.attachments.forget(localId);
          timeline().removeOutgoing(localId);
          return;
        }
        ui.attachments.uploadFailed(localId, err?.message ?? String(err));
        show("failed", "The file was not sent.");
      }
    });
  }

  /** Leaving a room ends its transfers in progress: they would go to a room we are no longer in. */
  function cancelUploads(name) {
    for (const upload of uploads.values()) if (upload.room === name) upload.controller?.abort();
  }

  parts.leave.addEventListener("click", async () => {
    ui.layout.closePanels();
    const room = tab.get(tab.active);
    if (!room) return;
    cancelUploads(room.name);
    await tab.leave(room.name);
    room.view.timeline.clear();
    if (tab.active) {
      show(tab.active, { replace: true });
      ui.roomViews.active?.timeline.addNotice(`You left #${room.name}.`);
      return;
    }
    ui.renderParticipants([], { onAccept: () => {}, onVerify: () => {} });
    ui.setStatus("offline", "You left the chat.");
    showJoin("");
  });

  parts.newIdentity.addEventListener("click", async () => {
    ui.layout.closePanels();
    const answer = await ui.confirm({
      title: "Replace your identity?",
      body: "Your fingerprint will change for good. Everyone who knows your current key will see a key-change warning and must compare fingerprints with you again.",
      ok: "Replace identity",
      choice: { label: "Keep the history on this device (the messages stay readable here)", checked: true },
    });
    if (!answer.ok) return;
    if (!answer.checked) await device.clear();
    await keeper.newIdentity();
    // Every room joins again with the new key (join() replaces the old connection).
    for (const name of tab.names()) {
      const { client } = tab.get(name);
      client.identity = null;
      if (client.username) await client.join(client.username);
    }
  });

  window.addEventListener("popstate", () => {
    const name = roomFromPath(location.pathname, defaultRoom);
    if (!name) return;
    if (tab.has(name)) show(name, { push: false });
    else if (inChat) openRoom(name, { push: false });
  });

  // Back online: try now rather than wait out the backoff timer.
  window.addEventListener("online", () => {
    for (const name of tab.names()) tab.get(name).client.connection?.retryNow();
  });

  await keeper.loadIdentity();
  parts.username.value = (await store.getSetting("username")) ?? "";
  if (device.history.locked && device.history.keeping) ui.historyControls.promptUnlock();
  await device.showEarlier();
  const { rejoin } = await tab.remembered(pageRoom);
  if (rejoin.length && keeper.identity && parts.username.value) {
    // A reload, or another room's link opened in this tab: straight back into this tab's
    // rooms, plus this page's; the status line shows the reconnect.
    const problem = await enterRooms(parts.username.value, rejoin, pageRoom);
    if (problem) showJoin(problem);
    else enterChat();
  } else {
    showJoin("");
  }
  if (storeWarning) ui.addWarning(storeWarning);
  if (device.warning) ui.addWarning(device.warning);
  html.dataset.ready = "true";
}

main();
