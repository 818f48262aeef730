// A person in the node tests: static/js/chat.js's ChatClient on a FakeServer, with every event it
// emits recorded, so a test reads "alice.last('roster')" instead of wiring emit each time.
import assert from "node:assert/strict";

import { ChatClient } from "../../static/js/chat.js";
import { memoryStore } from "../../static/js/store.js";
import { until } from "./fake_server.mjs";

/** Options beyond `store` go to the ChatClient as they are (`now`, `recipientsTimeoutMs`, `room`…);
 *  `timers`: an array that collects every timer instead of running it (the test fires them), with
 *  the WebSocket's first-frame watchdog off. */
export function person(server, { store = memoryStore(), timers = null, ...options } = {}) {
  const events = [];
  const client = new ChatClient({
    store,
    url: "ws://test/ws",
    WebSocketImpl: server.WebSocket,
    emit: (type, detail) => events.push({ type, ...detail }),
    ...(timers ? { setTimer: (fn, ms) => timers.push({ fn, ms }), clearTimer: () => {}, firstFrameTimeoutMs: 0 } : {}),
    ...options,
  });
  const of = (type) => events.filter((e) => e.type === type);
  const last = (type) => of(type).at(-1);
  return { client, events, of, last, store };
}

/** Join as `name` and wait until the status says connected. */
export async function joined(p, name) {
  assert.equal(await p.client.join(name), null);
  await until(() => p.last("status")?.state === "connected", 20000, `${name} connected`);
}
