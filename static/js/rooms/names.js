// Room names and room addresses, pure: the rule (docs/PROTOCOL.md §1, the same as the server's
// securechat/relay/roomname.py), the page path of a room, its invite link, and new
// unguessable names for New room.

import { WORDS } from "./words.js";

export const ROOM_NAME = /^[a-z0-9-]{1,32}$/;
export const NEW_ROOM_WORDS = 4;

export function isRoomName(name) {
  return typeof name === "string" && ROOM_NAME.test(name);
}

/** "/" for the default room, "/r/<name>" for any other (what the server serves). */
export function roomPath(name, defaultRoom) {
  return name === defaultRoom ? "/" : `/r/${name}`;
}

/** The room a page path names: "/" the default room, "/r/<name>" that room; else null. */
export function roomFromPath(pathname, defaultRoom) {
  if (pathname === "/" || pathname === "") return defaultRoom;
  const match = /^\/r\/([^/]*)$/.exec(pathname);
  return match && isRoomName(match[1]) ? match[1] : null;
}

/** The full URL people open to join `name`: origin (scheme://host[:port]) + its path. */
export function inviteUrl(origin, name, defaultRoom) {
  return `${origin.replace(/\/+$/, "")}${roomPath(name, defaultRoom)}`;
}

/** A uniform integer in [0, n) from a CSPRNG (rejection sampling: no modulo bias). */
export function randomBelow(n, getRandomValues = (a) => globalThis.crypto.getRandomValues(a)) {
  const limit = Math.floor(0x100000000 / n) * n;
  const buffer = new Uint32Array(1);
  for (;;) {
    getRandomValues(buffer);
    if (buffer[0] < limit) return buffer[0] % n;
  }
}

/**
 * A name for a new room that only people with its link can find: four words drawn uniformly
 * from WORDS (1295 words: log2(1295^4) ≈ 41 bits), e.g. "amber-otter-lamp-river". The server
 * lists rooms to no one but its admin and answers a page for any name alike, so the name is
 * the only secret; guessing one means joining rooms at joins_per_minute per address.
 */
export function newRoomName({ words = NEW_ROOM_WORDS, getRandomValues } = {}) {
  const picked = [];
  for (let i = 0; i < words; i += 1) picked.push(WORDS[randomBelow(WORDS.length, getRandomValues)]);
  return picked.join("-");
}
