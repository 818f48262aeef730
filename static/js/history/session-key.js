// The page's side of keeper-sw.js: keep the history's unlocked key for the browser session
// without writing it anywhere. sessionStorage and IndexedDB would put it on disk (Chromium
// saves session storage for session restore); a service worker's memory does not.
// Without service workers (some private modes, or refused) there is no keeper, and the page
// asks for the passphrase on every load instead, and says so.

const SCRIPT = new URL("./keeper-sw.js", import.meta.url);
const SCOPE = new URL("./keeper/", import.meta.url); // no page lives there: it controls nothing
const ANSWER_MS = 3000;
// Browsers end an idle service worker after ~30 s; a page that is open keeps it awake.
const HEARTBEAT_MS = 20000;

function activated(registration) {
  const worker = registration.active ?? registration.waiting ?? registration.installing;
  if (!worker) return Promise.reject(new Error("no service worker"));
  if (worker.state === "activated") return Promise.resolve(registration.active ?? worker);
  return new Promise((resolve, reject) => {
    worker.addEventListener("statechange", () => {
      if (worker.state === "activated") resolve(worker);
      if (worker.state === "redundant") reject(new Error("service worker failed"));
    });
  });
}

/** {get(lockId), put(lockId, key), forget(), release()}, or null when unavailable. */
export async function sessionKeeper({ container = globalThis.navigator?.serviceWorker,
  setTimer = (fn, ms) => setInterval(fn, ms) } = {}) {
  if (!container) return null;
  let worker;
  try {
    const registration = await container.register(SCRIPT.href, { scope: SCOPE.href, updateViaCache: "none" });
    worker = await activated(registration);
  } catch {
    return null;
  }
  const ask = (message) => new Promise((resolve) => {
    const channel = new MessageChannel();
    const timer = setTimeout(() => resolve(null), ANSWER_MS);
    channel.port1.onmessage = (event) => {
      clearTimeout(timer);
      resolve(event.data);
    };
    try {
      worker.postMessage(message, [channel.port2]);
    } catch {
      clearTimeout(timer);
      resolve(null);
    }
  });
  let mine = null; // {lockId, key}: what this page put, to hand back if the worker restarted
  const keeper = {
    async get(lockId) {
      return (await ask({ op: "get", lockId }))?.key ?? null;
    },
    async put(lockId, key) {
      mine = { lockId, key };
      await ask({ op: "put", lockId, key });
    },
    async forget() {
      mine = null;
      await ask({ op: "forget" });
    },
    /** Another tab locked the history: stop handing the key back to the worker. */
    release() {
      mine = null;
    },
  };
  setTimer(async () => {
    const answer = await ask({ op: "get", lockId: mine?.lockId ?? "" });
    // The browser ended the worker anyway (it may): this open page gives it the key back.
    if (mine && answer && !answer.key) await ask({ op: "put", ...mine });
  }, HEARTBEAT_MS);
  return keeper;
}
