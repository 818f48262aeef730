// The connection to the server, whichever way gets through (docs/PROTOCOL.md §1):
// a WebSocket, or — when the WebSocket cannot open, as in WebKit (every iPhone browser) with a
// certificate accepted by exception — the HTTP transport of §1.2: frames arrive on an
// EventSource stream and leave as fetch() POSTs. chat.js sees one interface either way.
// No DOM: every browser API and timer is injectable so node tests can drive it.

import { parseFrame } from "./protocol.js";

export const CLOSE_NORMAL = 1000;
export const CLOSE_ABNORMAL = 1006; // what a WebSocket reports when the connection just died
export const CLOSE_POLICY = 1008;
export const CLOSE_REPLACED = 4001; // §5: a newer session took over; never reconnect
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30000;
// A WebSocket that opens but never delivers the server's first frame is as good as closed.
export const FIRST_FRAME_TIMEOUT_MS = 5000;
// Retries of one POST, and of one stream resume, after network errors.
export const RETRY_DELAYS_MS = [100, 250, 500, 1000, 2000, 4000];

/** ws: on http pages, wss: on https pages, same host and port as the page (§1). */
export function wsUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/** `?room=<name>` for the request that opens a connection (§1); none: the default room. */
export function roomQuery(room) {
  return room ? `?room=${encodeURIComponent(room)}` : "";
}

/** The page's origin for the HTTP transport, from the WebSocket URL (ws→http, wss→https). */
export function httpBase(url) {
  return url.replace(/^ws(s?):/, "http$1:").replace(/\/ws$/, "");
}

/**
 * Delay before reconnect attempt number `attempt` (0-based): exponential, capped, with
 * "equal jitter" (half fixed, half random) so a restarted server is not hit by every
 * browser in the same millisecond, yet nobody waits much less than the backoff.
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}

/** One WebSocket: text frames in and out. */
class WebSocketCarrier {
  constructor(url, WebSocketImpl) {
    this.kind = "websocket";
    this.url = url;
    this.WebSocketImpl = WebSocketImpl;
    this.socket = null;
    this.onText = null;
    this.onClose = null;
  }

  open() {
    const socket = new this.WebSocketImpl(this.url);
    this.socket = socket;
    socket.onmessage = (event) => this.onText?.(event.data);
    socket.onclose = (event) => this.onClose?.({ code: event?.code ?? CLOSE_ABNORMAL, reason: event?.reason ?? "" });
    // onerror is always followed by onclose, which does the work.
  }

  get isOpen() {
    return this.socket?.readyState === 1;
  }

  get closed() {
    return !this.socket || this.socket.readyState > 1;
  }

  send(text) {
    if (!this.isOpen) return false;
    this.socket.send(text);
    return true;
  }

  stop(finalText, code) {
    const socket = this.socket;
    if (!socket) return;
    if (finalText && socket.readyState === 1) socket.send(finalText);
    // After a leave the server closes; closing ourselves too is harmless and covers no answer.
    if (socket.readyState <= 1) socket.close(code);
  }
}

/**
 * The HTTP transport (§1.2). One session outlives the streams that carry it: a stream that
 * errors or goes silent is resumed (?session=…&last=…) and the server replays what we missed;
 * only when that fails does the connection count as dropped. POSTs go one at a time, in order,
 * each numbered so that a retry after a network error is never handled twice, and each
 * acknowledging what we have received so the server can let go of it.
 */
class HttpCarrier {
  constructor({ base, room, EventSourceImpl, fetchImpl, setTimer, clearTimer, pageEvents }) {
    Object.assign(this, { base, room, EventSourceImpl, fetchImpl, setTimer, clearTimer, pageEvents });
    this.kind = "http";
    this.onText = null;
    this.onClose = null;
    this.onInterrupt = null; // ({resuming}): the stream broke and a quick resume failed / it is back
    this.interrupted = false;
    this.source = null;
    this.session = null; // {session, token, ping_ms, timeout_ms, ack_bytes}
    this.last = 0; // id of the last frame received
    this.unackedBytes = 0;
    this.sent = 0; // number of the last frame the server accepted
    this.queue = []; // {path, body} waiting for their POST
    this.posting = false;
    this.ended = false;
    this.lostAt = null; // when the current stream failed, while we try to resume
    this.resumeAttempt = 0;
    this.watchdog = null;
    this.retryTimer = null;
    this.onPageHide = () => this.#post("close", "{}", { keepalive: true }).catch(() => {});
  }

  open() {
    // Only the request that opens the session names the room: a resume names the session.
    this.#connect(`${this.base}/stream${roomQuery(this.room)}`);
  }

  get isOpen() {
    return this.session !== null && !this.ended;
  }

  get closed() {
    return this.ended;
  }

  send(text) {
    if (!this.isOpen) return false;
    this.#enqueue("send", text);
    return true;
  }

  stop(finalText) {
    if (this.ended) return;
    if (this.session) {
      if (finalText) this.#enqueue("send", finalText);
      this.#enqueue("close", "{}");
    }
    this.#end(CLOSE_NORMAL, "", true);
  }

  // -- the stream ------------------------------------------------------------------------

  #connect(url) {
    const source = new this.EventSourceImpl(url);
    this.source = source;
    const mine = (handler) => (event) => source === this.source && !this.ended && handler(event);
    source.addEventListener("session", mine((event) => this.#onSession(event)));
    source.addEventListener("message", mine((event) => this.#onFrame(event)));
    source.addEventListener("ping", mine(() => { this.#alive(); this.#ack(); }));
    source.addEventListener("close", mine((event) => this.#onServerClose(event)));
    source.onerror = mine(() => this.#onError());
  }

  #onSession(event) {
    let info;
    try {
      info = JSON.parse(event.data);
    } catch {
      return this.#end(CLOSE_POLICY, "the server's session event is not JSON");
    }
    if (this.session && info.session !== this.session.session) {
      return this.#end(CLOSE_POLICY, "the server resumed another session");
    }
    const fresh = this.session === null;
    this.session = info;
    this.lostAt = null;
    this.resumeAttempt = 0;
    if (this.interrupted) {
      this.interrupted = false;
      this.onInterrupt?.({ resuming: false });
    }
    this.#alive();
    if (fresh) this.pageEvents?.addEventListener?.("pagehide", this.onPageHide);
    this.#pump(); // POSTs held back while the stream was away
  }

  #onFrame(event) {
    const seq = Number(event.lastEventId);
    if (!Number.isSafeInteger(seq) || seq <= this.last) return; // replays never repeat a frame
    this.last = seq;
    this.unackedBytes += event.data.length;
    this.#alive();
    this.onText?.(event.data);
    if (this.unackedBytes >= (this.session?.ack_bytes ?? Infinity)) this.#ack();
  }

  #onServerClose(event) {
    let info = {};
    try {
      info = JSON.parse(event.data);
    } catch {
      // a close is a close, even with an unreadable reason
    }
    this.#end(Number.isSafeInteger(info.code) ? info.code : CLOSE_ABNORMAL, String(info.reason ?? ""));
  }

  #onError() {
    const source = this.source;
    // CLOSED (2) means the server answered, but not with a stream: the session is gone
    // (unknown after a restart, or refused). CONNECTING (0) is the network: resume.
    const refused = source.readyState === 2;
    source.close(); // we resume ourselves: EventSource's own retry cannot name the session
    if (!this.session) {
      return this.#end(CLOSE_ABNORMAL, "the stream could not be opened");
    }
    if (refused && this.lostAt !== null) {
      return this.#end(CLOSE_ABNORMAL, "the session could not be resumed");
    }
    this.#lost();
  }

  #lost() {
    this.clearTimer(this.watchdog);
    this.source?.close();
    const now = Date.now();
    if (this.lostAt === null) this.lostAt = now;
    // Past the server's liveness window the session is gone anyway: stop trying.
    const window = this.session.ping_ms + this.session.timeout_ms;
    if (now - this.lostAt > window) return this.#end(CLOSE_ABNORMAL, "the connection was lost");
    // The first, quick retry usually just works (a proxy or the server ended the response);
    // only when it did not is the owner told, so a status line does not flicker.
    if (this.resumeAttempt >= 1 && !this.interrupted) {
      this.interrupted = true;
      this.onInterrupt?.({ resuming: true });
    }
    const delay = RETRY_DELAYS_MS[Math.min(this.resumeAttempt++, RETRY_DELAYS_MS.length - 1)];
    this.clearTimer(this.retryTimer);
    this.retryTimer = this.setTimer(() => {
      if (this.ended) return;
      const { session } = this.session;
      this.#connect(`${this.base}/stream?session=${encodeURIComponent(session)}&last=${this.last}`);
    }, delay);
  }

  /** Every event shows the stream lives; one silent past a ping and half a timeout is dead. */
  #alive() {
    this.clearTimer(this.watchdog);
    const { ping_ms: ping, timeout_ms: timeout } = this.session;
    // Half the timeout, not all of it: the server counts the same window from our last
    // request, and the resume must reach it before the session expires.
    this.watchdog = this.setTimer(() => !this.ended && this.#lost(), ping + timeout / 2);
  }

  #end(code, reason, local = false) {
    if (this.ended) return;
    this.ended = true;
    this.stoppedLocally = local;
    this.clearTimer(this.watchdog);
    this.clearTimer(this.retryTimer);
    this.source?.close();
    this.pageEvents?.removeEventListener?.("pagehide", this.onPageHide);
    if (!local) this.queue = []; // the session is gone: nothing more can be delivered in it
    // Asynchronous like a WebSocket's close event, never inside the caller's own call.
    queueMicrotask(() => this.onClose?.({ code, reason }));
  }

  // -- POSTs -----------------------------------------------------------------------------

  #ack() {
    // A POST already waiting will carry the newest acknowledgement when it leaves.
    if (this.queue.some((item) => !item.started)) return;
    this.#enqueue("ack", "{}");
  }

  #enqueue(path, body) {
    this.queue.push({ path, body, started: false });
    this.#pump();
  }

  async #pump() {
    if (this.posting || !this.session) return;
    this.posting = true;
    try {
      while (this.queue.length) {
        const item = this.queue[0];
        item.started = true;
        const seq = item.path === "send" ? this.sent + 1 : null;
        const outcome = await this.#deliver(item, seq);
        if (outcome === "gone") break;
        this.queue.shift();
        if (seq !== null) this.sent = seq;
      }
    } finally {
      this.posting = false;
    }
  }

  /** One POST until it lands; "ok", or "gone" when the session has ended. */
  async #deliver(item, seq) {
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await this.#post(item.path, item.body, { seq, keepalive: item.path === "close" });
      } catch {
        // The network, not the server: the same numbered POST again (never handled twice),
        // for as long as the session may live; the stream's side decides when it is dead.
        // After our own stop() the final POSTs get one more try each, then we let go.
        if (this.ended && (!this.stoppedLocally || attempt > 0)) return "gone";
        const delay = RETRY_DELAYS_MS[Math.min(attempt, RETRY_DELAYS_MS.length - 1)];
        await new Promise((resolve) => this.setTimer(resolve, delay));
        continue;
      }
      if (response.ok) return "ok";
      const body = await response.json().catch(() => ({}));
      if (item.path === "close") return "ok"; // ending an ended session: nothing to do
      if (response.status === 410) this.#end(Number.isSafeInteger(body.code) ? body.code : CLOSE_ABNORMAL, String(body.reason ?? ""));
      else if (response.status === 404) this.#end(CLOSE_ABNORMAL, "the server no longer knows this session");
      else this.#end(CLOSE_POLICY, String(body.message ?? `HTTP ${response.status}`));
      return "gone";
    }
  }

  #post(path, body, { seq = null, keepalive = false } = {}) {
    const headers = { "Content-Type": "application/json", "Securechat-Token": this.session.token,
      "Securechat-Ack": String(this.last) };
    if (seq !== null) headers["Securechat-Seq"] = String(seq);
    this.unackedBytes = 0;
    return this.fetchImpl(`${this.base}/stream/${path}`, { method: "POST", headers, body,
      cache: "no-store", credentials: "same-origin", keepalive });
  }
}

/**
 * One logical connection that survives drops. Each (re)connection tries the WebSocket first;
 * when it cannot open, or closes before the server's first frame, the HTTP transport takes
 * over at once — and the next reconnection tries the WebSocket again. Callbacks:
 *   onOpen()            the server spoke (its hello went to onFrame first): send the join
 *   onFrame(frame)      a parsed server frame
 *   onDrop({code, reason, willRetry, delay})  the connection ended
 *   onInterrupt({resuming})  HTTP only: the stream broke and is being resumed (true), or is back
 * `transport` says which one carries it now: "websocket" or "http". `room` names the room the
 * connection belongs to (the server's hello confirms it); null: the server's default room.
 * The owner calls stop() to end it (leave, replaced, fatal join error).
 */
export class Connection {
  constructor({ url, room = null, onOpen, onFrame, onDrop, onInterrupt, WebSocketImpl = globalThis.WebSocket,
    EventSourceImpl = globalThis.EventSource,
    fetchImpl = globalThis.fetch ? (...args) => globalThis.fetch(...args) : undefined,
    // Wrapped: the browser's timer functions throw "Illegal invocation" as methods of another object.
    setTimer = (fn, ms) => setTimeout(fn, ms), clearTimer = (id) => clearTimeout(id),
    random = Math.random, pageEvents = globalThis, firstFrameTimeoutMs = FIRST_FRAME_TIMEOUT_MS }) {
    Object.assign(this, { url, room, onOpen, onFrame, onDrop, onInterrupt, WebSocketImpl, EventSourceImpl, fetchImpl,
      setTimer, clearTimer, random, pageEvents, firstFrameTimeoutMs });
    this.carrier = null;
    this.transport = null;
    this.spoke = false; // the current carrier delivered the server's first frame
    this.attempt = 0;
    this.timer = null;
    this.firstFrameTimer = null;
    this.stopped = false;
    this.webSocketWorked = false; // a WebSocket reached the server's first frame on this page
    this.recheckWebSocket = false; // the HTTP stream now open is a check that the server is up
    this.fallbackNext = false; // the WebSocket now opening is that second try: HTTP if it fails
  }

  start() {
    this.stopped = false;
    this.clearTimer(this.timer);
    this.timer = null;
    this.#open(this.WebSocketImpl ? "websocket" : "http");
  }

  #open(kind) {
    const carrier = kind === "websocket"
      ? new WebSocketCarrier(this.url + roomQuery(this.room), this.WebSocketImpl)
      : new HttpCarrier({ base: httpBase(this.url), room: this.room, EventSourceImpl: this.EventSourceImpl,
        fetchImpl: this.fetchImpl, setTimer: this.setTimer, clearTimer: this.clearTimer,
        pageEvents: this.pageEvents });
    this.carrier = carrier;
    this.transport = kind;
    this.spoke = false;
    carrier.onText = (text) => this.#text(carrier, text);
    carrier.onClose = (info) => this.#closed(carrier, info);
    carrier.onInterrupt = (info) => carrier === this.carrier && this.onInterrupt?.(info);
    if (kind === "websocket" && this.firstFrameTimeoutMs > 0) {
      this.firstFrameTimer = this.setTimer(() => {
        if (carrier === this.carrier && !this.spoke) this.#closed(carrier, { code: CLOSE_ABNORMAL, reason: "no answer" });
      }, this.firstFrameTimeoutMs);
    }
    try {
      carrier.open();
    } catch {
      // A constructor that throws (no WebSocket here, or a policy refusing it) is a failed open.
      queueMicrotask(() => this.#closed(carrier, { code: CLOSE_ABNORMAL, reason: "could not open" }));
    }
  }

  #text(carrier, text) {
    if (carrier !== this.carrier) return;
    const frame = parseFrame(text);
    if (!frame) return;
    if (this.spoke) {
      this.onFrame?.(frame);
      return;
    }
    this.spoke = true;
    this.clearTimer(this.firstFrameTimer);
    if (carrier.kind === "websocket") {
      this.webSocketWorked = true;
      this.fallbackNext = false;
    }
    if (carrier.kind === "http" && this.recheckWebSocket) {
      // The WebSocket worked on this page before and failed only while the server was away:
      // the server answers again, so the WebSocket gets one more try before anything is joined
      // over HTTP (nothing was sent on this stream yet; closing it loses nothing).
      this.recheckWebSocket = false;
      carrier.onText = carrier.onClose = carrier.onInterrupt = null;
      carrier.stop(null, CLOSE_NORMAL);
      this.#open("websocket");
      this.fallbackNext = true;
      return;
    }
    this.onFrame?.(frame);
    this.onOpen?.();
  }

  /** The session works again (welcome received): later drops start from the short delay. */
  resetBackoff() {
    this.attempt = 0;
  }

  get isOpen() {
    return this.carrier?.isOpen ?? false;
  }

  /** The WebSocket, while one carries the connection (node tests inject faults through it). */
  get socket() {
    return this.carrier?.kind === "websocket" ? this.carrier.socket : null;
  }

  /** Nothing is open or opening (so no onDrop will come). */
  get closed() {
    return !this.carrier || this.carrier.closed;
  }

  send(frame) {
    return this.carrier?.send(JSON.stringify(frame)) ?? false;
  }

  /** Reconnect now instead of waiting out the timer (e.g. the browser came back online). */
  retryNow() {
    if (this.stopped || this.timer === null) return;
    this.start();
  }

  /** Stop for good: no reconnect. Sends `finalFrame` first when given (e.g. leave). */
  stop(finalFrame = null, code = CLOSE_NORMAL) {
    this.stopped = true;
    this.clearTimer(this.timer);
    this.timer = null;
    this.clearTimer(this.firstFrameTimer);
    this.carrier?.stop(finalFrame ? JSON.stringify(finalFrame) : null, code);
  }

  #closed(carrier, { code, reason }) {
    if (carrier !== this.carrier || carrier.reported) return;
    carrier.reported = true;
    this.clearTimer(this.firstFrameTimer);
    if (carrier.kind === "websocket" && !this.spoke && !this.stopped) {
      // The WebSocket never got as far as the server's first frame (WebKit refusing wss to
      // a certificate accepted by exception, a proxy without WebSocket support): the HTTP
      // transport now, without a backoff wait; the next reconnection tries the WebSocket again.
      carrier.onText = carrier.onClose = null;
      if (!carrier.closed) carrier.stop(null, CLOSE_NORMAL);
      if (this.EventSourceImpl && this.fetchImpl) {
        // A page whose WebSocket worked before most likely met a server that is down or
        // restarting: its HTTP stream first checks that the server is back (see #text).
        this.recheckWebSocket = this.webSocketWorked && !this.fallbackNext;
        this.fallbackNext = false;
        this.#open("http");
        return;
      }
    }
    const willRetry = !this.stopped && code !== CLOSE_REPLACED;
    let delay = null;
    if (willRetry) {
      delay = backoffDelay(this.attempt++, this.random);
      this.timer = this.setTimer(() => {
        this.timer = null;
        this.start();
      }, delay);
    } else {
      this.stopped = true;
    }
    this.onDrop?.({ code, reason, willRetry, delay });
  }
}
