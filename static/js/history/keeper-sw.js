// A service worker with one job: hold the unlocked history key in memory for the rest of the
// browser session, so a reload does not ask for the passphrase again. It has no fetch
// handler and controls no page (its scope is a path no page lives at), so it cannot change
// what the server sends. The key it holds is a non-extractable CryptoKey: even this worker
// can only hand it back, never read it. Nothing here is ever written to disk; the browser
// forgets it when it ends the worker (browser closed, or idle after the last tab closed).

let held = null; // {lockId, key}

self.addEventListener("install", () => self.skipWaiting());

self.addEventListener("message", (event) => {
  const port = event.ports[0];
  if (!port) return;
  const { op, lockId, key } = event.data ?? {};
  if (op === "put" && typeof lockId === "string" && key instanceof CryptoKey) held = { lockId, key };
  if (op === "forget") held = null;
  const answer = op === "get" && held && held.lockId === lockId ? held.key : null;
  port.postMessage({ ok: true, key: answer });
});
