// The WebSocket connection with reconnect/backoff (docs/PROTOCOL.md §1).
// No DOM: the WebSocket constructor and timers are injectable so node tests can drive it.

import { parseFrame } from "./protocol.js";

export const CLOSE_REPLACED = 4001; // §5: a newer session took over; never reconnect
export const CLOSE_NORMAL = 1000;
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30000;

/** ws: on http pages, wss: on https pages, same host and port as the page (§1). */
export function wsUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
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

/**
 * One logical connection that survives drops. Callbacks:
 *   onOpen()            socket open: the owner sends its join
 *   onFrame(frame)      a parsed server frame
 *   onDrop({code, reason, willRetry, delay})  the socket closed
 * The owner calls stop() to end it (leave, replaced, fatal join error).
 */
export class Connection {
  constructor({ url, onOpen, onFrame, onDrop, WebSocketImpl = globalThis.WebSocket,
    // Wrapped: the browser's timer functions throw "Illegal invocation" as methods of another object.
    setTimer = (fn, ms) => setTimeout(fn, ms), clearTimer = (id) => clearTimeout(id),
    random = Math.random }) {
    Object.assign(this, { url, onOpen, onFrame, onDrop, WebSocketImpl, setTimer, clearTimer, random });
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.clearTimer(this.timer);
    this.timer = null;
    const socket = new this.WebSocketImpl(this.url);
    this.socket = socket;
    socket.onopen = () => socket === this.socket && this.onOpen?.();
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      const frame = parseFrame(event.data);
      if (frame) this.onFrame?.(frame);
    };
    socket.onclose = (event) => this.#closed(socket, event);
    // onerror is always followed by onclose, which does the work.
  }

  /** The session works again (welcome received): later drops start from the short delay. */
  resetBackoff() {
    this.attempt = 0;
  }

  get isOpen() {
    return this.socket?.readyState === 1;
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** Reconnect now instead of waiting out the timer (e.g. the browser came back online). */
  retryNow() {
    if (this.stopped || this.isOpen || this.socket?.readyState === 0) return;
    this.start();
  }

  /** Stop for good: no reconnect. Sends `finalFrame` first when given (e.g. leave). */
  stop(finalFrame = null, code = CLOSE_NORMAL) {
    this.stopped = true;
    this.clearTimer(this.timer);
    this.timer = null;
    const socket = this.socket;
    if (!socket) return;
    if (finalFrame && socket.readyState === 1) socket.send(JSON.stringify(finalFrame));
    // After a leave the server closes; closing ourselves too is harmless and covers no answer.
    if (socket.readyState <= 1) socket.close(code);
  }

  #closed(socket, event) {
    if (socket !== this.socket) return;
    const code = event?.code ?? 1006;
    const reason = event?.reason ?? "";
    const willRetry = !this.stopped && code !== CLOSE_REPLACED;
    let delay = null;
    if (willRetry) {
      delay = backoffDelay(this.attempt++, this.random);
      this.timer = this.setTimer(() => this.start(), delay);
    } else {
      this.stopped = true;
    }
    this.onDrop?.({ code, reason, willRetry, delay });
  }
}
