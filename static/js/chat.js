// The chat session without the DOM: join/rejoin, roster verification, TOFU trust, the §7.4
// receive checks, the outbox (queue while offline, ack, stale_recipients re-send).
// The page (main.js/ui.js) listens to events; node tests drive it with a fake WebSocket.

import * as c from "./crypto.js";
import { fileRefJson, parseFiles } from "./filecrypto.js";
import { nameKeys, scriptProblem } from "./names.js";
import { joinFrame, leaveFrame, recipientsFrame, rekeyFrame, rosterFrame } from "./protocol.js";
import { Connection, CLOSE_REPLACED, wsUrl } from "./transport.js";

export const DEFAULT_ROOM = "lobby";
const SEEN_IDS_PER_SENDER = 2000;
const MISSING_KEPT = 200; // gaps remembered per sender, so a late message can still fill one
// How often a connected client looks at its session's age (rotation, §4).
export const ROTATION_CHECK_MS = 60000;
// After a drop, queued messages wait this long for the people who were here to rejoin too;
// otherwise the first browser back after a server restart would send only to itself.
export const REJOIN_GRACE_MS = 5000;
// A message the server has not confirmed by then is shown as failed, with Retry: "Sending…"
// must never hang. A late ack still turns it into delivered.
export const SEND_TIMEOUT_MS = 10000;
// A server that never answers a `recipients` request must not make the ghost check pass (§7.4):
// after this long without the list the receiver is warned that it could not check.
export const RECIPIENTS_TIMEOUT_MS = 10000;
// The status line's addition while the HTTP transport carries the chat (transport.js).
export const HTTP_FALLBACK_TEXT = "via HTTP fallback (WebSocket unavailable)";
// While its stream is being resumed: what was sent to us waits on the server, nothing is lost.
export const HTTP_RESUMING_TEXT = "The connection was interrupted; resuming where it left off.";

// Join errors after which retrying the same join cannot help.
const FATAL_JOIN_ERRORS = new Set(["bad_username", "username_taken", "identity_in_use", "bad_key",
  "bad_signature", "room_full", "unsupported_version", "too_many_rooms", "too_many_rooms_joined"]);

const SEND_ERROR_TEXT = {
  replay: "The server saw this message as a replay.",
  clock_skew: "Your device clock differs from the server's by more than the allowed few minutes. Correct the clock, then retry.",
  rate_limited: "The server limits how fast messages can be sent. Wait a moment, then retry.",
  bad_recipient_key: "A recipient's key was refused by the server.",
  server_error: "The server could not store the message.",
  stale_recipients: "The participant list changed twice while sending.",
  bad_frame: "The server refused the message as malformed.",
  bad_attachment: "The server no longer has the attached file (it was deleted or never finished uploading). Attach it again.",
};

/** Sequence numbers run per (identity, stream): another identity cannot borrow a stream id. */
function streamKey(entry) {
  return `${entry.fingerprint}/${entry.stream}`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/**
 * emit(type, detail) events:
 *   identity {fingerprint}           status {state, detail, transport}
 *   welcome {room, you, attachments} roster {participants}
 *   message {id, sid, username, fingerprint, ts, text, files, trust, verified, seq, late,
 *       before}
 *       late: it filled a gap; before: the id of the first later message from that sender shown
 *   warning {text, kind?}            notice {text, kind: "joined"|"left"|"missed"|"late"}
 *   outgoing {localId, text, files, ts, state, reason, withheld}
 *   mode {verifiedOnly}
 *   trust {fingerprint, trust, verified}
 *   presence {change: "joined"|"left", username, fingerprint}   (after the welcome only)
 *   key-changed {username, fingerprint, previous}               (once per new key)
 *   join-failed {code, message}      ended {why, message}
 * `withheld` lists the usernames a sent message was not encrypted to (key not accepted or
 * not verifiable); participants in `roster` carry `previous`, the pinned fingerprint, while
 * their trust is "changed".
 */
export class ChatClient {
  constructor({ store, emit, url, room = DEFAULT_ROOM, socketRoom = room, WebSocketImpl, EventSourceImpl, fetchImpl,
    now = Date.now, setTimer, clearTimer, random, firstFrameTimeoutMs, recipientsTimeoutMs = RECIPIENTS_TIMEOUT_MS }) {
    this.store = store;
    this.emit = emit;
    this.url = url ?? (globalThis.location ? wsUrl(globalThis.location) : null);
    this.signRoom = room;
    // What the connection's opening request names (?room=, §1); null: the server's default room.
    this.socketRoom = socketRoom;
    this.room = room;
    this.now = now;
    this.connOptions = { WebSocketImpl, EventSourceImpl, fetchImpl, setTimer, clearTimer, random, firstFrameTimeoutMs };
    this.setTimer = setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = clearTimer ?? ((id) => clearTimeout(id));
    this.expectBack = new Set(); // fingerprints present before a drop, not yet back
    this.graceTimer = null;
    this.identity = null;
    this.username = null;
    this.session = null;
    this.joined = false; // welcome received on the current socket
    this.connection = null;
    this.roster = new Map(); // sid -> entry
    // One stream per page (§7.3): sequence numbers run per (sender stream, recipient stream)
    // and survive reconnects and key rotations, so a forced reconnect cannot hide a drop.
    this.stream = c.randomId();
    this.challenge = null;
    this.rotating = null; // the next session while a rekey is in flight
    this.rotationTimer = null;
    this.sendSeq = new Map(); // recipient stream -> last sequence number sent to it
    this.recv = new Map(); // sender stream -> {last, missing: Map seq -> true, shown: [[seq, id]]}
    this.knownSids = new Set(); // every session this connection was told about
    this.checkedTo = new Set(); // recipient commitments already checked against the full list
    this.pendingLists = new Map(); // message id -> {to, n, sender, timer}: recipients asked for
    this.recipientsTimeoutMs = recipientsTimeoutMs;
    this.verifiedOnly = false;
    this.seenIds = new Map(); // sender fingerprint -> Set of message ids
    this.outbox = new Map(); // localId -> outgoing record
    this.inflight = new Map(); // message id -> localId
    this.awaitingRoster = []; // records to re-send once after stale_recipients
    this.limits = { max_clock_skew_ms: c.MAX_CLOCK_SKEW_MS };
    this.serverOffset = 0;
    this.chain = Promise.resolve();
    this.nextLocalId = 1;
    this.announcedKeys = new Set(); // "username fingerprint" of key changes already reported
  }

  /** Run tasks one at a time: frame handling is async (verification) but order matters. */
  enqueue(task) {
    this.chain = this.chain.then(task).catch((err) => {
      this.emit("warning", { text: `Internal error: ${err?.message ?? err}` });
    });
    return this.chain;
  }

  async loadIdentity() {
    this.identity = await this.store.getIdentity();
    if (this.identity) this.emit("identity", { fingerprint: this.identity.fingerprint });
    return this.identity;
  }

  async ensureIdentity() {
    if (!this.identity) await this.loadIdentity();
    if (!this.identity) {
      this.identity = await c.generateIdentity();
      await this.store.setIdentity(this.identity);
      this.emit("identity", { fingerprint: this.identity.fingerprint });
    }
    return this.identity;
  }

  /** Start (or restart) the chat as `rawUsername`. Returns an error text or null. */
  async join(rawUsername) {
    const username = c.normalizeUsername(rawUsername);
    const problem = c.usernameProblem(username);
    if (problem) return problem;
    await this.ensureIdentity();
    this.username = username;
    await this.store.setSetting("username", username);
    this.connection?.stop();
    // Events of a connection we already replaced (stopped, still closing) are ignored.
    const connection = new Connection({
      url: this.url,
      room: this.socketRoom, // ?room=<name>: the server's hello confirms it (§1)
      ...this.connOptions,
      onOpen: () => {}, // the server speaks first: the join answers its hello (challenge)
      onFrame: (frame) => this.enqueue(() => connection === this.connection && this.onFrame(frame)),
      onDrop: (info) => this.enqueue(() => connection === this.connection && this.onDrop(info)),
      onInterrupt: ({ resuming }) => this.enqueue(() => connection === this.connection && this.onInterrupt(resuming)),
    });
    this.connection = connection;
    this.emit("status", { state: "connecting" });
    connection.start();
    return null;
  }

  /** A fresh session key and its signed statement (§4) for the server's latest challenge. */
  async newSession(challenge) {
    const session = await c.generateSession();
    session.issued = this.now();
    session.sig = await c.signSession(this.identity.privateKey, this.signRoom, this.username, session.spki,
      session.issued, challenge, this.stream);
    session.challenge = challenge;
    return session;
  }

  async sendJoin(challenge) {
    // A fresh session key for every join (§3): nothing wrapped before survives this session.
    this.joined = false;
    this.rotating = null;
    this.attachments = null; // the capability dies with the session; the next welcome has a new one
    this.session = await this.newSession(challenge);
    this.verifiedOnly = Boolean(await this.store.getSetting(`verified-only:${this.signRoom}`));
    this.emit("mode", { verifiedOnly: this.verifiedOnly });
    this.connection.send(joinFrame({ username: this.username, identityKey: this.identity.spki,
      sessionKey: this.session.spki, issued: this.session.issued, challenge, stream: this.stream,
      sessionSig: this.session.sig }));
  }

  /** Rotate the session key once it is old (§4): invisible to people, checked every minute. */
  async maybeRotate() {
    if (!this.joined || this.rotating || !this.connection?.isOpen || !this.challenge) return false;
    if (this.now() - this.session.issued < c.SESSION_ROTATE_MS) return false;
    const next = await this.newSession(this.challenge);
    this.rotating = next;
    this.connection.send(rekeyFrame({ sessionKey: next.spki, issued: next.issued, challenge: next.challenge,
      sessionSig: next.sig }));
    return true;
  }

  scheduleRotationCheck() {
    // Its own timer, not the injectable reconnect timers: tests drive rotation with maybeRotate().
    clearTimeout(this.rotationTimer);
    this.rotationTimer = setTimeout(() => this.enqueue(async () => {
      await this.maybeRotate();
      if (this.connection) this.scheduleRotationCheck();
    }), ROTATION_CHECK_MS);
    this.rotationTimer?.unref?.(); // node: a pending check must not keep the process alive
  }

  /** The per-room Verified only mode (§7.3 recipients): send only to people you verified. */
  async setVerifiedOnly(on) {
    this.verifiedOnly = Boolean(on);
    await this.store.setSetting(`verified-only:${this.signRoom}`, this.verifiedOnly);
    this.emit("mode", { verifiedOnly: this.verifiedOnly });
    this.emitRoster();
  }

  leave() {
    const connection = this.connection;
    this.expectBack.clear();
    this.clearTimer(this.graceTimer);
    this.graceTimer = null;
    clearTimeout(this.rotationTimer);
    this.rotationTimer = null;
    for (const { timer } of this.pendingLists.values()) this.clearTimer(timer);
    this.pendingLists.clear();
    this.connection = null;
    this.joined = false;
    this.roster.clear();
    this.failInflight("You left before the server confirmed this message.");
    for (const record of this.outbox.values()) {
      if (record.state === "queued") this.setOutgoing(record, "failed", "You left the chat before it was sent.");
    }
    return new Promise((resolve) => {
      if (!connection) return resolve();
      // Resolve once the socket is closed so a following join does not race the old session.
      connection.onDrop = () => resolve();
      connection.stop(leaveFrame());
      if (connection.closed) resolve();
      this.emit("status", { state: "offline", detail: "You left the chat." });
      this.emit("ended", { why: "left", message: "You left the chat." });
    });
  }

  /** Replace the identity key (the old one is gone for good); rejoin when in the chat. */
  async newIdentity() {
    const wasIn = this.connection !== null;
    if (wasIn) await this.leave();
    this.identity = await c.generateIdentity();
    await this.store.setIdentity(this.identity);
    this.emit("identity", { fingerprint: this.identity.fingerprint });
    if (wasIn && this.username) await this.join(this.username);
  }

  // -- incoming frames ------------------------------------------------------------------

  async onFrame(frame) {
    switch (frame.type) {
      case "hello": return this.onHello(frame);
      case "welcome": return this.onWelcome(frame);
      case "rekeyed": return this.onRekeyed(frame);
      case "recipients": return this.onRecipients(frame);
      case "joined": return this.onJoined(frame.participant);
      case "joins": return this.onJoins(frame.participants);
      case "left": return this.onLeft(frame);
      case "roster": return this.onRoster(frame);
      case "msg": return this.onMsg(frame);
      case "ack": return this.onAck(frame);
      case "error": return this.onError(frame);
      default: return undefined; // unknown types are for newer clients
    }
  }

  /** §1: the hello names the room this connection is in; we join only the room we asked for,
   *  answering the hello's challenge (§4). */
  onHello(frame) {
    if (frame.room === this.signRoom) return this.sendJoin(typeof frame.challenge === "string" ? frame.challenge : "");
    const connection = this.connection;
    this.connection = null;
    connection?.stop();
    const named = typeof frame.room === "string" ? `"${frame.room.slice(0, 40)}"` : "no room";
    const message = `The server answered for ${named}, not #${this.signRoom}: nothing was sent. Reload the page.`;
    this.emit("status", { state: "offline", detail: message });
    this.emit("join-failed", { code: "wrong_room", message });
    return undefined;
  }

  async onWelcome(frame) {
    this.room = frame.room;
    this.challenge = typeof frame.challenge === "string" ? frame.challenge : null;
    // §6.3: security limits are our own constants; the server may only make them stricter.
    const skew = frame.limits?.max_clock_skew_ms;
    this.limits = { max_clock_skew_ms: Number.isSafeInteger(skew) && skew > 0
      ? Math.min(skew, c.MAX_CLOCK_SKEW_MS) : c.MAX_CLOCK_SKEW_MS };
    if (Number.isSafeInteger(frame.server_time)) this.serverOffset = frame.server_time - this.now();
    if (frame.you?.sid !== this.session.sid || frame.you?.fingerprint !== this.identity.fingerprint) {
      this.emit("warning", { text: "The server's welcome does not match our own keys." });
    }
    this.knownSids.clear();
    await this.rebuildRoster(frame.participants ?? []);
    this.joined = true;
    // Lists asked for on a connection that dropped are asked for again on this one.
    for (const id of this.pendingLists.keys()) this.askForRecipients(id);
    this.connection.resetBackoff();
    this.scheduleRotationCheck();
    // This session's capability for the attachment endpoints (§10.2); null when they are off.
    const a = frame.attachments;
    this.attachments = a && typeof a.token === "string" && Number.isSafeInteger(a.max_bytes)
      ? { token: a.token, maxBytes: a.max_bytes } : null;
    this.emit("welcome", { room: this.room, you: { sid: this.session.sid, username: this.username,
      fingerprint: this.identity.fingerprint }, attachments: this.attachments });
    this.emitConnected();
    if (!(await this.flushWhenComplete()) && this.graceTimer === null) {
      this.graceTimer = this.setTimer(() => this.enqueue(() => this.flushWhenComplete(true)), REJOIN_GRACE_MS);
    }
  }

  /** Send the queue once everyone from before the drop is back (or `force`). */
  async flushWhenComplete(force = false) {
    if (!this.joined) return false;
    const present = new Set([...this.roster.values()].map((e) => e.fingerprint));
    if (!force && [...this.expectBack].some((fp) => !present.has(fp))) return false;
    this.expectBack.clear();
    this.clearTimer(this.graceTimer);
    this.graceTimer = null;
    for (const record of this.outbox.values()) {
      if (record.state === "queued") await this.transmit(record);
    }
    return true;
  }

  async rebuildRoster(participants) {
    const fresh = new Map();
    for (const p of participants) {
      const entry = await this.checkParticipant(p);
      if (entry) {
        fresh.set(entry.sid, entry);
        this.knownSids.add(entry.sid);
      }
    }
    this.roster = fresh;
    this.emitRoster();
  }

  /** A roster entry whose signatures and hashes are checked (§4) and whose trust is known. */
  async checkParticipant(p) {
    if (!p || typeof p.sid !== "string" || typeof p.username !== "string") return null;
    const entry = { sid: p.sid, username: p.username, fingerprint: String(p.fingerprint ?? ""),
      joined: p.joined, issued: p.issued, stream: p.stream, ok: false, problem: null, trust: "new",
      verified: false, previous: null, identityKey: null, sessionKey: null };
    // §5 again, whatever the server admitted: a name it should have refused is never a recipient.
    const nameProblem = c.usernameProblem(p.username) ?? scriptProblem(p.username);
    if (nameProblem) {
      entry.problem = `its name is not allowed: ${nameProblem.replace(/\.$/, "")}`;
      return entry;
    }
    try {
      Object.assign(entry, await c.verifyParticipant(this.room, p), { ok: true });
    } catch (err) {
      // Shown with a warning and never used as a recipient.
      entry.problem = err.message;
      return entry;
    }
    // §4: a session statement older than our own maximum age is refused, whatever the server says.
    const stale = c.sessionAgeProblem(p.issued, this.now(), c.SESSION_MAX_AGE_MS, this.limits.max_clock_skew_ms);
    if (stale) {
      Object.assign(entry, { ok: false, problem: stale });
      return entry;
    }
    const isSelf = entry.fingerprint === this.identity.fingerprint;
    entry.trust = isSelf ? "self" : await this.pinTrust(entry);
    entry.verified = !isSelf && entry.trust !== "changed"
      && (await this.store.isVerified(entry.username, entry.fingerprint));
    if (entry.trust === "changed") this.announceKeyChange(entry);
    return entry;
  }

  /**
   * Trust on first use, on the name's skeleton (§5): a new name is pinned to its fingerprint;
   * a pinned name under another key — or a name that merely looks like a pinned one
   * ("a1ice", "аlice") under another key — is a key change, never a first meeting.
   */
  async pinTrust(entry) {
    const pin = await this.store.getPin(entry.username);
    if (pin?.fingerprint === entry.fingerprint) return "known";
    if (pin) {
      if (pin.username !== entry.username) entry.looksLike = pin.username;
      entry.previous = pin.fingerprint;
      return "changed";
    }
    const alike = await this.store.pinsLike(entry.username);
    const other = alike.find((pinned) => pinned.fingerprint !== entry.fingerprint);
    if (other) {
      entry.looksLike = other.username;
      entry.previous = other.fingerprint;
      return "changed";
    }
    await this.store.setPin(entry.username, { fingerprint: entry.fingerprint, since: this.now() });
    return "new";
  }

  /** The timeline keeps a key change once, however often the roster is rebuilt. */
  announceKeyChange(entry) {
    const key = `${nameKeys(entry.username)[0]} ${entry.fingerprint}`;
    if (this.announcedKeys.has(key)) return;
    this.announcedKeys.add(key);
    this.emit("key-changed", { username: entry.username, fingerprint: entry.fingerprint,
      previous: entry.previous, looksLike: entry.looksLike ?? null });
  }

  /** Several joins of one moment in one frame (§6.2): exactly that many `joined` frames, in
   *  order, each entry checked on its own; the roster is redrawn once, at the end. */
  async onJoins(participants) {
    if (!Array.isArray(participants)) return;
    for (const participant of participants) await this.onJoined(participant, { batch: true });
    this.emitRoster();
    if (this.expectBack.size) await this.flushWhenComplete();
  }

  async onJoined(participant, { batch = false } = {}) {
    const entry = await this.checkParticipant(participant);
    if (!entry) return;
    this.knownSids.add(entry.sid);
    // A session replaced under the same name (§5) leaves no stale twin behind.
    const key = nameKeys(entry.username)[0];
    let returning = false;
    for (const [sid, other] of this.roster) {
      if (nameKeys(other.username)[0] === key) {
        this.roster.delete(sid);
        returning = true;
      }
    }
    this.roster.set(entry.sid, entry);
    if (!batch) this.emitRoster();
    if (!returning) this.emit("presence", { change: "joined", username: entry.username, fingerprint: entry.fingerprint });
    if (!batch && this.expectBack.size) await this.flushWhenComplete();
  }

  onLeft(frame) {
    const entry = this.roster.get(frame.sid);
    if (!entry) return;
    this.roster.delete(frame.sid);
    this.emitRoster();
    this.emit("presence", { change: "left", username: entry.username, fingerprint: entry.fingerprint });
  }

  /** Someone's session key rotated (§4): swap it in place, silently; ours too. */
  async onRekeyed(frame) {
    const old = this.roster.get(frame.old);
    const own = frame.old === this.session?.sid;
    if (own && this.rotating && frame.participant?.sid === this.rotating.sid) {
      this.session = this.rotating;
      this.rotating = null;
      if (typeof frame.challenge === "string") this.challenge = frame.challenge;
    }
    const entry = await this.checkParticipant(frame.participant);
    if (!entry) return;
    // The same person with a new key: same identity, name and stream, or it is not a rotation.
    if (old && (old.fingerprint !== entry.fingerprint || old.username !== entry.username
      || old.stream !== entry.stream)) {
      entry.ok = false;
      entry.problem = "the server presented a key rotation that changes who this is";
    }
    this.roster.delete(frame.old);
    this.roster.set(entry.sid, entry);
    this.knownSids.add(entry.sid);
    this.emitRoster();
    if (own) await this.flushWhenComplete();
  }

  async onRoster(frame) {
    await this.rebuildRoster(frame.participants ?? []);
    const waiting = this.awaitingRoster;
    this.awaitingRoster = [];
    for (const record of waiting) await this.transmit(record);
  }

  emitRoster() {
    // One key under two names (§5): the server should have refused it; say so on both.
    const byKey = new Map();
    for (const e of this.roster.values()) {
      if (e.ok) byKey.set(e.fingerprint, [...(byKey.get(e.fingerprint) ?? []), e.username]);
    }
    for (const e of this.roster.values()) {
      const names = (byKey.get(e.fingerprint) ?? []).filter((n) => n !== e.username);
      e.sameKeyAs = names.length ? names : null;
    }
    const participants = [...this.roster.values()].map((e) => ({
      sid: e.sid, username: e.username, fingerprint: e.fingerprint, ok: e.ok, problem: e.problem,
      trust: e.trust, verified: e.verified, looksLike: e.looksLike ?? null, previous: e.previous,
      sameKeyAs: e.sameKeyAs ?? null,
      you: this.session !== null && e.sid === this.session.sid,
    }));
    this.emit("roster", { participants });
  }

  async onMsg(frame) {
    const sender = this.roster.get(frame.from);
    const name = sender?.username ?? "someone";
    const warn = (why) => this.emit("warning", {
      text: `A message from ${name} was not shown: ${why}.`, ts: this.now() });
    if (!sender) return warn("the sender is not in the room");
    if (!sender.ok) return warn("the sender's session key did not verify");
    let opened;
    let files;
    try {
      opened = await c.openMessage(frame, this.room, sender, this.session);
      files = parseFiles(opened.body);
    } catch (err) {
      const reasons = { bad_signature: "its signature, key or sequence number does not match what the sender signed",
        no_decrypt: "it was not addressed to us or does not decrypt", bad_plaintext: "it is malformed",
        bad_reference: "its attachment is malformed" };
      return warn(reasons[err.code] ?? "it is malformed");
    }
    const seen = this.seenIds.get(sender.fingerprint) ?? new Set();
    const state = this.recv.get(streamKey(sender)) ?? { last: 0, missing: new Map(), shown: [] };
    this.recv.set(streamKey(sender), state);
    const late = state.missing.has(opened.seq);
    if (seen.has(frame.id) || (opened.seq <= state.last && !late)) {
      return warn("it repeats a message already received");
    }
    if (Math.abs(frame.ts - this.now()) > this.limits.max_clock_skew_ms) {
      if (late) state.missing.delete(opened.seq);
      return warn(`it was sent at ${new Date(frame.ts).toISOString()}, too far from this device's clock${late ? " (it arrived late)" : ""}`);
    }
    seen.add(frame.id);
    if (seen.size > SEEN_IDS_PER_SENDER) seen.delete(seen.values().next().value);
    this.seenIds.set(sender.fingerprint, seen);
    let before = null;
    if (late) {
      state.missing.delete(opened.seq);
      before = state.shown.find(([seq]) => seq > opened.seq)?.[1] ?? null;
      this.emit("notice", { kind: "late", text: `A message from ${name} arrived late and is shown in its place.`,
        ts: this.now(), sender: sender.fingerprint, missing: this.missingFrom(sender) });
    } else {
      const gap = opened.seq - state.last - 1;
      for (let seq = state.last + 1; seq < opened.seq; seq += 1) state.missing.set(seq, true);
      while (state.missing.size > MISSING_KEPT) state.missing.delete(state.missing.keys().next().value);
      state.last = opened.seq;
      if (gap > 0) {
        this.emit("notice", { kind: "missed", ts: this.now(), sender: sender.fingerprint, count: gap,
          text: `${plural(gap, "message")} from ${name} did not arrive.` });
      }
    }
    state.shown.push([opened.seq, frame.id]);
    state.shown.sort((x, y) => x[0] - y[0]);
    if (state.shown.length > SEEN_IDS_PER_SENDER) state.shown.shift();
    await this.checkRecipients(frame, sender, opened);
    if (frame.from === this.session.sid && this.inflight.has(frame.id)) {
      return undefined; // our own echo: already on screen; the ack that follows confirms it
    }
    this.emit("message", { id: frame.id, sid: frame.from, username: sender.username,
      fingerprint: sender.fingerprint, ts: frame.ts, text: opened.text, files: files.map(fileRefJson), trust: sender.trust,
      verified: sender.verified, seq: opened.seq, late, before });
  }

  missingFrom(sender) {
    return this.recv.get(streamKey(sender))?.missing.size ?? 0;
  }

  /**
   * Ghosts (§7.4): a message's signed `to` commits to every recipient. If it is not the set of
   * sessions we know, fetch the full list, check it against `to`, and warn about strangers.
   */
  async checkRecipients(frame, sender, opened) {
    if (this.checkedTo.has(frame.to)) return;
    const expected = [...this.roster.values()].filter((e) => e.ok).map((e) => e.sid);
    if (expected.length === opened.n && (await c.recipientsCommitment(expected)) === frame.to) {
      this.checkedTo.add(frame.to);
      return;
    }
    this.pendingLists.set(frame.id, { to: frame.to, n: opened.n, sender: sender.username, timer: null });
    this.askForRecipients(frame.id);
  }

  askForRecipients(id) {
    const pending = this.pendingLists.get(id);
    this.clearTimer(pending.timer);
    pending.timer = this.setTimer(() => this.enqueue(() => this.recipientsTimedOut(id)), this.recipientsTimeoutMs);
    if (this.joined) this.connection?.send(recipientsFrame(id));
  }

  /** No list came: say so rather than let silence pass the check. */
  recipientsTimedOut(id) {
    const pending = this.pendingLists.get(id);
    if (!pending) return;
    if (!this.joined) return this.askForRecipients(id); // asked again after the next welcome
    this.pendingLists.delete(id);
    this.emit("warning", { kind: "ghost", ts: this.now(),
      text: `The server did not say who else received ${pending.sender}'s message; it may also have gone to someone hidden from you.` });
  }

  async onRecipients(frame) {
    const pending = this.pendingLists.get(frame.id);
    if (!pending) return;
    this.pendingLists.delete(frame.id);
    this.clearTimer(pending.timer);
    const sids = Array.isArray(frame.sids) ? frame.sids.filter((x) => typeof x === "string") : [];
    if (sids.length !== pending.n || (await c.recipientsCommitment(sids)) !== pending.to) {
      this.emit("warning", { kind: "ghost", ts: this.now(),
        text: `The server's list of who received ${pending.sender}'s message does not match what ${pending.sender} signed.` });
      return;
    }
    const strangers = sids.filter((sid) => !this.knownSids.has(sid));
    if (strangers.length === 0) {
      this.checkedTo.add(pending.to);
      return;
    }
    this.emit("warning", { kind: "ghost", ts: this.now(), count: strangers.length,
      text: `⚠ ${pending.sender}'s message was also sent to ${plural(strangers.length, "session")} you cannot see. Someone hidden from you may be reading this conversation.` });
  }

  /** Relayed and logged (§6.2): delivered, and to how many others. */
  onAck(frame) {
    const localId = this.inflight.get(frame.id);
    const record = this.outbox.get(localId);
    if (!record) return;
    this.inflight.delete(frame.id);
    this.clearTimer(record.timer);
    const others = Number.isSafeInteger(frame.recipients) ? frame.recipients - 1 : null;
    let reach = others === null ? null : others === 0 ? "only you can read it"
      : `to ${others} other${others === 1 ? "" : "s"}`;
    if (reach && record.withheldWhy?.length) {
      reach += ` · not sent to ${record.withheldWhy.map((w) => `${w.username} (${w.why})`).join(", ")}`;
    }
    this.setOutgoing(record, "delivered", reach);
    this.outbox.delete(localId);
    for (const [id, other] of this.inflight) if (other === localId) this.inflight.delete(id);
  }

  async onError(frame) {
    if (!this.joined) {
      if (FATAL_JOIN_ERRORS.has(frame.code)) {
        const connection = this.connection;
        this.connection = null;
        connection?.stop();
        this.emit("status", { state: "offline", detail: frame.message });
        this.emit("join-failed", { code: frame.code, message: frame.message ?? frame.code });
      } else {
        this.emit("warning", { text: `The server refused the join: ${frame.message ?? frame.code}` });
      }
      return;
    }
    if (frame.code === "unknown_message" && this.pendingLists.has(frame.id)) {
      const { sender, timer } = this.pendingLists.get(frame.id);
      this.pendingLists.delete(frame.id);
      this.clearTimer(timer);
      this.emit("warning", { kind: "ghost", ts: this.now(),
        text: `Could not check who else received ${sender}'s message: the server no longer has its recipient list.` });
      return;
    }
    const record = this.outbox.get(this.inflight.get(frame.id));
    if (!record) {
      this.emit("warning", { text: `The server reported: ${frame.message ?? frame.code}` });
      return;
    }
    this.inflight.delete(frame.id);
    this.clearTimer(record.timer);
    if (frame.code === "stale_recipients" && !record.resent) {
      // §7.5: refresh the roster, then re-send once with a new id (nothing was relayed).
      record.resent = true;
      this.setOutgoing(record, "sending");
      this.awaitingRoster.push(record);
      this.connection.send(rosterFrame());
      return;
    }
    let reason = SEND_ERROR_TEXT[frame.code] ?? (frame.message || frame.code);
    if (frame.code === "clock_skew") {
      const minutes = Math.round(Math.abs(this.serverOffset) / 60000);
      reason += ` (difference: about ${minutes} min)`;
    }
    this.setOutgoing(record, "failed", reason);
  }

  emitConnected() {
    const { transport } = this.connection;
    this.emit("status", { state: "connected", transport,
      ...(transport === "http" ? { detail: HTTP_FALLBACK_TEXT } : {}) });
  }

  /** The HTTP stream broke and is being resumed (nothing lost yet), or it is back. */
  onInterrupt(resuming) {
    if (!this.joined) return;
    if (resuming) {
      this.emit("status", { state: "reconnecting", transport: "http", detail: HTTP_RESUMING_TEXT });
    } else {
      this.emitConnected();
    }
  }

  async onDrop({ code, reason, willRetry, delay }) {
    if (this.joined && this.expectBack.size === 0) {
      for (const e of this.roster.values()) {
        if (e.ok && e.fingerprint !== this.identity.fingerprint) this.expectBack.add(e.fingerprint);
      }
    }
    this.joined = false;
    this.rotating = null;
    this.failInflight("The connection dropped before the server confirmed this message; it may or may not have arrived.");
    if (code === CLOSE_REPLACED) {
      this.connection = null;
      const message = "This chat was opened again with the same identity (another tab or window), which replaced this one. It will not reconnect by itself.";
      this.emit("status", { state: "offline", detail: "Replaced by a newer session." });
      this.emit("ended", { why: "replaced", message });
      return;
    }
    if (willRetry) {
      const seconds = Math.max(1, Math.round(delay / 1000));
      const why = code === 1001 ? "The server is restarting." : code === 1008 ? `The server closed the connection (${reason || "policy"}).` : "The connection was lost.";
      this.emit("status", { state: "reconnecting", detail: `${why} Retrying in ${seconds} s.` });
    }
  }

  failInflight(reason) {
    for (const localId of this.inflight.values()) {
      const record = this.outbox.get(localId);
      if (record) {
        this.clearTimer(record.timer);
        if (record.state === "sending") this.setOutgoing(record, "failed", reason);
      }
    }
    this.inflight.clear();
    for (const record of this.awaitingRoster) this.setOutgoing(record, "failed", reason);
    this.awaitingRoster = [];
  }

  // -- outgoing ---------------------------------------------------------------------------

  /**
   * Queue `text`; it goes out now when connected, otherwise at the next welcome. `files` are
   * uploaded file references (§10.4) the message carries; `localId` lets the page keep the
   * article it already shows for them (the upload's).
   */
  send(text, { files = [], localId = null } = {}) {
    if (typeof text !== "string" || (!text.trim() && !files.length)) return null;
    if ([...text].length > c.MAX_TEXT_CHARS) return `Messages can have at most ${c.MAX_TEXT_CHARS} characters.`;
    const record = { localId: localId ?? `out-${this.nextLocalId++}`, text, files, ts: this.now(), state: "queued",
      reason: null, resent: false, id: null, withheld: [], timer: null };
    this.outbox.set(record.localId, record);
    const now = this.joined && this.expectBack.size === 0;
    this.setOutgoing(record, "queued", now ? null : "Offline: it will be sent when the connection is back.");
    if (now) this.enqueue(() => this.transmit(record));
    return null;
  }

  retry(localId) {
    const record = this.outbox.get(localId);
    if (!record || record.state !== "failed") return;
    record.resent = false;
    const now = this.joined && this.expectBack.size === 0;
    this.setOutgoing(record, "queued", now ? null : "Offline: it will be sent when the connection is back.");
    if (now) this.enqueue(() => this.transmit(record));
  }

  /** Why an entry gets nothing from us now, or null when it is a recipient. */
  withheldBecause(e) {
    if (e.sid === this.session?.sid) return null;
    if (!e.ok) return "keys not verifiable";
    if (c.sessionAgeProblem(e.issued, this.now(), c.SESSION_MAX_AGE_MS, this.limits.max_clock_skew_ms)) {
      return "session expired";
    }
    if (e.trust === "changed") return "key not accepted";
    if (this.verifiedOnly && !e.verified) return "not verified";
    return null;
  }

  /** Who a message is wrapped to: checked, fresh sessions (and, in Verified only, verified people). */
  recipients() {
    return [...this.roster.values()].filter((e) => this.withheldBecause(e) === null);
  }

  withheld() {
    return this.withheldReasons().map((w) => w.username);
  }

  /** Everyone a message would not be wrapped to now, with why: [{username, why}]. */
  withheldReasons() {
    return [...this.roster.values()].map((e) => ({ username: e.username, why: this.withheldBecause(e) }))
      .filter((w) => w.why !== null);
  }

  async transmit(record) {
    if (!this.joined || !this.connection?.isOpen || this.rotating) {
      this.setOutgoing(record, "queued", this.rotating ? null : "Offline: it will be sent when the connection is back.");
      return;
    }
    const recipients = this.recipients();
    record.withheld = this.withheld();
    if (!recipients.some((r) => r.sid === this.session.sid)) {
      recipients.push({ sid: this.session.sid, sessionKey: this.session.publicKey, stream: this.stream,
        fingerprint: this.identity.fingerprint });
    }
    // A re-send (stale roster, Retry) keeps the sequence numbers it was first given, so its
    // recipients see it arrive late in its place rather than a gap and a stranger (§7.4).
    record.seqs = record.seqs ?? new Map();
    const claimed = recipients.map((r) => {
      const key = streamKey(r);
      if (!record.seqs.has(key)) {
        const seq = (this.sendSeq.get(key) ?? 0) + 1;
        this.sendSeq.set(key, seq);
        record.seqs.set(key, seq);
      }
      return { ...r, seq: record.seqs.get(key) };
    });
    const frame = await c.sealMessage({
      identityPrivateKey: this.identity.privateKey, fingerprint: this.identity.fingerprint,
      senderSid: this.session.sid, room: this.room, text: record.text, recipients: claimed, ts: this.now(),
      extra: record.files.length ? { files: record.files.map(fileRefJson) } : null,
      attachments: record.files.map((f) => f.id),
    });
    record.id = frame.id;
    record.withheldWhy = [...this.roster.values()].filter((e) => this.withheldBecause(e) !== null)
      .map((e) => ({ username: e.username, why: this.withheldBecause(e) }));
    this.inflight.set(frame.id, record.localId);
    this.setOutgoing(record, "sending");
    if (!this.connection.send(frame)) {
      this.inflight.delete(frame.id);
      this.setOutgoing(record, "queued", "Offline: it will be sent when the connection is back.");
      return;
    }
    this.clearTimer(record.timer);
    const id = frame.id;
    record.timer = this.setTimer(() => this.enqueue(() => this.sendTimedOut(record, id)), SEND_TIMEOUT_MS);
  }

  /** No ack or error for `id` in time: fail it (the id stays known, so a late ack still counts). */
  sendTimedOut(record, id) {
    if (record.id !== id || record.state !== "sending" || !this.inflight.has(id)) return;
    this.setOutgoing(record, "failed",
      `The server did not confirm it within ${SEND_TIMEOUT_MS / 1000} s; it may or may not have arrived.`);
  }

  setOutgoing(record, state, reason = null) {
    record.state = state;
    record.reason = reason;
    this.emit("outgoing", { localId: record.localId, text: record.text, files: record.files, ts: record.ts,
      state, reason, withheld: record.withheld });
  }

  // -- trust actions --------------------------------------------------------------------

  async acceptKey(sid) {
    const entry = this.roster.get(sid);
    if (!entry?.ok || entry.trust !== "changed") return;
    await this.store.setPin(entry.username, { fingerprint: entry.fingerprint, since: this.now() });
    entry.trust = "known";
    entry.looksLike = null;
    entry.verified = await this.store.isVerified(entry.username, entry.fingerprint);
    this.emit("trust", { fingerprint: entry.fingerprint, trust: entry.trust, verified: entry.verified });
    this.emitRoster();
  }

  async markVerified(sid) {
    const entry = this.roster.get(sid);
    if (!entry?.ok || entry.trust === "changed" || entry.trust === "self") return;
    await this.store.setVerified(entry.username, entry.fingerprint);
    entry.verified = true;
    this.emit("trust", { fingerprint: entry.fingerprint, trust: entry.trust, verified: true });
    this.emitRoster();
  }
}
