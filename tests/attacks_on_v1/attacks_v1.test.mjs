// The attacks of issue 13 (tests/js/attacks.test.mjs on the v2 branch), played against protocol
// v1's client (static/js/chat.js + crypto.js at 99cd913, before any issue-13 work). Only the
// framing is v1's: the same malicious-server moves, the same assertions about what the person
// must see. Each test is expected to FAIL here; the failure message says what v1 did.
import { test } from "node:test";
import assert from "node:assert/strict";

import * as c from "../../static/js/crypto.js";
import { ChatClient } from "../../static/js/chat.js";
import { memoryStore } from "../../static/js/store.js";
import { FakeServer, until } from "./fake_server.mjs";

function person(server, { store = memoryStore(), now = Date.now } = {}) {
  const events = [];
  const client = new ChatClient({
    store, url: "ws://test/ws", WebSocketImpl: server.WebSocket, now,
    emit: (type, detail) => events.push({ type, ...detail }),
  });
  const of = (type) => events.filter((e) => e.type === type);
  const last = (type) => of(type).at(-1);
  return { client, events, of, last, store };
}

async function joined(p, name) {
  assert.equal(await p.client.join(name), null);
  await until(() => p.last("status")?.state === "connected", 20000, `${name} connected`);
}

/** v1's session statement: room, name, key (no time, no challenge, no stream). */
async function forgedParticipant(room, username, { identity = null } = {}) {
  identity = identity ?? (await c.generateIdentity());
  const session = await c.generateSession();
  return {
    sid: session.sid, username, fingerprint: identity.fingerprint, identity_key: identity.spki,
    session_key: session.spki, session_sig: await c.signSession(identity.privateKey, room, username, session.spki),
    joined: Date.now(),
  };
}

async function inject(server, victim, participant) {
  const { socket } = server.members.get(victim.client.session.sid);
  socket.deliver({ v: 1, type: "joined", participant });
  await until(() => victim.last("roster")?.participants.some((p) => p.sid === participant.sid), 20000, "injected entry");
  return victim.last("roster").participants.find((p) => p.sid === participant.sid);
}

const member = (server, name) => [...server.members.values()].find((m) => m.participant.username === name);

/** Relay msg frames through `hook(sid, relayedFrame)`; a hook returning true swallows that copy. */
function interceptDeliveries(server, hook) {
  server.onClientFrame = (frame, socket) => {
    if (frame.type !== "msg") return false;
    const sender = [...server.members.values()].find((m) => m.socket === socket);
    for (const sid of Object.keys(frame.keys)) {
      const copy = server.relayed(sender, frame, sid);
      if (!hook(sid, copy)) server.members.get(sid).socket.deliver(copy);
    }
    socket.deliver({ v: 1, type: "ack", id: frame.id, recipients: Object.keys(frame.keys).length });
    return true;
  };
}

test("attack 1 (v1): a look-alike of a pinned name is a first meeting and a recipient", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  const fake = await inject(server, bob, await forgedParticipant(server.room, "a1ice"));
  assert.ok(!bob.client.recipients().some((r) => r.sid === fake.sid), `v1: trust=${fake.trust}, and it is a recipient`);
});

test("attack 2 (v1): a session key signed a week ago is accepted", async () => {
  // v1's statement has no time: a key signed last week and one signed now look the same.
  const server = new FakeServer();
  const alice = person(server);
  await joined(alice, "alice");
  const weekOld = await forgedParticipant(server.room, "dave");
  const entry = await inject(server, alice, weekOld);
  assert.equal(entry.ok, false, "v1 verified the (undated) session key and wraps to it");
  assert.ok(!alice.client.recipients().some((r) => r.sid === weekOld.sid));
});

test("attack 2 (v1): a long stay never rotates the session key", async () => {
  const server = new FakeServer();
  let offset = 0;
  const alice = person(server, { now: () => Date.now() + offset });
  await joined(alice, "alice");
  const before = alice.client.session.sid;
  offset = 3600_000 + 1000; // SESSION_ROTATE_MS of v2, plus a second
  alice.client.send("an hour later");
  await until(() => alice.last("outgoing")?.state === "delivered");
  await new Promise((r) => setTimeout(r, 500));
  assert.notEqual(alice.client.session.sid, before, "v1 kept the join's session key for the whole stay");
});

test("attack 3 (v1): a message also addressed to a hidden session raises no ghost warning", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  const ghost = await forgedParticipant(server.room, "ghost");
  server.members.set(ghost.sid, { socket: { deliver() {} }, participant: ghost });
  await inject(server, alice, ghost);
  alice.client.send("just between us");
  await until(() => bob.of("message").length === 1);
  const sent = server.received.filter((f) => f.type === "msg").at(-1);
  assert.ok(ghost.sid in sent.keys, "alice's message was wrapped to the ghost");
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(bob.of("warning").some((w) => /cannot see/.test(w.text)),
    "v1: bob saw the message normally; its recipient list named a session bob never saw, and nothing said so");
});

test("attack 3 (v1): there is no Verified only mode", async () => {
  const server = new FakeServer();
  const alice = person(server);
  await joined(alice, "alice");
  assert.equal(typeof alice.client.setVerifiedOnly, "function", "v1's client has no Verified only mode");
});

test("attack 4 (v1): a dropped copy goes unnoticed by its recipient", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  let drop = true;
  interceptDeliveries(server, (sid) => sid === bob.client.session.sid && drop && !(drop = false));
  alice.client.send("one");
  await until(() => alice.last("outgoing")?.state === "delivered");
  assert.match(alice.last("outgoing").reason, /to 1 other/, "the sender was told it reached bob");
  alice.client.send("two");
  await until(() => bob.of("message").length === 1);
  await new Promise((r) => setTimeout(r, 500));
  const said = [...bob.of("warning"), ...bob.of("notice")].map((e) => e.text);
  assert.ok(said.some((t) => /did not arrive/.test(t)), `v1 said nothing to bob (events: ${JSON.stringify(said)})`);
});

test("attack 4 (v1): a delayed message is refused as a replay", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  const held = [];
  interceptDeliveries(server, (sid, copy) => {
    if (sid !== bob.client.session.sid || held.length) return false;
    held.push(copy);
    return true;
  });
  alice.client.send("first");
  await until(() => held.length === 1);
  alice.client.send("second");
  await until(() => bob.of("message").length === 1);
  server.members.get(bob.client.session.sid).socket.deliver(held[0]);
  await until(() => bob.of("message").length === 2 || bob.of("warning").length > 0);
  assert.deepEqual(bob.of("warning").map((w) => w.text), [], "v1 turned the late message into a warning");
  assert.equal(bob.of("message").length, 2);
});

test("attack 5 (v1): the server widens the freshness window and a 3-hour-old message is shown", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  // The malicious server's welcome: v1 adopts its max_clock_skew_ms.
  const join = server.join.bind(server);
  server.join = async (socket, frame) => {
    const deliver = socket.deliver.bind(socket);
    socket.deliver = (f) => deliver(f.type === "welcome" ? { ...f, limits: { ...f.limits, max_clock_skew_ms: 1e15 } } : f);
    return join(socket, frame);
  };
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  const old = await c.sealMessage({ identityPrivateKey: alice.client.identity.privateKey,
    fingerprint: alice.client.identity.fingerprint, senderSid: alice.client.session.sid, room: "lobby",
    text: "three hours old", ts: Date.now() - 3 * 3600_000, counter: 1000,
    recipients: [{ sid: bob.client.session.sid, sessionKey: bob.client.session.publicKey }] });
  server.members.get(bob.client.session.sid).socket.deliver(server.relayed(member(server, "alice"), old, bob.client.session.sid));
  await until(() => bob.of("warning").length + bob.of("message").length === 1);
  assert.deepEqual(bob.of("message").map((m) => m.text), [], "v1 showed a three-hour-old message as new");
});

test("attack 6 (v1): the same key under a second name inherits ✓ Verified", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  await alice.client.markVerified(bob.client.session.sid);
  const twin = await forgedParticipant(server.room, "robert", { identity: bob.client.identity });
  const entry = await inject(server, alice, twin);
  assert.equal(entry.verified, false, "v1 showed robert as ✓ Verified: verification followed the key");
});
