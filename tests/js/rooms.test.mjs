// static/js/rooms/: the room-name rule (the same vectors as the server's), room paths, invite
// links, and new room names.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { WORDS } from "../../static/js/rooms/words.js";
import { NEW_ROOM_WORDS, inviteUrl, isRoomName, newRoomName, randomBelow, roomFromPath, roomPath }
  from "../../static/js/rooms/names.js";

const vectors = JSON.parse(readFileSync(new URL("../vectors/rooms.json", import.meta.url), "utf8"));

test("the browser accepts exactly the room names the server accepts", () => {
  assert.ok(vectors.names.length > 20);
  for (const { name, valid } of vectors.names) assert.equal(isRoomName(name), valid, JSON.stringify(name));
  assert.equal(isRoomName(undefined), false);
});

test("paths: the default room is /, every other room /r/<name>", () => {
  assert.equal(roomPath("lobby", "lobby"), "/");
  assert.equal(roomPath("design", "lobby"), "/r/design");
  assert.equal(roomFromPath("/", "lobby"), "lobby");
  assert.equal(roomFromPath("/r/design", "lobby"), "design");
  assert.equal(roomFromPath("/r/lobby", "lobby"), "lobby");
  for (const bad of ["/r/Design", "/r/", "/r/a/b", "/setup", "/r/x/qr.svg"]) assert.equal(roomFromPath(bad, "lobby"), null, bad);
  assert.equal(inviteUrl("https://192.168.1.20:5000", "design", "lobby"), "https://192.168.1.20:5000/r/design");
  assert.equal(inviteUrl("https://192.168.1.20:5000/", "lobby", "lobby"), "https://192.168.1.20:5000/");
});

test("the word list: 1295 distinct words of 3-5 letters, so four always make a room name", () => {
  assert.equal(WORDS.length, 1295);
  assert.equal(new Set(WORDS).size, WORDS.length);
  for (const word of WORDS) assert.match(word, /^[a-z]{3,5}$/);
  assert.ok(NEW_ROOM_WORDS * 5 + NEW_ROOM_WORDS - 1 <= 32);
});

test("new room names are four words from the list, from the CSPRNG", () => {
  const seen = new Set();
  for (let i = 0; i < 200; i += 1) {
    const name = newRoomName();
    assert.ok(isRoomName(name), name);
    const words = name.split("-");
    assert.equal(words.length, 4);
    for (const word of words) assert.ok(WORDS.includes(word), word);
    seen.add(name);
  }
  assert.equal(seen.size, 200); // 41 bits: a repeat in 200 draws would mean a broken generator
  // The words come from getRandomValues, not Math.random.
  const fixed = (values) => { let i = 0; return (buffer) => { buffer[0] = values[i++]; return buffer; }; };
  assert.equal(newRoomName({ getRandomValues: fixed([0, 1, 2, 1294]) }), `${WORDS[0]}-${WORDS[1]}-${WORDS[2]}-${WORDS[1294]}`);
});

test("randomBelow rejects the values that would bias the modulo", () => {
  const values = [0xffffffff, 0xfffffff0, 7];
  let i = 0;
  const pick = randomBelow(1295, (buffer) => { buffer[0] = values[i++]; return buffer; });
  assert.equal(pick, 7);
  assert.equal(i, 3); // both values above the last full multiple of 1295 were thrown away
});
