// The attacks of issue 13, each played by a malicious server (tests/js/fake_server.mjs) against
// static/js/chat.js. Every test here failed against protocol v1's client; see THREAT-MODEL.md.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ChatClient } from "../../static/js/chat.js";
import { memoryStore } from "../../static/js/store.js";
import { FakeServer, forgedParticipant, until } from "./fake_server.mjs";

function person(server, { store = memoryStore() } = {}) {
  const events = [];
  const client = new ChatClient({
    store, url: "ws://test/ws", WebSocketImpl: server.WebSocket,
    emit: (type, detail) => events.push({ type, ...detail }),
  });
  const of = (type) => events.filter((e) => e.type === type);
  const last = (type) => of(type).at(-1);
  return { client, events, of, last, store };
}

async function joined(p, name) {
  assert.equal(await p.client.join(name), null);
  await until(() => p.last("status")?.state === "connected", 5000, `${name} connected`);
}

/** The server shows `victim` a participant nobody else sees. */
async function inject(server, victim, participant) {
  const { socket } = server.members.get(victim.client.session.sid);
  socket.deliver({ v: 1, type: "joined", participant });
  await until(() => victim.last("roster")?.participants.some((p) => p.sid === participant.sid), 5000, "injected entry");
  return victim.last("roster").participants.find((p) => p.sid === participant.sid);
}

// -- 1. Look-alike names ------------------------------------------------------------------------

test("attack 1: a look-alike of a pinned name gets the key-change treatment and is not a recipient", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  // bob has pinned alice. The server now presents its own key as "a1ice" (digit one):
  // one script, valid signature, a name whose skeleton is alice's.
  const fake = await inject(server, bob, await forgedParticipant(server.room, "a1ice"));
  assert.equal(fake.trust, "changed", "v1 called this a first meeting ('new')");
  assert.equal(fake.looksLike, "alice");
  assert.ok(!bob.client.recipients().some((r) => r.sid === fake.sid), "v1 wrapped bob's messages to it");
  bob.client.send("for alice only");
  await until(() => bob.last("outgoing")?.state === "delivered");
  const sent = server.received.filter((f) => f.type === "msg").at(-1);
  assert.ok(!(fake.sid in sent.keys));
});

test("attack 1: names the server should have refused (invisible or mixed-script) are never recipients", async () => {
  const server = new FakeServer();
  const bob = person(server);
  await joined(bob, "bob");
  for (const name of ["alice\u200b", "\u0430lice", "b\u043eb"]) {
    const fake = await inject(server, bob, await forgedParticipant(server.room, name));
    assert.equal(fake.ok, false, `${name} was accepted`);
    assert.match(fake.problem, /name is not allowed/);
    assert.ok(!bob.client.recipients().some((r) => r.sid === fake.sid));
  }
});

test("attack 1: a pin survives a look-alike that differs only in capital letters' shapes", async () => {
  const server = new FakeServer();
  const carol = person(server);
  const heka = person(server);
  await joined(carol, "carol");
  await joined(heka, "HEKA");
  await until(() => carol.last("roster")?.participants.length === 2);
  // All-Cyrillic capitals "НЕКА": one script, and lowercased ("нека") it looks nothing like
  // "heka" — only the skeleton of the name as typed catches it.
  const fake = await inject(server, carol, await forgedParticipant(server.room, "\u041d\u0415\u041a\u0410"));
  assert.equal(fake.ok, true);
  assert.equal(fake.trust, "changed");
  assert.equal(fake.looksLike, "HEKA");
  assert.ok(!carol.client.recipients().some((r) => r.sid === fake.sid));
});
