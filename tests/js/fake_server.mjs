// A small in-memory stand-in for the server side of protocol v1, for node tests of
// protocol.js and chat.js. It relays like PROTOCOL.md §6–§7 says and lets a test inject faults.
import * as c from "../../static/js/crypto.js";

export class FakeServer {
  constructor(room = "lobby") {
    this.room = room;
    this.sockets = new Set();
    this.members = new Map(); // sid -> {socket, participant}
    this.received = []; // every client frame, parsed
    this.onClientFrame = null; // (frame, socket) => true to swallow it
    this.connections = 0;
  }

  /** A WebSocket class bound to this server, to pass as WebSocketImpl. */
  get WebSocket() {
    const server = this;
    return class FakeSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        server.connections += 1;
        server.sockets.add(this);
        setImmediate(() => {
          if (this.readyState !== 0) return;
          this.readyState = 1;
          this.onopen?.();
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

  drop(socket, code = 1006, reason = "") {
    if (socket.readyState > 1) return;
    socket.readyState = 3;
    this.sockets.delete(socket);
    for (const [sid, m] of this.members) {
      if (m.socket === socket) {
        this.members.delete(sid);
        this.broadcast({ v: 1, type: "left", sid, username: m.participant.username, fingerprint: m.participant.fingerprint });
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
      return socket.deliver({ v: 1, type: "roster", room: this.room, participants: this.participants() });
    }
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
      session_sig: frame.session_sig,
      joined: Date.now(),
    };
    for (const [sid, m] of this.members) {
      if (m.participant.username.toLowerCase() === frame.username.toLowerCase()) {
        if (m.participant.fingerprint !== participant.fingerprint) {
          return socket.deliver({ v: 1, type: "error", code: "username_taken", message: "taken" });
        }
        this.members.delete(sid);
        this.drop(m.socket, 4001, "replaced by a newer session");
      }
    }
    this.members.set(participant.sid, { socket, participant });
    socket.deliver({ v: 1, type: "welcome", room: this.room, you: participant,
      participants: this.participants(), server_time: Date.now(),
      limits: { max_clock_skew_ms: 300000, max_recipients: 256 } });
    this.broadcast({ v: 1, type: "joined", participant }, socket);
  }

  relayed(sender, frame, sid) {
    const { participant } = sender;
    return { v: 1, type: "msg", room: this.room,
      from: { sid: participant.sid, username: participant.username, fingerprint: participant.fingerprint },
      id: frame.id, ts: frame.ts, counter: frame.counter, recipients: Object.keys(frame.keys).sort(),
      iv: frame.iv, ct: frame.ct, sig: frame.sig, key: frame.keys[sid], received: Date.now() };
  }

  relay(socket, frame) {
    const sender = [...this.members.values()].find((m) => m.socket === socket);
    const stale = Object.keys(frame.keys).filter((sid) => !this.members.has(sid));
    if (stale.length) {
      return socket.deliver({ v: 1, type: "error", code: "stale_recipients", message: "stale", id: frame.id, stale });
    }
    for (const sid of Object.keys(frame.keys)) {
      this.members.get(sid).socket.deliver(this.relayed(sender, frame, sid));
    }
    socket.deliver({ v: 1, type: "ack", id: frame.id, recipients: Object.keys(frame.keys).length });
  }
}

/** Wait until `predicate()` is truthy (polling the event loop), or fail after `ms`. */
export async function until(predicate, ms = 5000, what = "condition") {
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
export async function forgedParticipant(room, username) {
  const identity = await c.generateIdentity();
  const session = await c.generateSession();
  return {
    sid: session.sid, username, fingerprint: identity.fingerprint, identity_key: identity.spki,
    session_key: session.spki, session_sig: await c.signSession(identity.privateKey, room, username, session.spki),
    joined: Date.now(),
  };
}
