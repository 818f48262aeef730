// The attacks of issue 13, each played by a malicious server (tests/js/fake_server.mjs) against
// static/js/chat.js. Every test here failed against protocol v1's client; see THREAT-MODEL.md.
import { test } from "node:test";
import assert from "node:assert/strict";

import * as c from "../../static/js/crypto.js";
import { FakeServer, forgedParticipant, until } from "./fake_server.mjs";
import { joined, person } from "./people.mjs";


/** The server shows `victim` a participant nobody else sees. */
async function inject(server, victim, participant) {
  const { socket } = server.members.get(victim.client.session.sid);
  socket.deliver({ v: 2, type: "joined", participant });
  await until(() => victim.last("roster")?.participants.some((p) => p.sid === participant.sid), 20000, "injected entry");
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

// -- 2. Old session keys -------------------------------------------------------------------------

test("attack 2: a session key older than the client's maximum age is never a recipient", async () => {
  const server = new FakeServer();
  const alice = person(server);
  await joined(alice, "alice");
  const old = await forgedParticipant(server.room, "dave", { issued: Date.now() - 7 * 24 * 3600_000 });
  const entry = await inject(server, alice, old);
  assert.equal(entry.ok, false, "v1 verified a week-old session key and wrapped to it");
  assert.match(entry.problem, /older than the maximum session age/);
  assert.ok(!alice.client.recipients().some((r) => r.sid === old.sid));
});

test("attack 2: a long stay rotates the session key, invisibly for the others", async () => {
  const server = new FakeServer();
  let offset = 0;
  const alice = person(server, { now: () => Date.now() + offset });
  const bob = person(server, { now: () => Date.now() + offset });
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  const before = alice.client.session.sid;
  offset = c.SESSION_ROTATE_MS + 1000;
  assert.equal(await alice.client.enqueue(() => alice.client.maybeRotate()).then(() => alice.client.rotating !== null || alice.client.session.sid !== before), true);
  await until(() => alice.client.session.sid !== before, 20000, "rotated");
  await until(() => bob.last("roster")?.participants.some((p) => p.sid === alice.client.session.sid));
  assert.equal(bob.of("presence").filter((n) => n.username === "alice").length, 0, "no join/leave shown");
  alice.client.send("after rotation");
  await until(() => bob.of("message").some((m) => m.text === "after rotation"));
  assert.deepEqual(bob.of("warning"), []);
});

// -- 3. Ghosts -----------------------------------------------------------------------------------

test("attack 3: a message also addressed to a session hidden from the receiver raises a ghost warning", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  // The server shows alice a ghost that bob never sees; alice's messages are wrapped to it.
  const ghost = await forgedParticipant(server.room, "ghost");
  server.members.set(ghost.sid, { socket: { deliver() {} }, participant: ghost });
  await inject(server, alice, ghost);
  alice.client.send("just between us");
  await until(() => bob.of("message").length === 1);
  await until(() => bob.of("warning").some((w) => w.kind === "ghost"), 20000, "ghost warning");
  assert.match(bob.of("warning").find((w) => w.kind === "ghost").text, /1 session you cannot see/);
});

/** alice's messages also go to a ghost only alice is shown; `answer(frame, socket)` plays the list request. */
async function ghostRoom(answer, options = {}, server = new FakeServer()) {
  const alice = person(server);
  const bob = person(server, options);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  const ghost = await forgedParticipant(server.room, "ghost");
  server.members.set(ghost.sid, { socket: { deliver() {} }, participant: ghost });
  await inject(server, alice, ghost);
  server.onClientFrame = (frame, socket) => frame.type === "recipients" && (answer(frame, socket, ghost), true);
  alice.client.send("just between us");
  await until(() => bob.of("message").length === 1);
  return { server, alice, bob, ghost };
}

test("attack 3: a server that never answers the recipient-list request does not pass the ghost check", async () => {
  const { bob } = await ghostRoom(() => {}, { recipientsTimeoutMs: 300 });
  await until(() => bob.of("warning").some((w) => w.kind === "ghost"), 20000, "ghost warning");
  assert.match(bob.of("warning").find((w) => w.kind === "ghost").text,
    /The server did not say who else received alice's message; it may also have gone to someone hidden from you/);
});

test("attack 3: a recipient list that leaves the ghost out does not match the signed commitment", async () => {
  const server = new FakeServer();
  const { bob } = await ghostRoom((frame, socket, ghost) => {
    const sids = [...server.members.keys()].filter((sid) => sid !== ghost.sid).sort();
    socket.deliver({ v: 2, type: "recipients", id: frame.id, sids });
  }, {}, server);
  await until(() => bob.of("warning").some((w) => w.kind === "ghost"), 20000, "ghost warning");
  assert.match(bob.of("warning").find((w) => w.kind === "ghost").text,
    /The server's list of who received alice's message does not match what alice signed/);
});

test("attack 3: Verified only sends to verified people and says who was left out", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  const carol = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await joined(carol, "carol");
  await until(() => alice.last("roster")?.participants.length === 3);
  await alice.client.markVerified(bob.client.session.sid);
  await alice.client.setVerifiedOnly(true);
  alice.client.send("verified people only");
  await until(() => alice.last("outgoing")?.state === "delivered");
  const sent = server.received.filter((f) => f.type === "msg").at(-1);
  assert.deepEqual(Object.keys(sent.keys).sort(), [alice.client.session.sid, bob.client.session.sid].sort());
  assert.match(alice.last("outgoing").reason, /not sent to carol \(not verified\)/);
  assert.deepEqual(alice.client.withheldReasons(), [{ username: "carol", why: "not verified" }]);
  assert.equal(await alice.store.getSetting("verified-only:lobby"), true);
});

// -- 4. Silent drops and reordering ------------------------------------------------------------

test("attack 4: a dropped copy is reported to its recipient from signed sequence numbers", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  let drop = true;
  server.onDeliver = (sid) => sid === bob.client.session.sid && drop && !(drop = false);
  alice.client.send("one");
  await until(() => alice.last("outgoing")?.state === "delivered");
  alice.client.send("two");
  await until(() => bob.of("message").length === 1);
  const missed = bob.of("notice").find((n) => n.kind === "missed");
  assert.ok(missed, "v1 showed nothing: the sender still saw 'to 1 other'");
  assert.equal(missed.text, "1 message from alice did not arrive.");
});

test("attack 4: a delayed message is shown late, in its place, not refused as a replay", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  const held = [];
  server.onDeliver = (sid, frame) => {
    if (sid !== bob.client.session.sid || held.length) return false;
    held.push(frame);
    return true;
  };
  alice.client.send("first");
  await until(() => held.length === 1);
  alice.client.send("second");
  await until(() => bob.of("message").length === 1);
  server.onDeliver = null;
  const sender = [...server.members.values()].find((m) => m.participant.username === "alice");
  server.members.get(bob.client.session.sid).socket.deliver(server.relayed(sender, held[0], bob.client.session.sid));
  await until(() => bob.of("message").length === 2);
  const [second, first] = bob.of("message");
  assert.equal(first.text, "first");
  assert.equal(first.late, true);
  assert.equal(first.before, second.id, "placed before the later message");
  assert.deepEqual(bob.of("warning"), [], "v1 called it a replay");
});

// -- 5. Limits set by the server ---------------------------------------------------------------

test("attack 5: the server cannot widen the freshness window", async () => {
  const server = new FakeServer();
  server.limits = { max_clock_skew_ms: 1e15 };
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  assert.equal(bob.client.limits.max_clock_skew_ms, c.MAX_CLOCK_SKEW_MS);
  // A genuine message of alice's from three hours ago, presented as new.
  const old = await c.sealMessage({ identityPrivateKey: alice.client.identity.privateKey,
    fingerprint: alice.client.identity.fingerprint, senderSid: alice.client.session.sid, room: "lobby",
    text: "three hours old", ts: Date.now() - 3 * 3600_000,
    recipients: [{ sid: bob.client.session.sid, sessionKey: bob.client.session.publicKey, seq: 1 }] });
  const sender = [...server.members.values()].find((m) => m.participant.username === "alice");
  server.members.get(bob.client.session.sid).socket.deliver(server.relayed(sender, old, bob.client.session.sid));
  await until(() => bob.of("warning").length === 1);
  assert.match(bob.last("warning").text, /too far from this device's clock/);
  assert.deepEqual(bob.of("message"), []);
});

// -- 6. Verified follows the person ------------------------------------------------------------

test("attack 6: the same key under a second name does not inherit ✓ and is flagged", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => alice.last("roster")?.participants.length === 2);
  await alice.client.markVerified(bob.client.session.sid);
  const twin = await forgedParticipant(server.room, "robert", { identity: bob.client.identity });
  const entry = await inject(server, alice, twin);
  assert.equal(entry.verified, false, "v1 showed robert as ✓ Verified (verification followed the key)");
  assert.deepEqual(entry.sameKeyAs, ["bob"]);
  assert.deepEqual(alice.last("roster").participants.find((p) => p.username === "bob").sameKeyAs, ["robert"]);
});

// -- 7. Equivocation -----------------------------------------------------------------------------

test("attack 7: one signature cannot give two recipients two different message keys", async () => {
  const server = new FakeServer();
  const alice = person(server);
  const bob = person(server);
  await joined(alice, "alice");
  await joined(bob, "bob");
  await until(() => bob.last("roster")?.participants.length === 2);
  // A malicious sender: one header, one signature, but bob's wrapped key holds another key.
  const common = { identityPrivateKey: alice.client.identity.privateKey, fingerprint: alice.client.identity.fingerprint,
    senderSid: alice.client.session.sid, room: "lobby", text: "pay 10", id: c.randomId(), ts: Date.now(),
    iv: c.randomBytes(12), recipients: [{ sid: bob.client.session.sid, sessionKey: bob.client.session.publicKey, seq: 1 }] };
  const signed = await c.sealMessage({ ...common, messageKey: c.randomBytes(32) });
  const other = await c.sealMessage({ ...common, messageKey: c.randomBytes(32) });
  const sender = [...server.members.values()].find((m) => m.participant.username === "alice");
  const frame = { ...server.relayed(sender, signed, bob.client.session.sid), key: other.keys[bob.client.session.sid] };
  server.members.get(bob.client.session.sid).socket.deliver(frame);
  await until(() => bob.of("warning").length === 1);
  assert.match(bob.last("warning").text, /signature, key or sequence number does not match/);
  assert.deepEqual(bob.of("message"), []);
});
