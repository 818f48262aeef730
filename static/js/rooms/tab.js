// The rooms this tab is in, without the DOM: which one is on screen, joining several without
// tripping the server's per-address limits, leaving one and staying in the rest, and what
// the browser remembers across reloads.
//
// One connection (one ChatClient, one session key) per room. The server then routes by
// connection alone: a socket belongs to exactly one room, no frame names another, and two
// rooms can never see each other's frames or rosters, whatever a client sends. Leaving a room
// is closing its connection. The cost is one socket and one RSA session key per room; joins
// are staggered (JOIN_SLOTS at a time) so a reload that re-joins many rooms stays under the
// server's pre-join limit per address (limits.max_unjoined_per_address, 4).
//
// Remembered:
//   store setting "rooms"                   the rooms this browser is in, in the order joined
//                                           (IndexedDB: survives closing the browser); joining
//                                           in a new tab (or the next day) joins them all
//   sessionStorage "securechat.rejoin:<room>"  this tab is in <room>: a reload re-joins it at
//                                           once. A new tab shows the join form first, so it
//                                           never silently takes over another tab's sessions.

import { isRoomName } from "./names.js";

export const REJOIN_PREFIX = "securechat.rejoin:";
export const ROOMS_SETTING = "rooms";
export const JOIN_SLOTS = 2;
// A join that has not been answered by then frees its slot for the next room anyway.
export const JOIN_SLOT_MS = 4000;

function unique(names) {
  return [...new Set(names.filter(isRoomName))];
}

/**
 * `create(name)` makes a room: an object with a `client` (chat.js ChatClient for that room) the
 * tab drives; everything else on it is the page's. `onChange()` runs after any change to the
 * list, the active room or a room's state. Rooms are {name, client, state}, state one of
 * "waiting" (queued to join), "joining", "joined", "failed", "ended".
 */
export class RoomsTab {
  constructor({ store, session = globalThis.sessionStorage, create, onChange = () => {},
    setTimer = (fn, ms) => setTimeout(fn, ms), clearTimer = (id) => clearTimeout(id) }) {
    Object.assign(this, { store, session, create, onChange, setTimer, clearTimer });
    this.rooms = new Map(); // name -> room, in the order joined
    this.active = null;
    this.username = null;
    this.queue = []; // names waiting for a join slot
    this.joining = new Map(); // name -> slot timer
  }

  /** The rooms the browser remembers, and those this tab was in before a reload (`rejoin`). */
  async remembered(pageRoom = null) {
    const saved = await this.store.getSetting(ROOMS_SETTING);
    const rooms = unique(Array.isArray(saved) ? saved : []);
    const candidates = unique([...rooms, ...(pageRoom ? [pageRoom] : [])]);
    return { rooms, rejoin: candidates.filter((name) => this.flag(name)) };
  }

  flag(name, on = undefined) {
    try {
      if (on === undefined) return this.session?.getItem(REJOIN_PREFIX + name) === "1";
      if (on) this.session?.setItem(REJOIN_PREFIX + name, "1");
      else this.session?.removeItem(REJOIN_PREFIX + name);
    } catch {
      // storage refused or full: a reload shows the join form, nothing worse
    }
    return false;
  }

  names() {
    return [...this.rooms.keys()];
  }

  get(name) {
    return this.rooms.get(name) ?? null;
  }

  has(name) {
    return this.rooms.has(name);
  }

  /** Join every room in `names` as `username`; `active` is the one to show. */
  enter(username, names, active) {
    this.username = username;
    for (const name of unique(names)) this.add(name);
    if (active && this.rooms.has(active)) this.select(active);
    this.onChange();
  }

  /** One more room (joined in its turn); it does not become the active room by itself. */
  add(name) {
    if (!isRoomName(name)) throw new Error(`not a room name: ${name}`);
    let room = this.rooms.get(name);
    if (room && room.state !== "failed" && room.state !== "ended") return room;
    if (!room) {
      room = this.create(name);
      room.name = name;
      this.rooms.set(name, room);
    }
    room.state = "waiting";
    if (this.active === null) this.active = name;
    this.queue.push(name);
    this.pump();
    return room;
  }

  select(name) {
    if (!this.rooms.has(name) || this.active === name) return false;
    this.active = name;
    this.onChange();
    return true;
  }

  pump() {
    while (this.joining.size < JOIN_SLOTS && this.queue.length) {
      const name = this.queue.shift();
      const room = this.rooms.get(name);
      if (!room || room.state !== "waiting") continue;
      room.state = "joining";
      this.joining.set(name, this.setTimer(() => this.release(name), JOIN_SLOT_MS));
      room.client.join(this.username).then((problem) => {
        if (problem) this.failed(name, problem);
      });
    }
  }

  release(name) {
    if (!this.joining.has(name)) return;
    this.clearTimer(this.joining.get(name));
    this.joining.delete(name);
    this.pump();
  }

  /** The room's welcome arrived: remember it, and that this tab is in the chat. */
  async joined(name) {
    const room = this.rooms.get(name);
    if (!room) return;
    room.state = "joined";
    this.release(name);
    this.flag(name, true);
    await this.remember((names) => (names.includes(name) ? names : [...names, name]));
    this.onChange();
  }

  /** A join that cannot succeed (taken name, a room cap, ...): the room leaves this tab. */
  failed(name, message) {
    const room = this.rooms.get(name);
    if (!room) return;
    room.state = "failed";
    room.problem = message;
    this.release(name);
    this.flag(name, false);
    this.drop(name);
  }

  /** The room's session ended from outside (replaced by another tab): it leaves this tab. */
  ended(name) {
    const room = this.rooms.get(name);
    if (!room || room.state === "ended") return;
    room.state = "ended";
    this.release(name);
    this.flag(name, false);
    this.drop(name);
  }

  /** The person leaves `name` and stays in the others; the browser forgets it. */
  async leave(name) {
    const room = this.rooms.get(name);
    if (!room) return;
    room.state = "ended";
    this.release(name);
    this.flag(name, false);
    this.drop(name);
    await this.remember((names) => names.filter((n) => n !== name));
    await room.client.leave();
  }

  drop(name) {
    this.rooms.delete(name);
    this.queue = this.queue.filter((n) => n !== name);
    if (this.active === name) {
      const left = this.names();
      this.active = left.length ? left[left.length - 1] : null;
    }
    this.onChange();
  }

  async remember(change) {
    const saved = await this.store.getSetting(ROOMS_SETTING);
    await this.store.setSetting(ROOMS_SETTING, unique(change(unique(Array.isArray(saved) ? saved : []))));
  }
}
