"""Browser cost of one message with the project's own static/js/crypto.js in headless Chromium.

python -m bench.browser   -> a Markdown table (median of repeats, ms)

Serves the checkout over http://127.0.0.1 (WebCrypto needs that secure context), imports
crypto.js as an ES module in a real navigation and times, per N recipients:
  seal (cached keys)  - sealMessage with recipients' CryptoKeys imported once (what chat.js
                         does: it keeps the CryptoKeys from verifyParticipant in the roster)
  seal + import       - importing each recipient's SPKI on every send, then sealMessage
  verify roster       - verifyParticipant for all N (once per join, not per message)
  open                - a recipient's openMessage: unwrap RSA-OAEP (key, position, seq, path),
                         rebuild the Merkle root and key commitment, verify ECDSA, AES-GCM, unpad
Protocol v2 (PROTOCOL.md §7): each recipient gets its own sequence number; the plaintext is
padded to a bucket. Recipient RSA keys are made in Python (keygen is not what is measured).
"""

from __future__ import annotations

import functools
import http.server
import os
import sys
import tempfile
import threading
import time

from cryptography.hazmat.primitives import serialization

from securechat import crypto

from . import keys as bench_keys
from .runner import REPO

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

PAGE_JS = """
async ({members, pkcs8, sizes, repeats}) => {
  const c = await import('/static/js/crypto.js');
  const room = 'lobby';
  const identity = await c.generateIdentity();
  const senderSession = members[0];
  const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
  const out = [];
  const recipientSession = { sid: members[0].sid, privateKey: await c.importPkcs8(pkcs8, 'session') };
  for (const n of sizes) {
    const list = members.slice(0, n);
    const cached = [];
    for (const m of list) cached.push({ sid: m.sid, sessionKey: await c.importSessionPublicKey(m.session_key) });
    const seal = (recipients, seq) => c.sealMessage({
      identityPrivateKey: identity.privateKey, fingerprint: identity.fingerprint,
      senderSid: senderSession.sid, room, text: 'x'.repeat(200),
      recipients: recipients.map((r) => ({ ...r, seq })) });
    await seal(cached, 1);  // warm-up
    const tSeal = [], tSealImport = [], tVerify = [], tOpen = [];
    let frame;
    for (let i = 0; i < repeats; i++) {
      let t = performance.now();
      frame = await seal(cached, i + 2);
      tSeal.push(performance.now() - t);
      t = performance.now();
      const fresh = [];
      for (const m of list) fresh.push({ sid: m.sid, sessionKey: await c.importSessionPublicKey(m.session_key) });
      await seal(fresh, i + 1000);
      tSealImport.push(performance.now() - t);
    }
    for (let i = 0; i < Math.min(repeats, 5); i++) {
      const t = performance.now();
      for (const m of list) await c.verifyParticipant(room, m);
      tVerify.push(performance.now() - t);
    }
    // What a recipient receives (§6.2): the shared part and its own wrapped key.
    const relayed = { v: 2, type: 'msg', from: senderSession.sid, id: frame.id, ts: frame.ts,
      iv: frame.iv, ct: frame.ct, to: frame.to, sig: frame.sig, key: frame.keys[members[0].sid] };
    const sender = { fingerprint: identity.fingerprint, identityKey: identity.publicKey };
    for (let i = 0; i < repeats; i++) {
      const t = performance.now();
      const opened = await c.openMessage(relayed, room, sender, recipientSession);
      tOpen.push(performance.now() - t);
      if (opened.text.length !== 200) throw new Error('open returned the wrong text');
    }
    out.push({ n, seal: median(tSeal), seal_import: median(tSealImport), verify_roster: median(tVerify),
               open: median(tOpen), frame_bytes: JSON.stringify(frame).length,
               delivery_bytes: JSON.stringify(relayed).length });
  }
  return { userAgent: navigator.userAgent, rows: out };
}
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def measure(sizes=(2, 10, 50, 100, 250), repeats: int = 15) -> dict:
    from playwright.sync_api import sync_playwright

    members = bench_keys.members(max(sizes))
    roster = []
    issued = int(time.time() * 1000)
    for m in members:
        challenge, stream = os.urandom(16).hex(), os.urandom(16).hex()
        roster.append({"sid": m.sid, "username": m.username, "fingerprint": m.fingerprint,
                       "identity_key": m.identity_b64, "session_key": m.session_b64, "issued": issued,
                       "challenge": challenge, "stream": stream,
                       "session_sig": crypto.sign_session(m.identity, "lobby", m.username, m.session_b64,
                                                          issued, challenge, stream)})
    pkcs8 = crypto.b64encode(members[0].session.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    handler = functools.partial(_Quiet, directory=str(REPO))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory() as home:
            os.environ["XDG_CONFIG_HOME"] = home
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    page = browser.new_page()
                    page.goto(f"http://127.0.0.1:{server.server_address[1]}/README.md")
                    return page.evaluate(PAGE_JS, {"members": roster, "pkcs8": pkcs8,
                                                   "sizes": list(sizes), "repeats": repeats})
                finally:
                    browser.close()
    finally:
        server.shutdown()


def markdown(result: dict) -> str:
    lines = [f"Chromium: `{result['userAgent']}`\n",
             "| recipients N | seal, cached CryptoKeys (ms) | seal + import N SPKIs (ms) "
             "| verifyParticipant × N (ms) | open one (ms) | msg frame bytes | one delivery bytes |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['n']} | {r['seal']:.2f} | {r['seal_import']:.2f} | {r['verify_roster']:.2f} "
                     f"| {r['open']:.2f} | {r['frame_bytes']:,} | {r['delivery_bytes']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(measure()))
    sys.exit(0)
