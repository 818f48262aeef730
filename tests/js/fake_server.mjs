// A small in-memory stand-in for the server side of protocol v2, for node tests of
// transport.js and chat.js. It relays like PROTOCOL.md §6–§7 says, over a fake WebSocket or the
// HTTP transport of §1.2 (a fake EventSource and fetch), and lets a test inject faults.
import * as c from "../../static/js/crypto.js";

let keys = 0;
const newKey = () => `k${(keys += 1).toString(36).padStart(21, "0")}`;

export class FakeServer {
  constructor(room = "lobby") {
    this.room = room;
    this.sockets = new Set();
    this.members = new Map(); // sid -> {socket, participant}
    this.received = []; // every client frame, parsed
    this.onClientFrame = null; // (frame, socket) => true to swallow it
    this.connections = 0;
    this.refuseWebSockets = false; // like WebKit with a certificate accepted by exception
    this.down = false; // every request fails as a network error would
    this.http = new Map(); // session id -> FakeHttpSession
    this.tokens = new Map(); // token -> FakeHttpSession
    this.tombstones = new Map(); // session id or token -> {code, reason}
    this.eventSources = [];
    this.posts = []; // every POST: {path, headers, body}
    this.loseResponses = 0; // POSTs handled whose response then "gets lost" in the network
    this.lists = new Map(); // message id -> sorted recipient sids
    this.challenges = new Map(); // socket -> challenge
    this.limits = { max_clock_skew_ms: 300000, max_recipients: 256 };
  }

  challenge(socket) {
    const value = c.randomId();
    this.challenges.set(socket, value);
    return value;
  }

  hello(peer) {
    peer.deliver({ v: 2, type: "hello", room: this.room, server_time: Date.now(),
      challenge: this.challenge(peer), limits: this.limits });
  }

  /** A WebSocket class bound to this server, to pass as WebSocketImpl. */
  get WebSocket() {
    const server = this;
    return class FakeSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        if (server.refuseWebSockets || server.down) {
          setImmediate(() => {
            this.readyState = 3;
            this.onclose?.({ code: 1006, reason: "" });
          });
          return;
        }
        server.connections += 1;
        server.sockets.add(this);
        setImmediate(() => {
          if (this.readyState !== 0) return;
          this.readyState = 1;
          this.onopen?.();
          server.hello(this); // the server speaks first (§6.2)
        });
      }

      send(text) {
        if (this.readyState !== 1) throw new Error("send on a closed socket");
        const frame = JSON.parse(text);
        server.received.push(frame);
        setImmediate(() => server.handle(this, frame));
      }

      close(code = 1000, reason = "") {
        server.drop(this, code, reason);
      }

      deliver(frame) {
        if (this.readyState === 1) setImmediate(() => this.onmessage?.({ data: JSON.stringify(frame) }));
      }
    };
  }

  /** An EventSource class bound to this server (§1.2's GET /stream). */
  get EventSource() {
    const server = this;
    return class FakeEventSource {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.listeners = new Map();
        this.onerror = null;
        server.eventSources.push(this);
        setImmediate(() => server.openStream(this));
      }

      addEventListener(type, fn) {
        if (!this.listeners.has(type)) this.listeners.set(type, []);
        this.listeners.get(type).push(fn);
      }

      close() {
        this.readyState = 2;
        if (this.session?.source === this) this.session.source = null;
      }

      emit(type, event) {
        if (this.readyState !== 1) return;
        for (const fn of this.listeners.get(type) ?? []) fn(event);
      }

      /** The connection failed: 0 = a network error (EventSource would retry), 2 = refused. */
      fail(readyState) {
        if (this.readyState === 2) return;
        if (this.session?.source === this) this.session.source = null;
        this.readyState = readyState;
        this.onerror?.({});
      }
    };
  }

  openStream(source) {
    if (source.readyState === 2) return;
    if (this.down) return source.fail(0);
    const url = new URL(source.url);
    const resume = url.searchParams.get("session");
    let session;
    if (resume === null) {
      session = new FakeHttpSession(this);
      this.connections += 1;
      this.http.set(session.id, session);
      this.tokens.set(session.token, session);
    } else {
      session = this.http.get(resume);
      if (!session) {
        const ended = this.tombstones.get(resume);
        if (!ended) return source.fail(2); // 404: EventSource only sees an error, then CLOSED
        source.readyState = 1;
        return source.emit("close", { data: JSON.stringify(ended) });
      }
      session.acknowledge(Number(url.searchParams.get("last")));
      session.source?.fail(0);
    }
    source.readyState = 1;
    source.session = session;
    session.source = source;
    source.emit("session", { data: JSON.stringify({ session: session.id, token: session.token,
      ping_ms: 20000, timeout_ms: 10000, ack_bytes: this.ackBytes ?? 1 << 20 }) });
    for (const { seq, data } of session.unacked) source.emit("message", { data, lastEventId: String(seq) });
    if (resume === null) this.hello(session);
  }

  /** A restart: every connection dies and every session is forgotten. */
  restart() {
    for (const socket of [...this.sockets]) this.drop(socket, 1006);
    for (const session of [...this.http.values()]) {
      session.readyState = 3;
      session.source?.fail(0);
    }
    this.http.clear();
    this.tokens.clear();
    this.members.clear();
  }

  /** The network drops the stream (not the session): the client should resume it. */
  dropStream(session) {
    session.source?.fail(0);
  }

  /** fetch() bound to this server (§1.2's POSTs). */
  get fetch() {
    return async (url, init) => {
      await new Promise((resolve) => setImmediate(resolve));
      if (this.down) throw new TypeError("Failed to fetch");
      const path = new URL(url).pathname;
      const { headers, body } = init;
      this.posts.push({ path, headers, body });
      const reply = (status, json = {}) => ({ ok: status >= 200 && status < 300, status, json: async () => json });
      const session = this.tokens.get(headers["Securechat-Token"]);
      if (!session) {
        const ended = this.tombstones.get(headers["Securechat-Token"]);
        return ended ? reply(410, { error: "session_closed", ...ended }) : reply(404, { error: "unknown_session" });
      }
      session.acknowledge(Number(headers["Securechat-Ack"]));
      if (path === "/stream/send") {
        const seq = Number(headers["Securechat-Seq"]);
        if (seq === session.received + 1) {
          session.received = seq;
          const frame = JSON.parse(body);
          this.received.push(frame);
          setImmediate(() => this.handle(session, frame));
        } else if (seq > session.received + 1) {
          return reply(409, { error: "out_of_order" });
        }
      } else if (path === "/stream/close") {
        this.drop(session, 1000, "closed by the client");
      }
      if (this.loseResponses > 0) {
        this.loseResponses -= 1;
        throw new TypeError("Failed to fetch"); // handled, but the answer never arrived
      }
      return reply(204);
    };
  }

  drop(socket, code = 1006, reason = "") {
    if (socket.readyState > 1) return;
    socket.readyState = 3;
    this.sockets.delete(socket);
    for (const [sid, m] of this.members) {
      if (m.socket === socket) {
        this.members.delete(sid);
        this.broadcast({ v: 2, type: "left", sid, username: m.participant.username, fingerprint: m.participant.fingerprint });
      }
    }
    setImmediate(() => socket.onclose?.({ code, reason }));
  }

  broadcast(frame, except = null) {
    for (const m of this.members.values()) if (m.socket !== except) m.socket.deliver(frame);
  }

  participants() {
    return [...this.members.values()].map((m) => m.participant);
  }

  async handle(socket, frame) {
    if (this.onClientFrame && (await this.onClientFrame(frame, socket))) return;
    if (frame.type === "join") return this.join(socket, frame);
    if (frame.type === "roster") {
      return socket.deliver({ v: 2, type: "roster", room: this.room, participants: this.participants() });
    }
    if (frame.type === "recipients") {
      const sids = this.lists.get(frame.id);
      if (!sids) return socket.deliver({ v: 2, type: "error", code: "unknown_message", message: "gone", id: frame.id });
      return socket.deliver({ v: 2, type: "recipients", id: frame.id, sids });
    }
    if (frame.type === "rekey") return this.rekey(socket, frame);
    if (frame.type === "leave") return this.drop(socket, 1000);
    if (frame.type === "msg") return this.relay(socket, frame);
    return undefined;
  }

  async join(socket, frame) {
    const participant = {
      sid: await c.sessionIdOf(c.b64decode(frame.session_key)),
      username: frame.username,
      fingerprint: await c.fingerprintOf(c.b64decode(frame.identity_key)),
      identity_key: frame.identity_key,
      session_key: frame.session_key,
      issued: frame.issued,
      challenge: frame.challenge,
      stream: frame.stream,
      session_sig: frame.session_sig,
      joined: Date.now(),
    };
    for (const [sid, m] of this.members) {
      if (m.participant.username.toLowerCase() === frame.username.toLowerCase()) {
        if (m.participant.fingerprint !== participant.fingerprint) {
          return socket.deliver({ v: 2, type: "error", code: "username_taken", message: "taken" });
        }
        this.members.delete(sid);
        this.drop(m.socket, 4001, "replaced by a newer session");
      }
    }
    this.members.set(participant.sid, { socket, participant });
    socket.deliver({ v: 2, type: "welcome", room: this.room, you: participant,
      participants: this.participants(), server_time: Date.now(), challenge: this.challenge(socket),
      limits: this.limits, attachments: { token: `token-${participant.sid}`, max_bytes: 26214400 } });
    this.broadcast({ v: 2, type: "joined", participant }, socket);
  }

  async rekey(socket, frame) {
    const entry = [...this.members.entries()].find(([, m]) => m.socket === socket);
    if (!entry) return undefined;
    const [old, member] = entry;
    const participant = { ...member.participant, session_key: frame.session_key, issued: frame.issued,
      challenge: frame.challenge, session_sig: frame.session_sig,
      sid: await c.sessionIdOf(c.b64decode(frame.session_key)) };
    this.members.delete(old);
    this.members.set(participant.sid, { socket, participant });
    socket.deliver({ v: 2, type: "rekeyed", old, participant, challenge: this.challenge(socket) });
    this.broadcast({ v: 2, type: "rekeyed", old, participant }, socket);
    return undefined;
  }

  relayed(sender, frame, sid) {
    return { v: 2, type: "msg", from: sender.participant.sid, id: frame.id, ts: frame.ts, iv: frame.iv,
      ct: frame.ct, to: frame.to, sig: frame.sig, key: frame.keys[sid] };
  }

  relay(socket, frame) {
    const sender = [...this.members.values()].find((m) => m.socket === socket);
    const stale = Object.keys(frame.keys).filter((sid) => !this.members.has(sid));
    if (stale.length) {
      return socket.deliver({ v: 2, type: "error", code: "stale_recipients", message: "stale", id: frame.id, stale });
    }
    this.lists.set(frame.id, Object.keys(frame.keys).sort());
    for (const sid of Object.keys(frame.keys)) {
      if (this.onDeliver && this.onDeliver(sid, frame)) continue; // a test drops or delays it
      this.members.get(sid).socket.deliver(this.relayed(sender, frame, sid));
    }
    socket.deliver({ v: 2, type: "ack", id: frame.id, recipients: Object.keys(frame.keys).length });
  }
}

/** One session of the HTTP transport: the server's side of §1.2, as a relay peer. */
class FakeHttpSession {
  constructor(server) {
    this.server = server;
    this.id = newKey();
    this.token = newKey();
    this.readyState = 1;
    this.seq = 0;
    this.unacked = []; // {seq, data} until acknowledged
    this.received = 0;
    this.source = null;
  }

  deliver(frame) {
    if (this.readyState !== 1) return;
    this.seq += 1;
    const event = { seq: this.seq, data: JSON.stringify(frame) };
    this.unacked.push(event);
    const source = this.source;
    if (source) setImmediate(() => source.session === this && this.source === source && source.emit("message", { data: event.data, lastEventId: String(event.seq) }));
  }

  acknowledge(last) {
    if (Number.isSafeInteger(last)) this.unacked = this.unacked.filter((e) => e.seq > last);
  }

  onclose({ code, reason }) {
    const ended = { code, reason };
    this.server.http.delete(this.id);
    this.server.tokens.delete(this.token);
    this.server.tombstones.set(this.id, ended);
    this.server.tombstones.set(this.token, ended);
    this.source?.emit("close", { data: JSON.stringify(ended) });
  }
}

/** Wait until `predicate()` is truthy (polling the event loop), or fail after `ms` (generous: RSA
 * key generation on a loaded 2-core machine can take seconds). */
export async function until(predicate, ms = 20000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * A participant the server makes up: its own identity and session keys, correctly signed,
 * under any name. This is what a malicious server (or a member it admits) can always do.
 */
export async function forgedParticipant(room, username, { identity = null, issued = Date.now() } = {}) {
  identity = identity ?? (await c.generateIdentity());
  const session = await c.generateSession();
  const challenge = c.randomId();
  const stream = c.randomId();
  return {
    sid: session.sid, username, fingerprint: identity.fingerprint, identity_key: identity.spki,
    session_key: session.spki, issued, challenge, stream,
    session_sig: await c.signSession(identity.privateKey, room, username, session.spki, issued, challenge, stream),
    joined: Date.now(), privateKey: session.privateKey,
  };
}
