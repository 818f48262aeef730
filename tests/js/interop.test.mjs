// JS ⇄ Python cross-check: static/js/crypto.js and securechat/crypto.py must read each other's
// output. Each Python step runs `python3` (or $PYTHON) with JSON on stdin and stdout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

import * as c from "../../static/js/crypto.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const PYTHON = process.env.PYTHON ?? "python3";

const PY = String.raw`
import json, sys
from cryptography.hazmat.primitives import serialization
from securechat import crypto

req = json.load(sys.stdin)
op = req["op"]

def pkcs8(key):
    return crypto.b64encode(key.private_bytes(serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

def load(b64):
    return serialization.load_der_private_key(crypto.b64decode(b64), password=None)

if op == "new_session":
    s = crypto.SessionKey.generate()
    out = {"spki": s.spki_b64, "sid": s.sid, "pkcs8": pkcs8(s.private_key)}
elif op == "open":
    session = crypto.SessionKey(load(req["session_pkcs8"]))
    key = crypto.load_identity_public_key(req["identity_spki"])
    try:
        opened = crypto.open_message(req["frame"], req["room"], req["fingerprint"], key, session)
        out = {"text": opened.text, "seq": opened.seq}
    except crypto.CryptoError as exc:
        out = {"error": str(exc)}
elif op == "verify_session":
    key = crypto.load_identity_public_key(req["identity_spki"])
    text = crypto.session_text(req["room"], req["username"], req["session_spki"], req["issued"], req["challenge"], req["stream"])
    out = {"ok": crypto.verify(key, text, req["sig"])}
elif op == "seal":
    identity = crypto.Identity.generate()
    session = crypto.SessionKey.generate()
    recipients = [crypto.Recipient(session.sid, session.private_key.public_key(), 1),
                  crypto.Recipient(req["to_sid"], crypto.load_session_public_key(req["to_spki"]), 9)]
    frame = crypto.seal_message(identity=identity, sender_sid=session.sid, room="lobby",
                                text=req["text"], recipients=recipients)
    issued, challenge, stream = 1764097200000, "a" * 32, "b" * 32
    out = {"frame": frame, "identity_spki": identity.spki_b64, "fingerprint": identity.fingerprint,
           "sid": session.sid, "session_spki": session.spki_b64, "issued": issued, "challenge": challenge,
           "stream": stream,
           "session_sig": crypto.sign_session(identity, "lobby", "pybob", session.spki_b64, issued, challenge, stream)}
elif op == "plaintexts":
    out = {"b64": [crypto.b64encode(crypto.encode_plaintext(t)) for t in req["texts"]]}
print(json.dumps(out))
`;

function python(request) {
  const run = spawnSync(PYTHON, ["-c", PY], { cwd: ROOT, input: JSON.stringify(request), encoding: "utf8" });
  if (run.error) throw new Error(`cannot run ${PYTHON}: ${run.error.message}`);
  assert.equal(run.status, 0, run.stderr);
  return JSON.parse(run.stdout);
}

const TRICKY = ["plain", "Grüße 世界 🎉", 'quotes " and \\ backslash', "tab\tnewline\nbell\u0007",
  "line sep \u2028 para \u2029", "</script><img src=x onerror=alert(1)>", "\u0000nul", "x".repeat(16000)];

test("the plaintext JSON is byte-identical in JS and Python", () => {
  const { b64 } = python({ op: "plaintexts", texts: TRICKY });
  assert.deepEqual(TRICKY.map((t) => c.b64encode(c.encodePlaintext(t))), b64);
});

test("a message sealed by JS opens in Python, and a changed one does not", async () => {
  const bob = python({ op: "new_session" });
  const alice = await c.generateIdentity();
  const aliceSession = await c.generateSession();
  const room = "lobby";
  // Python verifies the browser's session statement too.
  const st = { issued: 1764097200000, challenge: "c".repeat(32), stream: "d".repeat(32) };
  const sessionSig = await c.signSession(alice.privateKey, room, "alice", aliceSession.spki, st.issued, st.challenge, st.stream);
  assert.deepEqual(python({ op: "verify_session", identity_spki: alice.spki, room, username: "alice",
    session_spki: aliceSession.spki, sig: sessionSig, ...st }), { ok: true });
  assert.deepEqual(python({ op: "verify_session", identity_spki: alice.spki, room, username: "alicia",
    session_spki: aliceSession.spki, sig: sessionSig, ...st }), { ok: false });
  for (const text of TRICKY) {
    const out = await c.sealMessage({
      identityPrivateKey: alice.privateKey, fingerprint: alice.fingerprint, senderSid: aliceSession.sid,
      room, text,
      recipients: [{ sid: aliceSession.sid, sessionKey: aliceSession.publicKey, seq: 4 },
        { sid: bob.sid, sessionKey: await c.importSessionPublicKey(bob.spki), seq: 17 }],
    });
    const relayed = { v: 2, type: "msg", from: aliceSession.sid, id: out.id, ts: out.ts, iv: out.iv, ct: out.ct,
      to: out.to, sig: out.sig, key: out.keys[bob.sid] };
    const opened = python({ op: "open", session_pkcs8: bob.pkcs8, identity_spki: alice.spki, frame: relayed,
      room, fingerprint: alice.fingerprint });
    assert.deepEqual(opened, { text, seq: 17 }, JSON.stringify(text).slice(0, 40));
    if (text === "plain") {
      const tampered = python({ op: "open", session_pkcs8: bob.pkcs8, identity_spki: alice.spki,
        frame: { ...relayed, ts: out.ts + 1 }, room, fingerprint: alice.fingerprint });
      assert.match(tampered.error, /signature/);
    }
  }
});

test("a message sealed by Python opens in JS", async () => {
  const mine = await c.generateSession();
  for (const text of ["from python with ❤", "a\nb", "<b>not bold</b>"]) {
    const sealed = python({ op: "seal", to_sid: mine.sid, to_spki: mine.spki, text });
    // The Python participant passes the same roster checks the page applies (§4).
    const keys = await c.verifyParticipant("lobby", { sid: sealed.sid, username: "pybob", fingerprint: sealed.fingerprint,
      identity_key: sealed.identity_spki, session_key: sealed.session_spki, issued: sealed.issued,
      challenge: sealed.challenge, stream: sealed.stream, session_sig: sealed.session_sig });
    const f = sealed.frame;
    const relayed = { v: 2, type: "msg", from: sealed.sid, id: f.id, ts: f.ts, iv: f.iv, ct: f.ct, to: f.to,
      sig: f.sig, key: f.keys[mine.sid] };
    const sender = { fingerprint: sealed.fingerprint, identityKey: keys.identityKey };
    const opened = await c.openMessage(relayed, "lobby", sender, mine);
    assert.equal(opened.text, text);
    assert.equal(opened.seq, 9);
    await assert.rejects(c.openMessage({ ...relayed, ts: f.ts + 1 }, "lobby", sender, mine), (e) => e.code === "bad_signature");
  }
});
