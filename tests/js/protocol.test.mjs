// static/js/protocol.js: the frames (the connection that carries them: transport.test.mjs).
import { test } from "node:test";
import assert from "node:assert/strict";

import * as p from "../../static/js/protocol.js";

test("client frames have exactly the fields of §6.1", () => {
  assert.deepEqual(p.joinFrame({ username: "a", identityKey: "I", sessionKey: "S", sessionSig: "G" }),
    { v: 1, type: "join", username: "a", identity_key: "I", session_key: "S", session_sig: "G" });
  assert.deepEqual(p.rosterFrame(), { v: 1, type: "roster" });
  assert.deepEqual(p.leaveFrame(), { v: 1, type: "leave" });
});

test("parseFrame accepts v1 objects only and keeps unknown fields", () => {
  assert.deepEqual(p.parseFrame('{"v":1,"type":"ack","id":"x","extra":true}'),
    { v: 1, type: "ack", id: "x", extra: true });
  for (const bad of ["", "nope", "[]", "null", "1", '{"v":2,"type":"ack"}', '{"v":1}', '{"v":"1","type":"ack"}']) {
    assert.equal(p.parseFrame(bad), null, bad);
  }
  assert.equal(p.parseFrame(new ArrayBuffer(2)), null);
});
