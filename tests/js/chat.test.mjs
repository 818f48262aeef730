// static/js/chat.js driven against tests/js/fake_server.mjs: the client's behaviour without a DOM.
import { test } from "node:test";
import assert from "node:assert/strict";

import * as c from "../../static/js/crypto.js";
import { ChatClient, REJOIN_GRACE_MS, SEND_TIMEOUT_MS } from "../../static/js/chat.js";
import { memoryStore } from "../../static/js/store.js";
import { FakeServer, until } from "./fake_server.mjs";
import { joined, person } from "./people.mjs";


const texts = (p) => p.of("message").map((m) => `${m.username}: ${m.text}`);

test("two people exchange messages; the sender sees delivery, not a duplicate", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  alice.client.send("hello <b>bob</b>");
  await until(() => texts(bob).length === 1);
  assert.deepEqual(texts(bob), ["alice: hello <b>bob</b>"]);
  await until(() => alice.last("outgoing")?.state === "delivered");
  assert.deepEqual(alice.of("outgoing").map((o) => o.state), ["queued", "sending", "delivered"]);
  assert.deepEqual(texts(alice), [], "our own echo is not shown twice");
  const sent = server.received.filter((f) => f.type === "msg");
  assert.equal(sent.length, 1);
  assert.deepEqual(Object.keys(sent[0].keys).sort(),
    [alice.client.session.sid, bob.client.session.sid].sort());
  assert.deepEqual(alice.of("warning"), []);
  assert.deepEqual(bob.of("warning"), []);
});

test("usernames are checked before anything is sent", async () => {
  const server = new FakeServer();
  const p = person(server);
  assert.match(await p.client.join("al\u200dice"), /control|formatting|invisible/);
  assert.match(await p.client.join("   "), /choose a username/i);
  assert.equal(server.connections, 0);
  assert.equal(await p.client.join("  Cafe\u0301 "), null);
  await until(() => server.received.length === 1);
  assert.equal(server.received[0].username, "Caf\u00e9");
});

test("the identity persists in the store; each join has a fresh session key", async () => {
  const server = new FakeServer();
  const store = memoryStore();
  const first = person(server, { store });
  await joined(first, "carol");
  const fingerprint = first.client.identity.fingerprint;
  const sid1 = first.client.session.sid;
  await first.client.leave();
  const again = person(server, { store }); // like a reload
  await joined(again, "carol");
  assert.equal(again.client.identity.fingerprint, fingerprint);
  assert.notEqual(again.client.session.sid, sid1);
  assert.equal(again.client.identity.privateKey.extractable, false);
});

test("a returning username with a new key is flagged, withheld from, then accepted", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob1 = person(server);
  await joined(alice, "alice");
  await joined(bob1, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  assert.equal(alice.last("roster").participants.find((p) => p.username === "bob").trust, "new");
  await bob1.client.leave();
  await until(() => alice.last("roster")?.participants.length === 1);
  const bob2 = person(server); // another browser, another identity, same name
  await joined(bob2, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  const entry = alice.last("roster").participants.find((p) => p.username === "bob");
  assert.equal(entry.trust, "changed");
  assert.deepEqual(alice.client.withheld(), ["bob"]);
  // bob2's messages still arrive, marked with the key change.
  bob2.client.send("it's me, new laptop");
  await until(() => alice.of("message").length === 1);
  assert.equal(alice.last("message").trust, "changed");
  // alice's messages are not wrapped to the changed key until she accepts it.
  alice.client.send("prove it");
  await until(() => alice.last("outgoing")?.state === "delivered");
  assert.deepEqual(Object.keys(server.received.filter((f) => f.type === "msg").at(-1).keys), [alice.client.session.sid]);
  assert.deepEqual(alice.last("outgoing").withheld, ["bob"], "the sender is told who it was not sent to");
  // The timeline hears of the change once, with both fingerprints, and of the comings and goings.
  assert.deepEqual(alice.of("key-changed").map((e) => [e.username, e.previous, e.fingerprint]),
    [["bob", bob1.client.identity.fingerprint, bob2.client.identity.fingerprint]]);
  assert.equal(entry.previous, bob1.client.identity.fingerprint);
  assert.deepEqual(alice.of("presence").map((e) => `${e.username} ${e.change}`), ["bob joined", "bob left", "bob joined"]);
  await alice.client.acceptKey(entry.sid);
  assert.equal(alice.last("trust").trust, "known");
  assert.equal((await alice.store.getPin("bob")).fingerprint, bob2.client.identity.fingerprint);
  assert.deepEqual(alice.client.withheld(), []);
  alice.client.send("welcome back");
  await until(() => texts(bob2).includes("alice: welcome back"));
  assert.ok(!texts(bob2).includes("alice: prove it"));
});

test("mark verified persists per fingerprint and is refused for a changed key", async () => {
  const server = new FakeServer();
  const store = memoryStore();
  const alice = person(server, { store });
  const dave = person(server);
  await joined(alice, "alice");
  await joined(dave, "dave");
  await until(() => alice.last("roster")?.participants.length === 2);
  await alice.client.markVerified(dave.client.session.sid);
  assert.equal(alice.last("roster").participants.find((p) => p.username === "dave").verified, true);
  assert.equal(await store.isVerified("dave", dave.client.identity.fingerprint), true);
  // Verification is of (name, key): the same key under another name is not verified.
  assert.equal(await store.isVerified("d4ve-2", dave.client.identity.fingerprint), false);
  assert.equal(alice.last("roster").participants.find((p) => p.you).verified, false);
});

test("tampered, replayed and misaddressed messages become warnings, never content", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  const captured = [];
  server.onClientFrame = (frame) => { if (frame.type === "msg") captured.push(frame); return false; };
  alice.client.send("original");
  await until(() => texts(bob).length === 1);
  const aliceEntry = server.members.get(alice.client.session.sid);
  const bobSocket = server.members.get(bob.client.session.sid).socket;
  const relayed = server.relayed(aliceEntry, captured[0], bob.client.session.sid);
  bobSocket.deliver(relayed); // replay
  const ct = c.b64decode(relayed.ct);
  ct[0] ^= 1;
  bobSocket.deliver({ ...relayed, id: c.randomId(), ct: c.b64encode(ct) }); // tampered
  bobSocket.deliver({ ...relayed, key: captured[0].keys[alice.client.session.sid] }); // not for bob
  bobSocket.deliver({ ...relayed, from: "0".repeat(32) }); // unknown sender
  bobSocket.deliver({ ...relayed, ts: Date.now() - 3600_000 }); // bad sig (ts changed)
  await until(() => bob.of("warning").length === 5);
  const warnings = bob.of("warning").map((w) => w.text);
  assert.match(warnings[0], /repeats a message/);
  assert.match(warnings[1], /signature/);
  assert.match(warnings[2], /not addressed to us/);
  assert.match(warnings[3], /not in the room/);
  assert.match(warnings[4], /signature/);
  for (const w of warnings) assert.ok(!w.includes("original"));
  assert.deepEqual(texts(bob), ["alice: original"]);
});

test("a participant whose session signature fails is shown but never a recipient", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const mallory = person(server);
  server.onClientFrame = (frame) => {
    if (frame.type === "join" && frame.username === "mallory") {
      // The server (or someone between) swapped the session key under mallory's signature.
      return c.generateSession().then((s) => { server.join(mallory.client.connection.socket, { ...frame, session_key: s.spki }); return true; });
    }
    return false;
  };
  await joined(alice, "alice");
  mallory.client.join("mallory");
  await until(() => alice.last("roster")?.participants.length === 2);
  const entry = alice.last("roster").participants.find((p) => p.username === "mallory");
  assert.equal(entry.ok, false);
  assert.match(entry.problem, /signature/);
  assert.deepEqual(alice.client.recipients().map((r) => r.username), ["alice"]);
  alice.client.send("secret");
  await until(() => alice.last("outgoing")?.state === "delivered");
  assert.deepEqual(Object.keys(server.received.filter((f) => f.type === "msg").at(-1).keys), [alice.client.session.sid]);
});

test("stale_recipients: refresh the roster and re-send once with a new id", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  // Bob vanishes without the server telling alice (her roster is now stale).
  server.members.delete(bob.client.session.sid);
  alice.client.send("are you there?");
  await until(() => alice.last("outgoing")?.state === "delivered");
  const types = server.received.filter((f) => f.type !== "join").map((f) => f.type);
  assert.deepEqual(types, ["msg", "roster", "msg"]);
  const [first, second] = server.received.filter((f) => f.type === "msg");
  assert.notEqual(first.id, second.id);
  assert.equal(Object.keys(second.keys).length, 1);
});

test("a second stale_recipients marks the message failed with a Retry path", async () => {
  const server = new FakeServer();
  const alice = person(server);
  await joined(alice, "alice");
  server.onClientFrame = (frame, socket) => {
    if (frame.type !== "msg") return false;
    socket.deliver({ v: 2, type: "error", code: "stale_recipients", message: "stale", id: frame.id, stale: ["f".repeat(32)] });
    return true;
  };
  alice.client.send("hello?");
  await until(() => alice.last("outgoing")?.state === "failed");
  assert.equal(server.received.filter((f) => f.type === "msg").length, 2, "re-sent exactly once");
  server.onClientFrame = null;
  alice.client.retry(alice.last("outgoing").localId);
  await until(() => alice.last("outgoing")?.state === "delivered");
});

test("messages typed while offline are queued and sent after the rejoin", async () => {
  const server = new FakeServer();
  const timers = [];
  const alice = person(server, { timers });
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  const sid1 = alice.client.session.sid;
  server.drop(alice.client.connection.socket, 1006);
  await until(() => alice.last("status")?.state === "reconnecting");
  assert.match(alice.last("status").detail, /Retrying in/);
  alice.client.send("typed while offline");
  assert.equal(alice.last("outgoing").state, "queued");
  assert.equal(timers.length, 1);
  assert.ok(timers[0].ms >= 250 && timers[0].ms <= 500);
  timers.shift().fn(); // the backoff timer fires
  await until(() => alice.last("outgoing")?.state === "delivered");
  assert.notEqual(alice.client.session.sid, sid1, "a fresh session key at every join");
  await until(() => texts(bob).includes("alice: typed while offline"));
});

test("an in-flight message is marked failed (not silently lost) when the connection drops", async () => {
  const server = new FakeServer();
  const alice = person(server, { timers: [] });
  await joined(alice, "alice");
  server.onClientFrame = (frame) => frame.type === "msg"; // swallowed: no ack ever comes
  alice.client.send("lost in transit?");
  await until(() => alice.last("outgoing")?.state === "sending");
  server.drop(alice.client.connection.socket, 1006);
  await until(() => alice.last("outgoing")?.state === "failed");
  assert.match(alice.last("outgoing").reason, /may or may not/);
});

test("closed with 4001 (replaced): no reconnect, the reason is reported", async () => {
  const server = new FakeServer();
  const store = memoryStore();
  const timers = [];
  const tab1 = person(server, { store, timers });
  const tab2 = person(server, { store });
  await joined(tab1, "erin");
  await joined(tab2, "erin"); // same identity from the same store: replaces tab1
  await until(() => tab1.of("ended").length === 1);
  assert.equal(tab1.last("ended").why, "replaced");
  assert.equal(tab1.last("status").state, "offline");
  assert.equal(timers.length, 0, "no reconnect is scheduled");
  assert.equal(server.connections, 2);
});

test("a username held by another identity fails the join without retrying", async () => {
  const server = new FakeServer();
  const timers = [];
  const a = person(server);
  const b = person(server, { timers });
  await joined(a, "frank");
  await b.client.join("Frank");
  await until(() => b.of("join-failed").length === 1);
  assert.equal(b.last("join-failed").code, "username_taken");
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(timers.length, 0);
});

test("messages over 16,000 characters are refused locally", async () => {
  const server = new FakeServer();
  const p = person(server);
  assert.match(p.client.send("x".repeat(16001)), /16000/);
  assert.equal(p.client.send("   "), null);
  assert.equal(p.of("outgoing").length, 0);
});

test("after a restart, queued messages wait for the people who were there to rejoin", async () => {
  const server = new FakeServer();
  const aliceTimers = [];
  const bobTimers = [];
  const alice = person(server, { timers: aliceTimers });
  const bob = person(server, { timers: bobTimers });
  const carol = person(server, { timers: [] });
  await joined(alice, "alice");
  await joined(bob, "bob");
  await joined(carol, "carol");
  await until(() => alice.last("roster")?.participants.length === 3);
  for (const p of [alice, bob, carol]) server.drop(p.client.connection.socket, 1001);
  await until(() => alice.last("status")?.state === "reconnecting" && bob.last("status")?.state === "reconnecting");
  alice.client.send("written during the restart");
  aliceTimers.shift().fn(); // alice is back first, alone
  await until(() => alice.last("status")?.state === "connected");
  assert.equal(server.received.filter((f) => f.type === "msg").length, 0, "not sent to an empty room");
  const grace = aliceTimers.find((t) => t.ms === REJOIN_GRACE_MS);
  assert.ok(grace, "a grace timer bounds the wait");
  bobTimers.shift().fn(); // bob is back; carol is not yet
  await until(() => alice.last("roster")?.participants.length === 2);
  assert.equal(server.received.filter((f) => f.type === "msg").length, 0, "still waiting for carol");
  grace.fn(); // carol never comes back: send to whoever is here
  await until(() => texts(bob).includes("alice: written during the restart"));
  await until(() => alice.last("outgoing")?.state === "delivered");
  assert.equal(alice.last("outgoing").reason, "to 1 other");
});

test("a rejoin where everyone is back sends the queue at once", async () => {
  const server = new FakeServer();
  const timers = [];
  const alice = person(server, { timers });
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  server.drop(alice.client.connection.socket, 1006);
  await until(() => alice.last("status")?.state === "reconnecting");
  alice.client.send("quick blip");
  timers.shift().fn();
  await until(() => texts(bob).includes("alice: quick blip"));
  assert.equal(timers.filter((t) => t.ms === REJOIN_GRACE_MS).length, 0);
});

test("a rate-limited message names its id and fails with a Retry path", async () => {
  const server = new FakeServer();
  const alice = person(server);
  await joined(alice, "alice");
  server.onClientFrame = (frame, socket) => {
    if (frame.type !== "msg") return false;
    socket.deliver({ v: 2, type: "error", code: "rate_limited", message: "slow down", id: frame.id });
    return true;
  };
  alice.client.send("too fast");
  await until(() => alice.last("outgoing")?.state === "failed");
  assert.match(alice.last("outgoing").reason, /limits how fast/);
  assert.deepEqual(alice.of("warning"), [], "matched to the message, not a loose warning");
  server.onClientFrame = null;
  alice.client.retry(alice.last("outgoing").localId);
  await until(() => alice.last("outgoing")?.state === "delivered");
});

test("a message never stays Sending: no answer in time fails it, a late ack still delivers", async () => {
  const server = new FakeServer();
  const timers = [];
  const alice = person(server, { timers });
  await joined(alice, "alice");
  let swallowed = null;
  server.onClientFrame = (frame, socket) => {
    if (frame.type !== "msg") return false;
    swallowed = { frame, socket };
    return true;
  };
  alice.client.send("anyone?");
  await until(() => alice.last("outgoing")?.state === "sending" && swallowed);
  const timeout = timers.find((t) => t.ms === SEND_TIMEOUT_MS);
  assert.ok(timeout, "a timer bounds the wait for the ack");
  assert.ok(SEND_TIMEOUT_MS <= 10000);
  timeout.fn();
  await until(() => alice.last("outgoing")?.state === "failed");
  assert.match(alice.last("outgoing").reason, /did not confirm it within 10 s/);
  swallowed.socket.deliver({ v: 2, type: "ack", id: swallowed.frame.id, recipients: 1 });
  await until(() => alice.last("outgoing")?.state === "delivered");
  assert.equal(alice.last("outgoing").reason, "only you can read it");
});

test("the client names its room, and joins only if the server's hello confirms it", async () => {
  const server = new FakeServer("design");
  const urls = [];
  const Socket = server.WebSocket;
  const events = [];
  const make = (room) => new ChatClient({ store: memoryStore(), url: "ws://test/ws", room,
    WebSocketImpl: class extends Socket { constructor(url) { urls.push(url); super(url); } },
    emit: (type, detail) => events.push({ type, ...detail }) });
  const right = make("design");
  assert.equal(await right.join("alice"), null);
  await until(() => events.some((e) => e.type === "welcome"), 5000, "welcome");
  assert.equal(urls[0], "ws://test/ws?room=design");

  const wrong = make("ops"); // the server answers for "design": nothing is signed for it
  events.length = 0;
  await wrong.join("bob");
  await until(() => events.some((e) => e.type === "join-failed"), 5000, "join-failed");
  const failed = events.find((e) => e.type === "join-failed");
  assert.equal(failed.code, "wrong_room");
  assert.match(failed.message, /answered for "design", not #ops/);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(server.received.filter((f) => f.type === "join" && f.username === "bob").length, 0);
  assert.equal(wrong.connection, null);
});
