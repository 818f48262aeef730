// static/js/protocol.js: the frames (the connection that carries them: transport.test.mjs).
import { test } from "node:test";
import assert from "node:assert/strict";

import * as p from "../../static/js/protocol.js";

test("client frames have exactly the fields of §6.1", () => {
  assert.deepEqual(p.joinFrame({ username: "a", identityKey: "I", sessionKey: "S", issued: 5, challenge: "C",
    stream: "T", sessionSig: "G" }),
  { v: 2, type: "join", username: "a", identity_key: "I", session_key: "S", issued: 5, challenge: "C", stream: "T",
    session_sig: "G" });
  assert.deepEqual(p.rekeyFrame({ sessionKey: "S", issued: 5, challenge: "C", sessionSig: "G" }),
    { v: 2, type: "rekey", session_key: "S", issued: 5, challenge: "C", session_sig: "G" });
  assert.deepEqual(p.recipientsFrame("ab"), { v: 2, type: "recipients", id: "ab" });
  assert.deepEqual(p.rosterFrame(), { v: 2, type: "roster" });
  assert.deepEqual(p.leaveFrame(), { v: 2, type: "leave" });
});

test("parseFrame accepts v2 objects only and keeps unknown fields", () => {
  assert.deepEqual(p.parseFrame('{"v":2,"type":"ack","id":"x","extra":true}'),
    { v: 2, type: "ack", id: "x", extra: true });
  for (const bad of ["", "nope", "[]", "null", "1", '{"v":1,"type":"ack"}', '{"v":2}', '{"v":"2","type":"ack"}']) {
    assert.equal(p.parseFrame(bad), null, bad);
  }
  assert.equal(p.parseFrame(new ArrayBuffer(2)), null);
});
