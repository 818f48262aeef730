// `joins` (PROTOCOL.md §6.2): several joins of one moment in one frame, handled exactly as that
// many `joined` frames — each entry checked on its own, each announced — with one roster redraw.
import { test } from "node:test";
import assert from "node:assert/strict";

import { FakeServer, forgedParticipant, until } from "./fake_server.mjs";
import { person } from "./people.mjs";


test("a joins frame adds every entry in order, checks each on its own, and redraws the roster once", async () => {
  const server = new FakeServer();
  const alice = person(server);
  assert.equal(await alice.client.join("alice"), null);
  await until(() => alice.last("status")?.state === "connected", 5000, "alice connected");
  const carol = await forgedParticipant(server.room, "carol");
  const dave = await forgedParticipant(server.room, "dave");
  const forged = await forgedParticipant(server.room, "mallory");
  forged.session_sig = carol.session_sig; // signed by someone else: must not pass as mallory
  const rostersBefore = alice.of("roster").length;

  const { socket } = server.members.get(alice.client.session.sid);
  const strip = ({ privateKey, ...entry }) => entry;
  socket.deliver({ v: 2, type: "joins", participants: [strip(carol), strip(forged), strip(dave)] });
  await until(() => alice.of("roster").length > rostersBefore, 5000, "roster redrawn");

  assert.equal(alice.of("roster").length, rostersBefore + 1, "one redraw for the whole frame");
  const entries = alice.last("roster").participants;
  const byName = Object.fromEntries(entries.map((e) => [e.username, e]));
  assert.deepEqual(entries.map((e) => e.username), ["alice", "carol", "mallory", "dave"]);
  assert.equal(byName.carol.ok, true);
  assert.equal(byName.dave.ok, true);
  assert.equal(byName.mallory.ok, false, "a bad entry does not pass because its neighbours do");
  assert.ok(byName.mallory.problem);
  const joinedNames = alice.of("presence").filter((e) => e.change === "joined").map((e) => e.username);
  assert.deepEqual(joinedNames, ["carol", "mallory", "dave"], "each entry announced, in order");
  alice.client.leave();
});

test("a joins frame that is not a list changes nothing", async () => {
  const server = new FakeServer();
  const alice = person(server);
  assert.equal(await alice.client.join("alice"), null);
  await until(() => alice.last("status")?.state === "connected", 5000, "alice connected");
  const { socket } = server.members.get(alice.client.session.sid);
  const before = alice.of("roster").length;
  socket.deliver({ v: 2, type: "joins", participants: { sid: "x" } });
  socket.deliver({ v: 2, type: "roster", room: server.room, participants: server.participants() });
  await until(() => alice.of("roster").length > before, 5000, "roster answer");
  assert.deepEqual(alice.last("roster").participants.map((e) => e.username), ["alice"]);
  alice.client.leave();
});
