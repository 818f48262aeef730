// Entry point: checks the environment, then wires the chat session to the page.

import { downloadFile, fileName, fileType, imageSize, limitProblem, uploadFile } from "./attachments.js";
import { hasWebCrypto } from "./crypto.js";
import { fileRefJson } from "./filecrypto.js";
import { ChatClient } from "./chat.js";
import { openDeviceHistory } from "./device-history.js";
import { memoryStore, openStore } from "./store.js";
import { createUi } from "./ui/index.js";

const JOIN_ERRORS = {
  username_taken: "Someone with a different identity is using that username. Choose another.",
  bad_username: "The server refused that username.",
  room_full: "The room is full.",
};

// A reload re-joins by itself: this tab was in the chat a moment ago. Per tab (sessionStorage),
// so a new tab never silently takes the session over from the one already open.
function rejoinFlag(room) {
  const key = `securechat.rejoin:${room}`;
  const storage = () => {
    try {
      return globalThis.sessionStorage ?? null;
    } catch {
      return null; // storage disabled: no automatic re-join
    }
  };
  return {
    get: () => storage()?.getItem(key) === "1",
    set: (on) => {
      try {
        if (on) storage()?.setItem(key, "1");
        else storage()?.removeItem(key);
      } catch {
        // full or refused: the next reload shows the join form, nothing worse
      }
    },
  };
}

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
  const prefs = (await store.getSetting("notifications")) ?? {};
  const ui = createUi(document, { prefs, savePrefs: (p) => store.setSetting("notifications", p) });
  ui.parts.loading.hidden = true; // the scripts run: the "could not load" hint goes

  let username = "";
  const client = new ChatClient({
    store,
    room: document.documentElement.dataset.room || undefined,
    emit: (type, detail) => handlers[type]?.(detail),
  });

  const rejoin = rejoinFlag(client.signRoom);
  const device = await openDeviceHistory({
    ui,
    room: client.signRoom,
    identity: () => ({ username, fingerprint: client.identity?.fingerprint ?? "" }),
    send: (text) => client.send(text),
  });
  let revealed = false;

  const handlers = {
    identity: ({ fingerprint }) => ui.showIdentity(fingerprint),
    status: ({ state, detail }) => ui.setStatus(state, detail),
    welcome: ({ room, you, attachments }) => {
      username = you.username;
      ui.attachments.enable(Boolean(attachments));
      if (attachments) for (const waiting of capabilityWaiters.splice(0)) waiting();
      ui.showChat(room);
      rejoin.set(true);
      if (!revealed) {
        revealed = true;
        device.revealFromAddress();
      }
    },
    roster: ({ participants }) => {
      ui.renderParticipants(participants, { onAccept, onVerify });
      ui.showWithheld(client.withheldReasons());
      ui.setAlone(participants.filter((p) => !p.you).length === 0);
    },
    message: (m) => {
      ui.addMessage(m);
      device.received(m);
      ui.attention.notify({ username: m.username, text: m.text, room: client.room });
    },
    presence: (p) => ui.addPresence(p),
    "key-changed": (k) => ui.addKeyChange(k),
    warning: ({ text }) => ui.addWarning(text),
    // A message that did not arrive is something the server did (or lost): said as a warning.
    notice: ({ kind, text }) => (kind === "missed" ? ui.addWarning(text) : ui.addNotice(text)),
    mode: ({ verifiedOnly }) => {
      ui.parts.verifiedOnly.checked = verifiedOnly;
      ui.showWithheld(client.withheldReasons());
    },
    outgoing: (record) => {
      ui.upsertOutgoing(record, username, retry);
      device.sent(record);
    },
    trust: (detail) => ui.applyTrust(detail),
    "join-failed": ({ code, message }) => {
      rejoin.set(false);
      ui.showJoin(JOIN_ERRORS[code] ?? message);
    },
    ended: ({ why, message }) => {
      rejoin.set(false);
      if (why === "replaced") ui.addWarning(message);
      ui.showJoin(why === "replaced" ? message : "");
    },
  };

  async function onAccept(p) {
    const ok = await ui.confirm({
      title: `Accept ${p.username}'s new key?`,
      body: `${p.username} now uses a different identity key than the one this browser knew. A new device, a cleared browser or "New identity" does that, and so would someone else using the name. Compare the new fingerprint with ${p.username} in person or on a call you trust. Accepting makes this browser trust the new key: your messages are encrypted to it and the warning goes (the note in the conversation stays). Cancel keeps the warning and keeps your messages from ${p.username}'s new key.`,
      previous: p.previous,
      fingerprint: p.fingerprint,
      ok: "Accept new key",
    });
    if (!ok) return;
    await client.acceptKey(p.sid);
    ui.addNotice(`You accepted ${p.username}'s new key.`);
  }

  async function onVerify(p) {
    const ok = await ui.confirm({
      title: `Verify ${p.username}`,
      body: `Compare this fingerprint with the one ${p.username} sees under "Your fingerprint" on their own screen, in person or on a call you trust. Confirm only if every group matches.`,
      fingerprint: p.fingerprint,
      ok: "They match",
    });
    if (ok) await client.markVerified(p.sid);
  }

  const { parts } = ui;
  parts.verifiedOnly.addEventListener("change", () => client.setVerifiedOnly(parts.verifiedOnly.checked));
  parts.joinForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    ui.joining();
    const problem = await client.join(parts.username.value);
    if (problem) ui.showJoin(problem);
  });

  ui.composer.onSend((text) => client.send(text));

  // -- files: each one is uploaded encrypted, then sent as a message that carries its key ---
  const token = () => client.attachments?.token ?? "";
  const uploads = new Map(); // localId -> {file, descriptor, dimensions, controller}
  let nextUpload = 1;
  let uploadChain = Promise.resolve(); // one at a time, in the order they were chosen
  // Transfers need this session's capability: before the (re)join's welcome there is none, so
  // they wait for it (a reload shows kept files before it has re-joined).
  const capabilityWaiters = [];
  function capability(signal) {
    if (client.attachments) return Promise.resolve();
    return new Promise((resolve, reject) => {
      capabilityWaiters.push(resolve);
      signal?.addEventListener("abort", () => reject(Object.assign(new Error("Cancelled."), { code: "cancelled" })));
    });
  }
  ui.attachments.setFetcher(async (ref, options) => {
    await capability(options.signal);
    return downloadFile(ref, { token, ...options });
  });
  ui.setFileRenderer(({ files, mine, localId }) => {
    const upload = mine ? uploads.get(localId) : null;
    return upload ? ui.attachments.uploadCard(localId, upload.file, upload.descriptor) : ui.attachments.render(files);
  });
  ui.attachments.onFiles((files) => {
    for (const file of files) sendFile(file);
  });

  function retry(localId) {
    if (uploads.has(localId)) startUpload(localId);
    else client.retry(localId);
  }

  async function sendFile(file) {
    const problem = limitProblem(file, client.attachments?.maxBytes);
    if (problem) {
      ui.composer.showError(problem);
      return;
    }
    ui.composer.showError("");
    const localId = `file-${nextUpload++}`;
    const dimensions = await imageSize(file);
    const descriptor = { name: fileName(file), type: fileType(file), size: file.size, ...(dimensions ?? {}) };
    uploads.set(localId, { file, descriptor, dimensions, ts: Date.now(), controller: null });
    startUpload(localId);
  }

  function startUpload(localId) {
    const upload = uploads.get(localId);
    upload.controller = new AbortController();
    const { signal } = upload.controller;
    const show = (state, reason = null) => ui.upsertOutgoing({ localId, text: "", files: [upload.descriptor],
      ts: upload.ts, state, reason }, username, retry);
    show("uploading");
    ui.attachments.uploadStart(localId, () => upload.controller.abort());
    uploadChain = uploadChain.then(async () => {
      try {
        await capability(signal);
        const ref = await uploadFile(upload.file, { token, signal, dimensions: upload.dimensions,
          onProgress: (done, total) => ui.attachments.uploadProgress(localId, done, total) });
        ui.attachments.uploadDone(localId);
        uploads.delete(localId);
        client.send("", { files: [fileRefJson(ref)], localId });
      } catch (err) {
        if (err?.code === "cancelled") {
          uploads.delete(localId);
          ui.attachments.forget(localId);
          ui.removeOutgoing(localId);
          return;
        }
        ui.attachments.uploadFailed(localId, err?.message ?? String(err));
        show("failed", "The file was not sent.");
      }
    });
  }

  parts.leave.addEventListener("click", async () => {
    ui.layout.closePanels();
    rejoin.set(false);
    await client.leave();
    ui.renderParticipants([], { onAccept, onVerify });
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
    await client.newIdentity();
  });

  // Back online: try now rather than wait out the backoff timer.
  window.addEventListener("online", () => client.connection?.retryNow());

  await client.loadIdentity();
  parts.username.value = (await store.getSetting("username")) ?? "";
  if (device.history.locked && device.history.keeping) ui.historyControls.promptUnlock();
  await device.showEarlier();
  if (rejoin.get() && client.identity && parts.username.value) {
    // Straight back into the conversation as it was; the status line shows the reconnect.
    ui.showChat(client.signRoom);
    const problem = await client.join(parts.username.value);
    if (problem) ui.showJoin(problem);
  } else {
    ui.showJoin("");
  }
  if (storeWarning) ui.addWarning(storeWarning);
  if (device.warning) ui.addWarning(device.warning);
  document.documentElement.dataset.ready = "true";
}

main();
