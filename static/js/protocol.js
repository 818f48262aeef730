// Frames (docs/PROTOCOL.md §6): what the client sends, and reading what the server sends.
// The connection that carries them, WebSocket or HTTP, is transport.js.

export const PROTOCOL_VERSION = 2;

export function joinFrame({ username, identityKey, sessionKey, issued, challenge, stream, sessionSig }) {
  return { v: PROTOCOL_VERSION, type: "join", username, identity_key: identityKey,
    session_key: sessionKey, issued, challenge, stream, session_sig: sessionSig };
}

export function rekeyFrame({ sessionKey, issued, challenge, sessionSig }) {
  return { v: PROTOCOL_VERSION, type: "rekey", session_key: sessionKey, issued, challenge, session_sig: sessionSig };
}

export function recipientsFrame(id) {
  return { v: PROTOCOL_VERSION, type: "recipients", id };
}

export function rosterFrame() {
  return { v: PROTOCOL_VERSION, type: "roster" };
}

export function leaveFrame() {
  return { v: PROTOCOL_VERSION, type: "leave" };
}

/** A server frame as an object, or null when it is not a v2 frame we can read. */
export function parseFrame(text) {
  if (typeof text !== "string") return null;
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return null;
  }
  if (!frame || typeof frame !== "object" || Array.isArray(frame)) return null;
  if (frame.v !== PROTOCOL_VERSION || typeof frame.type !== "string") return null;
  return frame;
}
