// static/js/rooms/tab.js: several rooms in one tab, with fake clients and a memory store.
import { test } from "node:test";
import assert from "node:assert/strict";

import { memoryStore } from "../../static/js/store.js";
import { JOIN_SLOTS, REJOIN_PREFIX, ROOMS_SETTING, RoomsTab } from "../../static/js/rooms/tab.js";

function fakeSession() {
  const items = new Map();
  return { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, String(v)),
    removeItem: (k) => items.delete(k), items };
}

function harness() {
  const joins = [];
  const timers = new Map();
  let nextTimer = 1;
  const store = memoryStore();
  const session = fakeSession();
  const tab = new RoomsTab({
    store, session,
    create: (name) => ({
      client: {
        join: async (username) => { joins.push([name, username]); return null; },
        leave: async () => { joins.push([name, "left"]); },
      },
    }),
    setTimer: (fn) => { timers.set(nextTimer, fn); return nextTimer++; },
    clearTimer: (id) => timers.delete(id),
  });
  return { tab, joins, timers, store, session };
}

test("joins go JOIN_SLOTS at a time, the next when one is answered", async () => {
  const { tab, joins } = harness();
  tab.enter("alice", ["lobby", "design", "ops", "design"], "design");
  assert.equal(JOIN_SLOTS, 2);
  assert.deepEqual(joins, [["lobby", "alice"], ["design", "alice"]]);
  assert.deepEqual(tab.names(), ["lobby", "design", "ops"]);
  assert.equal(tab.active, "design");
  assert.equal(tab.get("ops").state, "waiting");
  await tab.joined("lobby");
  assert.deepEqual(joins.at(-1), ["ops", "alice"]);
  assert.equal(tab.get("lobby").state, "joined");
});

test("an unanswered join frees its slot after a while", () => {
  const { tab, joins, timers } = harness();
  tab.enter("alice", ["a", "b", "c"], "a");
  assert.equal(joins.length, 2);
  const [first] = timers.keys();
  timers.get(first)();
  assert.deepEqual(joins.at(-1), ["c", "alice"]);
});

test("joined rooms are remembered, in order, and mark the tab for a re-join on reload", async () => {
  const { tab, store, session } = harness();
  assert.deepEqual(await tab.remembered("lobby"), { rooms: [], rejoin: [] });
  tab.enter("alice", ["lobby", "design"], "lobby");
  await tab.joined("design");
  await tab.joined("lobby");
  assert.deepEqual(await store.getSetting(ROOMS_SETTING), ["design", "lobby"]);
  assert.equal(session.getItem(`${REJOIN_PREFIX}design`), "1");
  assert.deepEqual(await tab.remembered("ops"), { rooms: ["design", "lobby"], rejoin: ["design", "lobby"] });
});

test("leaving one room keeps the others, and neither a reload nor the browser brings it back", async () => {
  const { tab, joins, store, session } = harness();
  tab.enter("alice", ["lobby", "design"], "design");
  await tab.joined("lobby");
  await tab.joined("design");
  await tab.leave("design");
  assert.deepEqual(joins.at(-1), ["design", "left"]);
  assert.deepEqual(tab.names(), ["lobby"]);
  assert.equal(tab.active, "lobby");
  assert.deepEqual(await store.getSetting(ROOMS_SETTING), ["lobby"]);
  assert.equal(session.getItem(`${REJOIN_PREFIX}design`), null);
  assert.equal(session.getItem(`${REJOIN_PREFIX}lobby`), "1");
  await tab.leave("lobby");
  assert.equal(tab.active, null);
  assert.deepEqual(await store.getSetting(ROOMS_SETTING), []);
  assert.deepEqual((await tab.remembered("lobby")).rejoin, []);
});

test("a failed or replaced room leaves the tab but stays remembered", async () => {
  const { tab, store } = harness();
  tab.enter("alice", ["lobby", "design"], "design");
  await tab.joined("lobby");
  await tab.joined("design");
  tab.failed("design", "username_taken");
  assert.deepEqual(tab.names(), ["lobby"]);
  assert.equal(tab.active, "lobby");
  tab.ended("lobby");
  assert.deepEqual(tab.names(), []);
  assert.deepEqual(await store.getSetting(ROOMS_SETTING), ["lobby", "design"]);
  // and a room can be added again later
  tab.add("design");
  assert.equal(tab.get("design").state, "joining");
});

test("remembered rooms that break the rule are ignored", async () => {
  const { tab, store } = harness();
  await store.setSetting(ROOMS_SETTING, ["lobby", "Bad Name", 7, "design", "lobby"]);
  assert.deepEqual((await tab.remembered()).rooms, ["lobby", "design"]);
  assert.throws(() => tab.add("../x"));
});
