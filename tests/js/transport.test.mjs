// static/js/transport.js: URLs, backoff, the reconnecting connection, and the HTTP fallback
// (PROTOCOL.md §1.2) against tests/js/fake_server.mjs.
import { afterEach, test } from "node:test";
import assert from "node:assert/strict";

import * as p from "../../static/js/protocol.js";
import * as t from "../../static/js/transport.js";
import { FakeServer, until } from "./fake_server.mjs";

test("the WebSocket URL follows the page's scheme, host and port; HTTP the same origin", () => {
  assert.equal(t.wsUrl({ protocol: "http:", host: "127.0.0.1:5000" }), "ws://127.0.0.1:5000/ws");
  assert.equal(t.wsUrl({ protocol: "https:", host: "192.168.1.20:5000" }), "wss://192.168.1.20:5000/ws");
  assert.equal(t.wsUrl({ protocol: "https:", host: "[fe80::1]:8443" }), "wss://[fe80::1]:8443/ws");
  assert.equal(t.httpBase("wss://192.168.1.20:5000/ws"), "https://192.168.1.20:5000");
  assert.equal(t.httpBase("ws://127.0.0.1:5000/ws"), "http://127.0.0.1:5000");
});

test("backoff grows exponentially with jitter and is capped at 30 s", () => {
  assert.equal(t.backoffDelay(0, () => 0), 250);
  assert.equal(t.backoffDelay(0, () => 1), 500);
  assert.equal(t.backoffDelay(3, () => 0), 2000);
  assert.equal(t.backoffDelay(3, () => 1), 4000);
  assert.equal(t.backoffDelay(20, () => 1), 30000);
  assert.equal(t.backoffDelay(1000, () => 0), 15000);
  const seen = new Set(Array.from({ length: 50 }, () => t.backoffDelay(5)));
  assert.ok(seen.size > 10, "jitter spreads the delays");
  for (const d of seen) assert.ok(d >= 8000 && d <= 16000);
});

/**
 * A Connection against the fake server. With `manual`, the reconnect backoff timers (random = 1:
 * 500 ms, 1 s, 2 s, ...) wait in `timers` for the test to fire them; every other timer is real.
 * Without it everything runs for real, with the shortest backoff (random = 0: 250 ms first).
 */
const open = [];
afterEach(() => {
  // Stop every connection a test made so no reconnect or watchdog timer outlives it.
  for (const conn of open.splice(0)) conn.stop();
});

function harness(server, { manual = false, ...options } = {}) {
  const timers = [];
  const drops = [];
  const frames = [];
  let opens = 0;
  const backoffs = new Set(Array.from({ length: 8 }, (_, k) => Math.min(t.BACKOFF_CAP_MS, t.BACKOFF_BASE_MS * 2 ** k)));
  const conn = new t.Connection({
    url: "ws://test/ws",
    WebSocketImpl: server.WebSocket,
    EventSourceImpl: server.EventSource,
    fetchImpl: server.fetch,
    onOpen: () => { opens += 1; },
    onFrame: (f) => frames.push(f),
    onDrop: (d) => drops.push(d),
    setTimer: (fn, ms) => {
      if (manual && backoffs.has(ms)) {
        timers.push({ fn, ms });
        return -timers.length;
      }
      return setTimeout(fn, ms);
    },
    clearTimer: (id) => (id > 0 || typeof id === "object") && clearTimeout(id),
    random: manual ? () => 1 : () => 0,
    pageEvents: null,
    ...options,
  });
  open.push(conn);
  return { conn, timers, drops, frames, opens: () => opens };
}

const sessionOf = (server) => [...server.http.values()].at(-1);

test("a dropped connection schedules a reconnect with growing delays", async () => {
  const server = new FakeServer();
  const h = harness(server, { manual: true });
  h.conn.start();
  await until(() => h.opens() === 1);
  assert.equal(h.frames[0].type, "hello", "onOpen comes when the server has spoken");
  server.drop(h.conn.socket, 1006);
  await until(() => h.drops.length === 1);
  assert.deepEqual(h.drops[0], { code: 1006, reason: "", willRetry: true, delay: 500 });
  h.timers.shift().fn();
  await until(() => h.opens() === 2);
  server.drop(h.conn.socket, 1001);
  await until(() => h.drops.length === 2);
  assert.equal(h.drops[1].delay, 1000);
  h.conn.resetBackoff();
  h.timers.shift().fn();
  await until(() => h.opens() === 3);
  server.drop(h.conn.socket, 1006);
  await until(() => h.drops.length === 3);
  assert.equal(h.drops[2].delay, 500, "a welcome resets the backoff");
  assert.equal(server.connections, 3);
  assert.equal(h.conn.transport, "websocket");
});

test("close code 4001 (replaced) never reconnects", async () => {
  const server = new FakeServer();
  const h = harness(server, { manual: true });
  h.conn.start();
  await until(() => h.opens() === 1);
  server.drop(h.conn.socket, 4001, "replaced by a newer session");
  await until(() => h.drops.length === 1);
  assert.equal(h.drops[0].willRetry, false);
  assert.equal(h.timers.length, 0);
  h.conn.retryNow();
  assert.equal(server.connections, 1);
});

test("stop() sends the final frame, closes and does not reconnect", async () => {
  const server = new FakeServer();
  const h = harness(server, { manual: true });
  h.conn.start();
  await until(() => h.opens() === 1);
  assert.equal(h.conn.send(p.rosterFrame()), true);
  h.conn.stop(p.leaveFrame());
  await until(() => h.drops.length === 1);
  assert.deepEqual(server.received.map((f) => f.type), ["roster", "leave"]);
  assert.equal(h.drops[0].willRetry, false);
  assert.equal(h.timers.length, 0);
  assert.equal(h.conn.send(p.rosterFrame()), false, "nothing is sent on a closed connection");
});

test("frames that are not v1 JSON objects are dropped before the owner sees them", async () => {
  const server = new FakeServer();
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  h.conn.socket.onmessage({ data: "not json" });
  h.conn.socket.onmessage({ data: '{"v":1,"type":"welcome"}' });
  h.conn.socket.onmessage({ data: '{"v":2,"type":"ack","id":"a"}' });
  assert.deepEqual(h.frames.map((f) => f.type), ["hello", "ack"]);
});

// -- the HTTP fallback ----------------------------------------------------------------------

test("a WebSocket that cannot open falls back to HTTP at once, and frames go both ways", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  assert.equal(h.conn.transport, "http");
  assert.deepEqual(h.drops, [], "the failed WebSocket is not a drop the owner hears of (no backoff wait)");
  assert.equal(h.frames[0].type, "hello");
  assert.equal(h.conn.send(p.rosterFrame()), true);
  assert.equal(h.conn.send(p.rosterFrame()), true);
  await until(() => h.frames.filter((f) => f.type === "roster").length === 2);
  const sends = server.posts.filter((x) => x.path === "/stream/send");
  assert.deepEqual(sends.map((x) => x.headers["Securechat-Seq"]), ["1", "2"], "numbered, in order");
  for (const post of sends) {
    assert.equal(post.headers["Content-Type"], "application/json");
    assert.equal(post.headers["Securechat-Token"], sessionOf(server).token);
  }
});

test("a WebSocket constructor that throws, or one that opens and never speaks, means HTTP", async () => {
  const server = new FakeServer();
  const h = harness(server, { WebSocketImpl: class { constructor() { throw new Error("blocked"); } } });
  h.conn.start();
  await until(() => h.opens() === 1);
  assert.equal(h.conn.transport, "http");

  const silent = class { constructor() { this.readyState = 0; setImmediate(() => { this.readyState = 1; this.onopen?.(); }); }
    close() { this.readyState = 3; } };
  const h2 = harness(server, { WebSocketImpl: silent, firstFrameTimeoutMs: 50 });
  h2.conn.start();
  await until(() => h2.opens() === 1);
  assert.equal(h2.conn.transport, "http");
});

test("a dropped stream is resumed and loses no frame; nothing is delivered twice", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  const session = sessionOf(server);
  server.dropStream(session);
  // Frames the server accepts while the stream is away wait in the session.
  for (let i = 0; i < 5; i++) session.deliver({ v: 2, type: "ack", id: `m${i}`, recipients: 1 });
  await until(() => h.frames.length === 6);
  assert.deepEqual(h.frames.slice(1).map((f) => f.id), ["m0", "m1", "m2", "m3", "m4"]);
  assert.deepEqual(h.drops, [], "a resumed stream is not a drop");
  assert.equal(server.eventSources.length, 2);
  assert.match(server.eventSources[1].url, new RegExp(`session=${session.id}&last=1$`));
  assert.equal(h.conn.transport, "http");
});

test("a POST whose answer is lost is sent again with the same number and handled once", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  server.loseResponses = 1;
  h.conn.send(p.rosterFrame());
  h.conn.send(p.leaveFrame());
  await until(() => server.received.length === 2);
  await until(() => server.posts.filter((x) => x.path === "/stream/send").length === 3);
  assert.deepEqual(server.posts.filter((x) => x.path === "/stream/send").map((x) => x.headers["Securechat-Seq"]),
    ["1", "1", "2"]);
  assert.deepEqual(server.received.map((f) => f.type), ["roster", "leave"]);
});

test("the client acknowledges what it received, so the server can let go of it", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  server.ackBytes = 200;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  const session = sessionOf(server);
  for (let i = 0; i < 10; i++) session.deliver({ v: 2, type: "ack", id: `m${i}`, recipients: 1 });
  await until(() => h.frames.length === 11);
  await until(() => session.unacked.length < 5, 2000, "acks past ack_bytes");
  // A ping is answered with an ack too (it is also how the server knows we are alive).
  const before = server.posts.length;
  server.eventSources.at(-1).emit("ping", { data: "{}" });
  await until(() => server.posts.length === before + 1);
  assert.equal(server.posts.at(-1).path, "/stream/ack");
  assert.equal(server.posts.at(-1).headers["Securechat-Ack"], "11");
  await until(() => session.unacked.length === 0);
});

test("a session the server closed (4001) ends the connection for good; an unknown one retries", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  server.drop(sessionOf(server), 4001, "replaced by a newer session");
  await until(() => h.drops.length === 1);
  assert.deepEqual(h.drops[0], { code: 4001, reason: "replaced by a newer session", willRetry: false, delay: null });

  const h2 = harness(server);
  h2.conn.start();
  await until(() => h2.opens() === 1);
  server.restart(); // the stream dies; the resume finds no such session
  await until(() => h2.drops.length === 1);
  assert.equal(h2.drops[0].willRetry, true);
  assert.equal(h2.drops[0].code, 1006);
});

test("closed while the stream was away: the resume learns why (e.g. replaced)", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  const session = sessionOf(server);
  server.down = true;
  server.dropStream(session);
  server.drop(session, 4001, "replaced by a newer session");
  await new Promise((r) => setTimeout(r, 30));
  server.down = false;
  await until(() => h.drops.length === 1, 5000);
  assert.equal(h.drops[0].code, 4001);
  assert.equal(h.drops[0].willRetry, false);
});

test("after an HTTP session ends, the next reconnection tries the WebSocket again", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  assert.equal(h.conn.transport, "http");
  server.refuseWebSockets = false; // e.g. the device now trusts the server's certificate
  server.drop(sessionOf(server), 1001, "the server is shutting down");
  await until(() => h.drops.length === 1);
  await until(() => h.opens() === 2);
  assert.equal(h.conn.transport, "websocket");
});

/** server.WebSocket, except that the next `refuse.count` sockets fail as a server still starting would. */
function flakyWebSockets(server) {
  const refuse = { count: 0 };
  const Real = server.WebSocket;
  class Flaky {
    constructor(url) {
      if (refuse.count <= 0) return new Real(url);
      refuse.count -= 1;
      const failed = { url, readyState: 0, send() {}, close() { this.readyState = 3; } };
      setImmediate(() => {
        failed.readyState = 3;
        failed.onclose?.({ code: 1006, reason: "" });
      });
      return failed;
    }
  }
  return { Flaky, refuse };
}

test("a page whose WebSocket worked is back on it after a restart, even when HTTP answered first", async () => {
  const server = new FakeServer();
  const { Flaky, refuse } = flakyWebSockets(server);
  const h = harness(server, { WebSocketImpl: Flaky });
  h.conn.start();
  await until(() => h.opens() === 1);
  assert.equal(h.conn.transport, "websocket");
  // The server restarts; the first WebSocket try meets it still starting, the HTTP one does not.
  refuse.count = 1;
  server.restart();
  await until(() => h.drops.length === 1);
  await until(() => h.opens() === 2);
  assert.equal(h.conn.transport, "websocket");
  assert.equal(server.eventSources.length, 1, "one HTTP stream checked that the server is back");
  assert.deepEqual(server.posts.map((x) => x.path), ["/stream/close"], "closed before anything was joined on it");
  assert.equal(h.frames.filter((f) => f.type === "hello").length, 2, "the HTTP stream's hello is not passed on");
});

test("a page whose WebSocket worked falls back to HTTP when the WebSocket fails again with the server up", async () => {
  const server = new FakeServer();
  const { Flaky, refuse } = flakyWebSockets(server);
  const h = harness(server, { WebSocketImpl: Flaky });
  h.conn.start();
  await until(() => h.opens() === 1);
  refuse.count = 1000; // e.g. the device now reaches the server through a proxy without WebSockets
  server.restart();
  await until(() => h.opens() === 2);
  assert.equal(h.conn.transport, "http");
  assert.equal(server.eventSources.length, 2, "the check stream, then the session's");
});

test("stop() over HTTP posts the final frame, then closes the session", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  assert.equal(h.conn.closed, false);
  h.conn.stop(p.leaveFrame());
  await until(() => h.drops.length === 1);
  assert.equal(h.drops[0].willRetry, false);
  assert.equal(h.conn.closed, true);
  await until(() => server.posts.some((x) => x.path === "/stream/close"));
  assert.deepEqual(server.posts.map((x) => x.path), ["/stream/send", "/stream/close"]);
  assert.equal(JSON.parse(server.posts[0].body).type, "leave");
});

test("while the network is down, resumes stop at the liveness window and the backoff takes over", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  // A short window (as a server with small ping settings would announce) keeps the test quick.
  const session = sessionOf(server);
  const source = server.eventSources.at(-1);
  source.emit("session", { data: JSON.stringify({ session: session.id, token: session.token,
    ping_ms: 300, timeout_ms: 200, ack_bytes: 1 << 20 }) });
  server.down = true;
  server.dropStream(session);
  await until(() => h.drops.length === 1, 5000);
  assert.equal(h.drops[0].willRetry, true);
  assert.ok(server.eventSources.length >= 3, "it tried to resume more than once");
});

test("a stream that goes silent past a ping and half a timeout is given up and resumed", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
  const session = sessionOf(server);
  const source = server.eventSources.at(-1);
  source.emit("session", { data: JSON.stringify({ session: session.id, token: session.token,
    ping_ms: 100, timeout_ms: 100, ack_bytes: 1 << 20 }) });
  // The server keeps the stream "open" but nothing arrives any more (a half-dead connection).
  session.source = null;
  session.deliver({ v: 2, type: "ack", id: "during", recipients: 1 });
  await until(() => server.eventSources.length === 2, 2000, "a resume after the silence");
  await until(() => h.frames.some((f) => f.id === "during"));
  assert.deepEqual(h.drops, []);
});

test("a resume that does not succeed at once is reported, and so is its success", async () => {
  const server = new FakeServer();
  server.refuseWebSockets = true;
  const interrupts = [];
  const h = harness(server, { onInterrupt: (info) => interrupts.push(info.resuming) });
  h.conn.start();
  await until(() => h.opens() === 1);
  const session = sessionOf(server);
  server.dropStream(session); // a quick resume works: nothing to report
  await until(() => server.eventSources.length === 2);
  await until(() => server.eventSources[1].readyState === 1);
  assert.deepEqual(interrupts, []);
  server.down = true;
  server.dropStream(session);
  await until(() => interrupts.length === 1);
  assert.deepEqual(interrupts, [true]);
  session.deliver({ v: 2, type: "ack", id: "kept", recipients: 1 });
  server.down = false;
  await until(() => interrupts.length === 2, 5000);
  assert.deepEqual(interrupts, [true, false]);
  await until(() => h.frames.some((f) => f.id === "kept"));
  assert.deepEqual(h.drops, []);
});
