// static/js/transport.js: URLs, backoff and the reconnecting connection.
import { test } from "node:test";
import assert from "node:assert/strict";

import * as p from "../../static/js/protocol.js";
import * as t from "../../static/js/transport.js";
import { FakeServer, until } from "./fake_server.mjs";

test("the WebSocket URL follows the page's scheme, host and port", () => {
  assert.equal(t.wsUrl({ protocol: "http:", host: "127.0.0.1:5000" }), "ws://127.0.0.1:5000/ws");
  assert.equal(t.wsUrl({ protocol: "https:", host: "192.168.1.20:5000" }), "wss://192.168.1.20:5000/ws");
  assert.equal(t.wsUrl({ protocol: "https:", host: "[fe80::1]:8443" }), "wss://[fe80::1]:8443/ws");
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

function harness(server) {
  const timers = [];
  const drops = [];
  const frames = [];
  let opens = 0;
  const conn = new t.Connection({
    url: "ws://test/ws",
    WebSocketImpl: server.WebSocket,
    onOpen: () => { opens += 1; },
    onFrame: (f) => frames.push(f),
    onDrop: (d) => drops.push(d),
    setTimer: (fn, ms) => { timers.push({ fn, ms }); return timers.length; },
    clearTimer: () => {},
    random: () => 1,
  });
  return { conn, timers, drops, frames, opens: () => opens };
}

test("a dropped connection schedules a reconnect with growing delays", async () => {
  const server = new FakeServer();
  const h = harness(server);
  h.conn.start();
  await until(() => h.opens() === 1);
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
});

test("close code 4001 (replaced) never reconnects", async () => {
  const server = new FakeServer();
  const h = harness(server);
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
  const h = harness(server);
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
  h.conn.socket.onmessage({ data: '{"v":2,"type":"welcome"}' });
  h.conn.socket.onmessage({ data: '{"v":1,"type":"ack","id":"a"}' });
  assert.deepEqual(h.frames, [{ v: 1, type: "ack", id: "a" }]);
});
